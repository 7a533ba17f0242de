package retention

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// Repository is what expire uses of the repository. *repo.Repo has it.
type Repository interface {
	Store() storage.Store
	Snapshots(ctx context.Context, cluster uint64) ([]*repo.Snapshot, error)
	AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error)
	Leases(ctx context.Context, scope string) ([]lease.Info, error)
	Encrypt(dst io.Writer) (io.WriteCloser, error)
	Decrypt(src io.Reader) (io.Reader, error)
	// LockedUntil is when the repository's object lock surely no longer
	// holds an object written at mod (zero: not locked).
	LockedUntil(key string, mod time.Time) time.Time
}

// Archive is what expire reads of the WAL archive. *walarchive.Archive has
// it.
type Archive interface {
	Clusters(ctx context.Context) ([]uint64, error)
	History(ctx context.Context, cluster uint64, tli pg.TimelineID) (pg.History, error)
	RecordExpired(ctx context.Context, cluster uint64, add walarchive.Ranges, now time.Time) error
}

// Options configure an expire run.
type Options struct {
	Policy Policy
	// Cluster limits the run to one cluster (0: every cluster).
	Cluster uint64
	// DryRun decides and reports, and changes nothing.
	DryRun bool
	Logger *slog.Logger
	Now    func() time.Time
}

// ClusterResult is what expire decided and did for one cluster.
type ClusterResult struct {
	Cluster   uint64
	Decisions []Decision
	// WAL are the WAL files removed (or, in a dry run, that would be), and
	// WALRanges the same as runs per timeline.
	WAL       []WALFile
	WALBytes  int64
	WALRanges walarchive.Ranges
	// UnknownTimelines have WAL but no history file: all their WAL is
	// kept, since what leads there cannot be told.
	UnknownTimelines []pg.TimelineID
	// Skipped says why nothing of the cluster was removed (a restore is
	// reading it, or a backup holds its lease).
	Skipped string
	// Removed counts the snapshots removed.
	Removed int
	// LockedWAL are WAL files the policy no longer needs that the
	// repository's object lock still holds: a later run removes them.
	LockedWAL      int
	LockedWALBytes int64
	// LockedSnapshots are snapshots the policy would remove that the lock
	// still holds; they are kept, with their WAL, until a later run.
	LockedSnapshots int
}

// Result is what an expire run did.
type Result struct {
	Clusters []*ClusterResult
}

// SkippedError says that some clusters were left alone because of a lease.
type SkippedError struct{ Clusters []*ClusterResult }

func (e *SkippedError) Error() string {
	var parts []string
	for _, c := range e.Clusters {
		parts = append(parts, fmt.Sprintf("cluster %d: %s", c.Cluster, c.Skipped))
	}
	return "expire left clusters alone, run it again later: " + strings.Join(parts, "; ")
}

