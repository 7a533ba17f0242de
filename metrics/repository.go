package metrics

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

// AddRepository lists the whole repository once (one LIST per 1000
// objects): its size by kind of object, each cluster's last backup, last
// drill, and newest archived WAL object. It is tidemark metrics.
func (s *Set) AddRepository(ctx context.Context, r *repo.Repo) error {
	walNewest := map[uint64]time.Time{}
	usage, err := repo.Usage(ctx, r.Store(), func(oi storage.ObjectInfo) {
		if c, ok := walarchive.ParseCluster(oi.Key); ok && oi.ModTime.After(walNewest[c]) && !strings.HasSuffix(oi.Key, "/"+walarchive.MarkerName) {
			walNewest[c] = oi.ModTime
		}
	})
	if err != nil {
		return err
	}
	var total float64
	kinds := make([]string, 0, len(usage))
	for k := range usage {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		total += float64(usage[k].Bytes)
		s.gauge("tidemark_repository_bytes", "Bytes stored in the repository, by kind of object.", float64(usage[k].Bytes), "kind", k)
		s.gauge("tidemark_repository_objects", "Objects in the repository, by kind.", float64(usage[k].Objects), "kind", k)
	}
	s.gauge("tidemark_repository_total_bytes", "Bytes stored in the repository.", total)
	snaps, err := r.Snapshots(ctx, 0)
	if err != nil {
		return err
	}
	s.addSnapshots(snaps)
	for c, t := range walNewest {
		s.gauge("tidemark_wal_last_archived_timestamp_seconds", "When the newest WAL object of the cluster was stored (Unix time).", UnixSeconds(t), clusterLabel(c)...)
	}
	seen := map[uint64]bool{}
	for _, sn := range snaps {
		if seen[sn.Cluster] {
			continue
		}
		seen[sn.Cluster] = true
		rep, err := drill.Latest(ctx, r, sn.Cluster)
		if err != nil {
			return err
		}
		if rep != nil {
			s.AddDrill(rep)
		}
	}
	s.gauge("tidemark_metrics_last_run_timestamp_seconds", "When tidemark metrics last ran (Unix time).", UnixSeconds(time.Now()))
	return nil
}

// addSnapshots adds, per cluster, the newest snapshot and the number of
// snapshots.
func (s *Set) addSnapshots(snaps []*repo.Snapshot) {
	last := map[uint64]*repo.Snapshot{}
	count := map[uint64]int{}
	for _, sn := range snaps {
		count[sn.Cluster]++
		if l := last[sn.Cluster]; l == nil || sn.StopTime.After(l.StopTime) {
			last[sn.Cluster] = sn
		}
	}
	for c, sn := range last {
		s.addLastBackup(sn)
		s.gauge("tidemark_snapshots", "Snapshots in the repository.", float64(count[c]), clusterLabel(c)...)
	}
}
