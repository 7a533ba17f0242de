package backup

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// SnapshotInfo is one snapshot as list and info show it.
type SnapshotInfo struct {
	ID             string    `json:"id"`
	Cluster        uint64    `json:"cluster,string"`
	PGVersion      int       `json:"pg_version"`
	Type           string    `json:"type"`
	Parent         string    `json:"parent,omitempty"`
	StartTime      time.Time `json:"start_time"`
	StopTime       time.Time `json:"stop_time"`
	Seconds        float64   `json:"duration_seconds"`
	StartLSN       pg.LSN    `json:"start_lsn"`
	StopLSN        pg.LSN    `json:"stop_lsn"`
	Timeline       uint32    `json:"timeline"`
	LogicalBytes   int64     `json:"logical_bytes"`
	NewBytes       int64     `json:"new_bytes"`
	Files          int64     `json:"files"`
	ChecksumErrors int       `json:"checksum_errors"`
	Host           string    `json:"host"`
	ToolVersion    string    `json:"tool_version"`
}

// Describe summarises a snapshot.
func Describe(s *repo.Snapshot) SnapshotInfo {
	return SnapshotInfo{
		ID: s.ID, Cluster: s.Cluster, PGVersion: s.PGVersion, Type: s.Type, Parent: s.Parent,
		StartTime: s.StartTime, StopTime: s.StopTime, Seconds: s.Stats.Seconds,
		StartLSN: pg.LSN(s.StartLSN), StopLSN: pg.LSN(s.StopLSN), Timeline: s.StopTimeline,
		LogicalBytes: s.Stats.LogicalBytes, NewBytes: s.Stats.NewBytes, Files: s.Stats.Files,
		ChecksumErrors: len(s.ChecksumErrors), Host: s.Host, ToolVersion: s.ToolVersion,
	}
}

// List returns the snapshots of a cluster (0: of every cluster), oldest
// first by stop time and LSN.
func List(ctx context.Context, r *repo.Repo, cluster uint64) ([]SnapshotInfo, error) {
	snaps, err := r.Snapshots(ctx, cluster)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(snaps))
	for _, s := range snaps {
		out = append(out, Describe(s))
	}
	return out, nil
}

// SnapshotDetail is one snapshot with everything info shows about it.
type SnapshotDetail struct {
	SnapshotInfo
	Tablespaces    []repo.Tablespace    `json:"tablespaces,omitempty"`
	ChecksumErrors []repo.ChecksumError `json:"checksum_error_list,omitempty"`
	BackupLabel    string               `json:"backup_label"`
	TablespaceMap  string               `json:"tablespace_map,omitempty"`
	Roots          []blob.ID            `json:"roots"`
}

// Inspect returns one snapshot. cluster may be 0 when the id is unique.
func Inspect(ctx context.Context, r *repo.Repo, cluster uint64, id string) (*SnapshotDetail, error) {
	var s *repo.Snapshot
	if cluster != 0 {
		var err error
		if s, err = r.LoadSnapshot(ctx, cluster, id); err != nil {
			return nil, err
		}
	} else {
		snaps, err := r.Snapshots(ctx, 0)
		if err != nil {
			return nil, err
		}
		for _, x := range snaps {
			if x.ID == id {
				if s != nil {
					return nil, fmt.Errorf("snapshot %s exists for clusters %d and %d: pass --cluster", id, s.Cluster, x.Cluster)
				}
				s = x
			}
		}
		if s == nil {
			return nil, fmt.Errorf("no snapshot %s in the repository: tidemark list shows them", id)
		}
	}
	return &SnapshotDetail{SnapshotInfo: Describe(s), Tablespaces: s.Tablespaces, ChecksumErrors: s.ChecksumErrors,
		BackupLabel: string(s.BackupLabel), TablespaceMap: string(s.TablespaceMap), Roots: s.Roots}, nil
}

// ClusterInfo summarises one cluster's snapshots.
type ClusterInfo struct {
	Cluster   uint64    `json:"cluster,string"`
	Snapshots int       `json:"snapshots"`
	Oldest    time.Time `json:"oldest"`
	Newest    time.Time `json:"newest"`
	Latest    string    `json:"latest"`
}

// RepositoryInfo describes a repository: its settings, what it holds, and
// how much deduplication and incrementals save.
type RepositoryInfo struct {
	URL              string        `json:"url"`
	ID               string        `json:"id"`
	Format           int           `json:"format"`
	Created          time.Time     `json:"created"`
	Compression      string        `json:"compression"`
	CompressionLevel int           `json:"compression_level"`
	PackSize         int64         `json:"pack_size"`
	Snapshots        int           `json:"snapshots"`
	Clusters         []ClusterInfo `json:"clusters"`
	// StoredBytes is the size of all data and metadata packs (DataBytes +
	// MetaBytes), including packs of interrupted backups that garbage
	// collection has not removed yet; WALBytes that of the WAL archive.
	StoredBytes int64 `json:"stored_bytes"`
	DataBytes   int64 `json:"data_bytes"`
	MetaBytes   int64 `json:"meta_bytes"`
	Packs       int   `json:"packs"`
	WALBytes    int64 `json:"wal_bytes"`
	WALObjects  int   `json:"wal_objects"`
	// LogicalBytes adds up the size of every snapshot's files; DedupRatio is
	// LogicalBytes / StoredBytes.
	LogicalBytes int64   `json:"logical_bytes"`
	DedupRatio   float64 `json:"dedup_ratio"`
}

// Info describes the repository.
func Info(ctx context.Context, r *repo.Repo) (*RepositoryInfo, error) {
	cfg := r.Config()
	in := &RepositoryInfo{URL: r.Store().String(), ID: cfg.ID, Format: cfg.Format, Created: cfg.Created,
		Compression: cfg.Compression, CompressionLevel: cfg.CompressionLevel, PackSize: cfg.PackSize}
	snaps, err := r.Snapshots(ctx, 0)
	if err != nil {
		return nil, err
	}
	in.Snapshots = len(snaps)
	byCluster := map[uint64]*ClusterInfo{}
	for _, s := range snaps {
		in.LogicalBytes += s.Stats.LogicalBytes
		ci := byCluster[s.Cluster]
		if ci == nil {
			ci = &ClusterInfo{Cluster: s.Cluster, Oldest: s.StopTime}
			byCluster[s.Cluster] = ci
		}
		ci.Snapshots++
		if !s.StopTime.Before(ci.Newest) {
			ci.Newest, ci.Latest = s.StopTime, s.ID
		}
	}
	for _, ci := range byCluster {
		in.Clusters = append(in.Clusters, *ci)
	}
	slices.SortFunc(in.Clusters, func(a, b ClusterInfo) int { return cmp.Compare(a.Cluster, b.Cluster) })
	usage, err := repo.Usage(ctx, r.Store(), nil)
	if err != nil {
		return nil, err
	}
	data, meta, wal := usage[blob.ClassData.Prefix()], usage[blob.ClassMeta.Prefix()], usage[strings.TrimSuffix(walarchive.Prefix, "/")]
	in.DataBytes, in.MetaBytes, in.Packs = data.Bytes, meta.Bytes, int(data.Objects+meta.Objects)
	in.WALBytes, in.WALObjects = wal.Bytes, int(wal.Objects)
	in.StoredBytes = in.DataBytes + in.MetaBytes
	if in.StoredBytes > 0 {
		in.DedupRatio = float64(in.LogicalBytes) / float64(in.StoredBytes)
	}
	return in, nil
}