// Run applies the policy to every cluster (or opts.Cluster).
func Run(ctx context.Context, r Repository, a Archive, opts Options) (*Result, error) {
	if opts.Policy.Empty() {
		return nil, errors.New("no retention policy: give --keep-within, --keep-last, --keep-daily, --keep-weekly or --keep-monthly (or set them in the [expire] section of the config file)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	snaps, err := r.Snapshots(ctx, opts.Cluster)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	byCluster := map[uint64][]*repo.Snapshot{}
	var clusters []uint64
	for _, s := range snaps {
		if byCluster[s.Cluster] == nil {
			clusters = append(clusters, s.Cluster)
		}
		byCluster[s.Cluster] = append(byCluster[s.Cluster], s)
	}
	slices.Sort(clusters)
	res := &Result{}
	var skipped []*ClusterResult
	for _, c := range clusters {
		cr, err := expireCluster(ctx, r, a, opts, c, byCluster[c])
		if cr != nil {
			res.Clusters = append(res.Clusters, cr)
			if cr.Skipped != "" {
				skipped = append(skipped, cr)
			}
		}
		if err != nil {
			return res, fmt.Errorf("expire cluster %d: %w", c, err)
		}
	}
	if len(skipped) > 0 {
		return res, &SkippedError{Clusters: skipped}
	}
	return res, nil
}

func expireCluster(ctx context.Context, r Repository, a Archive, opts Options, cluster uint64, snaps []*repo.Snapshot) (*ClusterResult, error) {
	log := opts.Logger.With("cluster", cluster)
	cr := &ClusterResult{Cluster: cluster}
	if !opts.DryRun {
		// The backup scope, exclusively: no backup of the cluster runs
		// while snapshots and WAL are removed (it could reuse a removed
		// parent's files). A live restore or drill (the restore scope)
		// makes expire leave the cluster alone (Barman #200).
		l, err := r.AcquireLease(ctx, lease.BackupScope(cluster), lease.Options{Exclusive: true, Command: "expire", Logger: log})
		var le *lease.LockedError
		if errors.As(err, &le) {
			cr.Skipped = "held by " + le.Holder.String()
			return cr, nil
		}
		if err != nil {
			return cr, err
		}
		defer l.Release(context.WithoutCancel(ctx))
		// Listed again under the lease: a backup may have committed since.
		if snaps, err = r.Snapshots(ctx, cluster); err != nil {
			return cr, err
		}
	}
	ls, err := r.Leases(ctx, lease.RestoreScope(cluster))
	if err != nil {
		return cr, err
	}
	now := opts.Now()
	for _, l := range ls {
		if !l.Expired(now) {
			cr.Skipped = "being read by " + l.String()
			return cr, nil
		}
	}
	segSize := uint32(snaps[len(snaps)-1].WALSegmentSize)
	if err := pg.ValidateWALSegSize(uint64(segSize)); err != nil {
		return cr, fmt.Errorf("snapshot %s: %w", snaps[len(snaps)-1].ID, err)
	}
	files, lin, err := listWAL(ctx, r.Store(), a, cluster, segSize, now.Add(-opts.Policy.Within))
	if err != nil {
		return cr, err
	}
	if opts.Policy.Within <= 0 {
		lin.Active = nil
	}
	cr.UnknownTimelines = lin.Unknown
	cr.Decisions = Plan(snaps, opts.Policy, lin, now)
	if err := keepLocked(ctx, r, cluster, cr, now); err != nil {
		return cr, err
	}
	cr.WAL = PlanWAL(cr.Decisions, lin, files, segSize)
	// WAL the lock still holds stays for a later run; older WAL was
	// written first and is released first, so what goes is a prefix.
	var locked []WALFile
	cr.WAL, locked = splitLocked(cr.WAL, func(f WALFile) bool {
		u := r.LockedUntil(f.Key, f.Mod)
		return !u.IsZero() && now.Before(u)
	})
	for _, f := range locked {
		cr.LockedWAL++
		cr.LockedWALBytes += f.Size
	}
	if cr.LockedWAL > 0 {
		log.Info("expire: WAL no longer needed is still under the object lock; a later run removes it", "files", cr.LockedWAL, "bytes", cr.LockedWALBytes)
	}
	cr.WALRanges = walarchive.Ranges{}
	for _, f := range cr.WAL {
		cr.WALBytes += f.Size
		if f.File.Kind == pg.WALSegment && !f.Summary {
			cr.WALRanges.Add(f.File.Timeline, f.Seg, f.Seg)
		}
	}
	cr.WALRanges = walarchive.MergeRanges(cr.WALRanges, nil)
	for _, t := range lin.Unknown {
		log.Warn("expire: timeline has WAL but no history file; all its WAL is kept", "timeline", t)
	}
	if opts.DryRun {
		return cr, nil
	}
	// Snapshots first: a crash after this leaves WAL nothing needs, never a
	// snapshot without its WAL.
	var keys []string
	for _, d := range cr.Decisions {
		if !d.Keep {
			keys = append(keys, repo.SnapshotKey(d.Snapshot.Cluster, d.Snapshot.ID))
		}
	}
	if len(keys) > 0 {
		if err := r.Store().Delete(ctx, keys...); repo.IsLocked(err) {
			// Planned around the lock, so only a clock far off gets here:
			// what the store refused stays for a later run.
			log.Warn("expire: the store refused to delete snapshots still under the object lock; a later run removes them", "err", err)
		} else if err != nil {
			return cr, fmt.Errorf("remove %d snapshots (first %s): %w", len(keys), keys[0], err)
		}
		cr.Removed = len(keys)
		log.Info("expire: snapshots removed", "count", len(keys))
	}
	if len(cr.WAL) == 0 {
		return cr, nil
	}
	// Record the runs before removing them, so that verify never takes a
	// deliberate gap for a lost segment.
	if err := a.RecordExpired(ctx, cluster, cr.WALRanges, now); err != nil {
		return cr, err
	}
	// Summaries before their segments: a crash in between leaves a
	// segment without its summary (an incremental over it reads page
	// LSNs), never a summary of a segment that could be archived anew.
	keys = keys[:0]
	for _, summaries := range []bool{true, false} {
		for _, f := range cr.WAL {
			if f.Summary == summaries {
				keys = append(keys, f.Key)
			}
		}
	}
	for i := 0; i < len(keys); i += 1000 {
		batch := keys[i:min(i+1000, len(keys))]
		if err := r.Store().Delete(ctx, batch...); repo.IsLocked(err) {
			log.Warn("expire: the store refused to delete WAL still under the object lock; a later run removes it", "err", err)
		} else if err != nil {
			return cr, fmt.Errorf("remove %d WAL files (first %s): %w", len(batch), batch[0], err)
		}
	}
	log.Info("expire: WAL removed", "files", len(keys), "bytes", cr.WALBytes)
	return cr, nil
}

// splitLocked splits wal into the files that can go and those isLocked
// keeps. A segment and its block summary go together: a summary written
// later than its segment (by a re-push) may still be locked when the
// segment no longer is, and the other way round.
func splitLocked(wal []WALFile, isLocked func(WALFile) bool) (free, locked []WALFile) {
	held := map[string]bool{}
	for _, f := range wal {
		if isLocked(f) {
			held[f.File.Name()] = true
		}
	}
	for _, f := range wal {
		if held[f.File.Name()] {
			locked = append(locked, f)
		} else {
			free = append(free, f)
		}
	}
	return free, locked
}

// listWAL lists a cluster's archived WAL files (one LIST per 1000 objects)
// and reads its timeline histories. Timelines with WAL archived at or after
// since are Active.
func listWAL(ctx context.Context, st storage.Store, a Archive, cluster uint64, segSize uint32, since time.Time) ([]WALFile, Lineage, error) {
	lin := Lineage{Histories: map[pg.TimelineID]pg.History{}}
	prefix := walarchive.ClusterPrefix(cluster)
	var files []WALFile
	hasWAL := map[pg.TimelineID]bool{}
	var historyTLIs []pg.TimelineID
	active := map[pg.TimelineID]bool{}
	for oi, err := range st.List(ctx, prefix, "") {
		if err != nil {
			return nil, lin, fmt.Errorf("list %s: %w", prefix, err)
		}
		name := oi.Key[strings.LastIndexByte(oi.Key, '/')+1:]
		name, summary := strings.CutSuffix(name, walarchive.SummarySuffix)
		f, err := pg.ParseWALFileName(name)
		if err != nil {
			if summary {
				continue // something verify reports
			}
			// wal-receive's pieces of a segment go with the segment
			// (as a part of it: they are no segment of the expired
			// record).
			p, ok := walarchive.ParsePieceName(name)
			if !ok || walarchive.PieceKey(cluster, p) != oi.Key {
				continue // the marker, or something verify reports
			}
			f, _ = pg.ParseWALFileName(p.Segment)
			f.Kind = pg.WALPartialSegment
		} else if summary && f.Kind != pg.WALSegment {
			continue
		} else if want, _ := walarchive.Key(cluster, name); summary && want+walarchive.SummarySuffix != oi.Key || !summary && want != oi.Key {
			continue
		}
		if f.Kind == pg.WALTimelineHistory {
			historyTLIs = append(historyTLIs, f.Timeline)
			continue
		}
		seg, err := f.SegNo(segSize)
		if err != nil {
			continue
		}
		files = append(files, WALFile{Key: oi.Key, File: f, Seg: seg, Size: oi.Size, Mod: oi.ModTime, Summary: summary})
		if summary {
			continue
		}
		hasWAL[f.Timeline] = true
		if !oi.ModTime.Before(since) {
			active[f.Timeline] = true
		}
	}
	for _, t := range historyTLIs {
		h, err := a.History(ctx, cluster, t)
		if err != nil {
			return nil, lin, fmt.Errorf("read the history of timeline %d: %w", t, err)
		}
		lin.Histories[t] = h
	}
	for t := range hasWAL {
		if _, ok := lin.history(t); !ok {
			lin.Unknown = append(lin.Unknown, t)
		}
	}
	slices.Sort(lin.Unknown)
	for t := range active {
		lin.Active = append(lin.Active, t)
	}
	slices.Sort(lin.Active)
	return files, lin, nil
}

// keepLocked turns the removal of a snapshot the repository's object lock
// still holds into a keep, with the lock as its reason: it stays listed and
// restorable, and keeps its WAL, until the first run after the lock has
// passed removes it. Nothing is attempted that the store would refuse.
func keepLocked(ctx context.Context, r Repository, cluster uint64, cr *ClusterResult, now time.Time) error {
	mods := map[string]time.Time{}
	listed := false
	for i := range cr.Decisions {
		d := &cr.Decisions[i]
		if d.Keep {
			continue
		}
		key := repo.SnapshotKey(d.Snapshot.Cluster, d.Snapshot.ID)
		if r.LockedUntil(key, time.Time{}).IsZero() {
			return nil // the repository has no lock
		}
		if !listed {
			prefix := repo.SnapshotKey(cluster, "")
			for oi, err := range r.Store().List(ctx, prefix, "") {
				if err != nil {
					return fmt.Errorf("list %s: %w", prefix, err)
				}
				mods[oi.Key] = oi.ModTime
			}
			listed = true
		}
		mod, ok := mods[key]
		if !ok {
			continue
		}
		if u := r.LockedUntil(key, mod); now.Before(u) {
			d.Keep = true
			d.Reasons = append(d.Reasons, "object lock until "+u.UTC().Format(time.RFC3339))
			cr.LockedSnapshots++
		}
	}
	return nil
}
