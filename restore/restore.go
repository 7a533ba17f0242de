package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/lease"
)

// leaser is the optional part of a Repository that takes leases.
type leaser interface {
	AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error)
}

// walMargin is free space kept beyond the restored files, in WAL segments:
// recovery copies segments into pg_wal and wal-fetch prefetches some.
const walMargin = 8

// Run restores a snapshot into opts.PGData for recovery to opts.Target. It
// refuses (a *RefusedError) before writing anything when the directory is in
// use or not empty (without Delta), the target is out of the range the
// backups and the archived WAL cover, or the disk is too small.
func Run(ctx context.Context, r Repository, a Archive, opts Options) (*Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.statfs == nil {
		opts.statfs = statfs
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.PGData == "" {
		return nil, refusef("no data directory given: pass --pgdata DIR")
	}
	pgdata, err := filepath.Abs(opts.PGData)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", opts.PGData, err)
	}
	if opts.Standby != nil {
		if opts.Target.Kind != pg.TargetEnd || opts.Target.Timeline != 0 && opts.Target.Timeline != LatestTimeline {
			return nil, refusef("--standby takes no recovery target or timeline: a standby replays to the end of the archive and then follows the primary along the newest timeline")
		}
		opts.Target.Timeline = LatestTimeline
	}
	if err := checkTarget(opts.Target); err != nil {
		return nil, err
	}
	// A dry run meets every refusal the restore would, notes it in the
	// plan, and goes on planning; it writes nothing.
	var plan *Plan
	refuse := func(err error) error { return err }
	if opts.DryRun {
		plan = &Plan{WALComplete: true}
		refuse = func(err error) error {
			var re *RefusedError
			var wm *WALMissingError
			if errors.As(err, &re) || errors.As(err, &wm) {
				plan.Problems = append(plan.Problems, err.Error())
				if wm != nil {
					plan.WALComplete = false
				}
				return nil
			}
			return err
		}
	}

	// Local checks first: they are cheap and need no repository.
	if pid, err := runningServer(pgdata); err != nil {
		return nil, err
	} else if pid != 0 {
		if err := refuse(refusef("a PostgreSQL server (pid %d) is running on %s: stop it first (pg_ctl stop -D %s)", pid, pgdata, pgdata)); err != nil {
			return nil, err
		}
	}
	dir, err := inspectDir(pgdata)
	if err != nil {
		return nil, err
	}
	if len(dir.entries) > 0 {
		var err error
		switch {
		case !opts.Delta && slices.Contains(dir.entries, markerName):
			err = refusef("%s holds a restore that was interrupted: rerun with --delta to finish it, or empty the directory", pgdata)
		case !opts.Delta:
			err = refusef("%s is not empty: pass --delta to restore into it (files the backup does not have are removed), or choose an empty directory", pgdata)
		case !slices.Contains(dir.entries, "PG_VERSION") && !slices.Contains(dir.entries, markerName):
			err = refusef("--delta into %s, which is not a PostgreSQL data directory (no PG_VERSION): choose the data directory, or an empty one without --delta", pgdata)
		}
		if err := refuse(err); err != nil {
			return nil, err
		}
	}

	snaps, cluster, err := listSnapshots(ctx, r, opts.Cluster)
	if err != nil {
		return nil, err
	}
	if opts.Delta {
		if cf := existingControl(pgdata); cf != nil && cf.SystemIdentifier != cluster {
			if err := refuse(refusef("%s belongs to cluster %d, not %d: choose its own repository or --cluster, or an empty directory without --delta", pgdata, cf.SystemIdentifier, cluster)); err != nil {
				return nil, err
			}
		}
	}
	// A dry run takes no lease: it reads only, and a backup or gc running
	// meanwhile is no reason to refuse it.
	if l, ok := r.(leaser); ok && !opts.DryRun {
		ls, err := l.AcquireLease(ctx, lease.RestoreScope(cluster), lease.Options{Command: "restore", Logger: log})
		if err != nil {
			return nil, fmt.Errorf("take the restore lease: %w", err)
		}
		defer ls.Release(context.WithoutCancel(ctx))
	}
	res := &Result{Cluster: cluster, Standby: opts.Standby != nil}

	var backup *repo.Snapshot
	switch opts.Backup {
	case "":
	case "latest":
		backup = snaps[len(snaps)-1]
	default:
		for _, s := range snaps {
			if s.ID == opts.Backup {
				backup = s
			}
		}
		if backup == nil {
			return nil, refusef("no backup %s of cluster %d: tidemark list shows the backups", opts.Backup, cluster)
		}
	}
	hists, err := a.Histories(ctx, cluster)
	if err != nil {
		return nil, fmt.Errorf("read timeline history files: %w", err)
	}
	tls := newTimelines(hists)
	h, why, err := chooseTimeline(tls, snaps, backup, opts.Target.Timeline, opts.Target.Timeline == LatestTimeline)
	if err != nil {
		return nil, err
	}
	res.Timeline, res.TimelineReason = h.Timeline, why
	s, err := chooseSnapshot(ctx, snaps, h, backup, opts.Target, func(ctx context.Context, s *repo.Snapshot) (uint64, error) {
		cf, err := controlOf(ctx, r, s)
		if err != nil {
			return 0, err
		}
		return cf.CheckPointCopy.NextXid, nil
	})
	if err != nil {
		return nil, err
	}
	res.Snapshot = s
	log.Info("restore: chose backup", "backup", s.ID, "stopped", s.StopTime.UTC(), "stop_lsn", pg.LSN(s.StopLSN), "timeline", h.Timeline, "why", why)

	span, err := checkWAL(ctx, a, cluster, h, s, snaps, opts.Target, res, log)
	if err != nil && plan != nil {
		plan.WALComplete = false
	}
	if err := refuse(err); err != nil {
		return nil, err
	}

	planStart := now()
	p, err := loadPlan(ctx, r, s, pgdata, opts.TablespaceMap)
	if err != nil {
		return nil, err
	}
	log.Info("restore: directory trees read", "files", p.files, "directories", len(p.dirs), "seconds", now().Sub(planStart).Seconds())
	if err := loadControl(ctx, r, s, p); err != nil {
		return nil, err
	}
	for i := 1; i < len(p.roots); i++ {
		if err := refuse(checkTablespace(p, i, opts.Delta)); err != nil {
			return nil, err
		}
	}
	owner, err := resolveOwner(opts.Owner, pgdata)
	if err := refuse(err); err != nil {
		return nil, err
	}
	space, err := checkSpace(p, opts.Delta, s.WALSegmentSize, opts.statfs)
	if err := refuse(err); err != nil {
		return nil, err
	}
	res.Files, res.Bytes = p.files+1, p.bytes+int64(len(p.control)) // pg_control too

	settings := recoverySettings(opts.Target, h.Timeline, opts.RestoreCommand, opts.Standby)
	for _, st := range settings {
		res.Settings = append(res.Settings, st.String())
	}
	if plan != nil {
		plan.SnapshotReason = snapshotReason(opts, s, h)
		plan.Space = space
		if err := plan.fill(ctx, r, p, s, h, span, opts, res); err != nil {
			return nil, err
		}
		res.Plan = plan
		return res, nil
	}
	if opts.SpoolDir != "" {
		if err := os.RemoveAll(opts.SpoolDir); err != nil {
			return nil, fmt.Errorf("remove the stale WAL spool %s: %w", opts.SpoolDir, err)
		}
	}
	w := &writer{r: r, p: p, log: log, owner: owner, parallel: opts.Parallel, major: s.PGVersion / 10000, standby: opts.Standby != nil}
	w.direct.Store(opts.DirectIO)
	w.progress = opts.Progress
	w.openDirect = opts.openDirect
	w.groupDeltaBytes = cmp.Or(opts.groupDeltaBytes, maxGroupDeltaBytes)
	w.pieceWindows = cmp.Or(opts.pieceWindows, defaultPieceWindows)
	if w.openDirect == nil {
		w.openDirect = openDirect
	}
	if err := w.run(ctx, s, settings, opts.Delta, now); err != nil {
		return nil, err
	}
	res.FetchedBytes = w.fetched.Load()
	res.FetchedBlobs = w.fetchedBlobs.Load()
	res.WrittenBytes = w.written.Load()
	res.SkippedFiles = w.skipped.Load()
	res.RemovedPaths = w.removed.Load()
	if opts.Delta {
		res.DeltaPages = w.delta.pages()
	}
	return res, nil
}

// LatestTimeline as pg.RecoveryTarget.Timeline asks for the newest timeline in the
// archive (recovery_target_timeline = 'latest' made explicit).
const LatestTimeline = pg.TimelineID(0xFFFFFFFF)

func checkTarget(t pg.RecoveryTarget) error {
	switch t.Action {
	case "", pg.ActionPause, pg.ActionPromote, pg.ActionShutdown:
	default:
		return refusef("--target-action %q: want promote, pause or shutdown", t.Action)
	}
	if t.Kind == pg.TargetName && (t.Name == "" || len(t.Name) >= 64) {
		return refusef("--target-name %q: a restore point name has 1 to 63 bytes", t.Name)
	}
	if t.Kind == pg.TargetEnd && (t.Inclusive != nil || t.Action != "") {
		return refusef("--target-inclusive and --target-action need a recovery target (--target-time, --target-lsn, --target-xid, --target-name or --target immediate)")
	}
	return nil
}

// listSnapshots loads the snapshots of the cluster to restore, working out
// which cluster that is when the repository holds one.
func listSnapshots(ctx context.Context, r Repository, cluster uint64) ([]*repo.Snapshot, uint64, error) {
	snaps, err := r.Snapshots(ctx, cluster)
	if err != nil {
		return nil, 0, fmt.Errorf("list backups: %w", err)
	}
	if cluster == 0 {
		var ids []uint64
		for _, s := range snaps {
			if !slices.Contains(ids, s.Cluster) {
				ids = append(ids, s.Cluster)
			}
		}
		if len(ids) > 1 {
			var names []string
			for _, id := range ids {
				names = append(names, itoa(id))
			}
			return nil, 0, refusef("the repository holds backups of several clusters (%s): pass --cluster with the system identifier to restore", strings.Join(names, ", "))
		}
		if len(ids) == 1 {
			cluster = ids[0]
		}
	}
	if len(snaps) == 0 {
		if cluster == 0 {
			return nil, 0, refusef("the repository has no backups: take one with tidemark backup")
		}
		return nil, 0, refusef("the repository has no backups of cluster %d: check --cluster, or take one with tidemark backup", cluster)
	}
	return snaps, cluster, nil
}

// checkWAL checks, before anything is written, that the archive holds the
// WAL recovery needs: from the snapshot's start to its stop for the
// snapshot to become consistent, then to the target. For targets whose
// position only the WAL knows (a time, an xid, a name, the end) the WAL must
// run without a gap to the newest segment archived along the timeline;
// for a time target the last commit in it must lie past the target.
func checkWAL(ctx context.Context, a Archive, cluster uint64, h pg.History, s *repo.Snapshot, snaps []*repo.Snapshot, t pg.RecoveryTarget, res *Result, log *slog.Logger) (walSpan, error) {
	segSize := uint32(s.WALSegmentSize)
	if err := pg.ValidateWALSegSize(uint64(segSize)); err != nil {
		return walSpan{}, fmt.Errorf("backup %s: %w", s.ID, err)
	}
	first := pg.LSN(s.StartLSN).Segment(segSize)
	stop := pg.LSN(s.StopLSN).PrevSegment(segSize)
	span, err := scanWAL(ctx, a, cluster, h, first, segSize)
	if err != nil {
		return span, err
	}
	err = checkWALSpan(ctx, a, cluster, h, s, snaps, t, res, log, span, first, stop, segSize)
	return span, err
}

// checkWALSpan is checkWAL once the archive is scanned.
func checkWALSpan(ctx context.Context, a Archive, cluster uint64, h pg.History, s *repo.Snapshot, snaps []*repo.Snapshot, t pg.RecoveryTarget, res *Result, log *slog.Logger,
	span walSpan, first, stop pg.SegNo, segSize uint32) error {
	name := func(seg pg.SegNo) string { return pg.SegmentName(h.SegmentTimeline(seg, segSize), seg, segSize) }
	if span.last < stop {
		return &WALMissingError{Snapshot: s.ID, Segment: name(span.last + 1), Need: fmt.Sprintf("for backup %s to become consistent (its WAL runs from %s to %s)", s.ID, name(first), name(stop))}
	}
	end := (span.last + 1).Start(segSize)
	// What wal-receive acknowledged past the last complete segment of the
	// timeline recovery ends on is recoverable too (wal-fetch serves it).
	var tail []byte
	if tr, ok := a.(tailReader); ok && !span.gap && h.SegmentTimeline(span.last+1, segSize) == h.Timeline {
		b, found, err := tr.Tail(ctx, cluster, h.Timeline, span.last+1)
		if err != nil {
			log.Warn("restore: cannot read the streamed tail of the WAL", "err", err)
		} else if found {
			tail = b
			end += pg.LSN(len(b))
		}
	}
	res.LastRecoverable = end
	gapNote := ""
	if span.gap {
		gapNote = fmt.Sprintf("; segment %s is missing although WAL up to %s is archived", name(span.last+1), name(span.head))
	}
	// Reading segments costs a download each: only a time target needs
	// the last commit time.
	var lastCommit time.Time
	var commitSeg pg.SegNo
	var found bool
	if t.Kind == pg.TargetTime && tail != nil {
		padded := make([]byte, segSize)
		copy(padded, tail)
		if ct, ok, err := pg.LastCommitTime(padded); err == nil && ok {
			lastCommit, commitSeg, found = ct, span.last+1, true
		}
	}
	if t.Kind == pg.TargetTime && !found {
		lastCommit, commitSeg, found = lastCommitBefore(ctx, a, cluster, h, span.last, stop, segSize, log)
	}
	res.LastCommit = lastCommit
	recoverable := fmt.Sprintf("LSN %s", end)
	if found {
		recoverable = fmt.Sprintf("%s (the last commit, in segment %s; WAL ends at LSN %s)", lastCommit.UTC().Format(time.RFC3339Nano), name(commitSeg), end)
	}
	log.Info("restore: WAL checked", "from", name(first), "to", name(span.last), "last_recoverable_lsn", end, "last_commit", lastCommit)
	switch t.Kind {
	case pg.TargetImmediate:
		return nil
	case pg.TargetLSN:
		if t.LSN >= end {
			return refusef("the target LSN %s is past the end of the WAL archived along timeline %d: the last recoverable point is %s%s; pick an earlier --target-lsn, or archive more WAL and retry", t.LSN, h.Timeline, recoverable, gapNote)
		}
		return nil
	case pg.TargetTime:
		if !found {
			newest := snaps[len(snaps)-1]
			log.Warn("restore: no commit record in the last archived segments, so the target time cannot be checked against the end of the WAL",
				"newest_backup_stop_time", newest.StopTime.UTC(), "archive_head_lsn", end)
			if span.gap {
				return refusef("the WAL along timeline %d has a gap%s: recovery would stop at LSN %s; restore the missing segment, or pass --target-lsn %s", h.Timeline, gapNote, end, end)
			}
			return nil
		}
		inclusive := t.Inclusive == nil || *t.Inclusive
		if lastCommit.After(t.Time) || (!inclusive && lastCommit.Equal(t.Time)) {
			return nil
		}
		return refusef("the target time %s is past the end of the WAL archived along timeline %d: the last recoverable time is %s%s; pick an earlier --target-time, or archive more WAL (SELECT pg_switch_wal() on the server) and retry", t.Time.UTC().Format(time.RFC3339Nano), h.Timeline, recoverable, gapNote)
	}
	if span.gap {
		return refusef("the WAL along timeline %d has a gap%s: recovery would stop at %s before reaching the %s target; restore the missing segment, or pass --target-lsn %s to recover up to the gap", h.Timeline, gapNote, recoverable, t.Kind, end)
	}
	return nil
}

// tailReader is the optional part of an Archive that knows wal-receive's
// tail of a timeline (ArchiveOf's has it).
type tailReader interface {
	Tail(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo) ([]byte, bool, error)
}

// lastCommitBefore finds the time of the last commit or abort record in
// the last few segments up to last (not before the snapshot's stop).
func lastCommitBefore(ctx context.Context, a Archive, cluster uint64, h pg.History, last, stop pg.SegNo, segSize uint32, log *slog.Logger) (time.Time, pg.SegNo, bool) {
	const look = 4
	for seg := last; seg >= stop && seg+look > last; seg-- {
		tli := h.SegmentTimeline(seg, segSize)
		data, err := a.ReadSegment(ctx, cluster, tli, seg)
		if err != nil {
			log.Warn("restore: cannot read WAL to find the last commit time", "segment", pg.SegmentName(tli, seg, segSize), "err", err)
			return time.Time{}, 0, false
		}
		t, found, err := pg.LastCommitTime(data)
		if err != nil {
			log.Warn("restore: cannot parse WAL to find the last commit time", "segment", pg.SegmentName(tli, seg, segSize), "err", err)
			return time.Time{}, 0, false
		}
		if found {
			return t, seg, true
		}
		if seg == 0 {
			break
		}
	}
	return time.Time{}, 0, false
}

// loadControl reads the snapshot's pg_control into the plan and checks it
// belongs to the snapshot's cluster, so that the file written last is known
// good before the first is written.
func loadControl(ctx context.Context, r Repository, s *repo.Snapshot, p *plan) error {
	if p.ctlNode == nil {
		return fmt.Errorf("backup %s has no %s: %w", s.ID, controlPath, repo.ErrCorrupt)
	}
	b, err := readWhole(ctx, r, *p.ctlNode)
	if err != nil {
		return fmt.Errorf("backup %s: %s: %w", s.ID, controlPath, err)
	}
	cf, err := pg.ParseControlFile(b)
	if err != nil {
		return fmt.Errorf("backup %s: %s: %w", s.ID, controlPath, err)
	}
	if cf.SystemIdentifier != s.Cluster {
		return fmt.Errorf("backup %s: %s has system identifier %d, the backup says %d: %w", s.ID, controlPath, cf.SystemIdentifier, s.Cluster, repo.ErrCorrupt)
	}
	p.control = b
	return nil
}

// checkTablespace refuses a tablespace location that already holds this
// cluster's version directory (without --delta) or that lies inside the
// data directory.
func checkTablespace(p *plan, i int, delta bool) error {
	loc := p.roots[i]
	if !filepath.IsAbs(loc) {
		return refusef("tablespace location %q is not an absolute path: pass --tablespace-map %s=/absolute/path", loc, loc)
	}
	if rel, err := filepath.Rel(p.roots[0], loc); err == nil && !strings.HasPrefix(rel, "..") {
		return refusef("tablespace location %s lies inside the data directory %s: move it with --tablespace-map %s=/elsewhere", loc, p.roots[0], loc)
	}
	if delta {
		return nil
	}
	st, err := inspectDir(loc)
	if err != nil {
		return err
	}
	for _, name := range st.entries {
		for _, d := range p.dirs {
			if d.root == i && d.rel == name {
				return refusef("tablespace location %s already holds %s: empty it, pass --delta, or move the tablespace with --tablespace-map %s=/new/path", loc, name, loc)
			}
		}
	}
	return nil
}

// checkSpace compares what the restore will add with the free space of
// each file system it writes to, and returns both per file system.
func checkSpace(p *plan, delta bool, segSize int64, stat func(string) (uint64, string, error)) ([]Space, error) {
	type fsNeed struct {
		path  string
		avail uint64
		need  int64
	}
	byFS := map[string]*fsNeed{}
	rootFS := make([]*fsNeed, len(p.roots))
	var order []*fsNeed
	for i, root := range p.roots {
		avail, id, err := stat(root)
		if err != nil {
			return nil, err
		}
		if byFS[id] == nil {
			byFS[id] = &fsNeed{path: root, avail: avail}
			order = append(order, byFS[id])
		}
		rootFS[i] = byFS[id]
	}
	rootFS[0].need += walMargin * segSize
	// The files' sizes (holes included: an upper bound); a delta restore
	// needs what they add to what is there.
	for i, n := range p.rootSize {
		if delta {
			n = max(0, n-allocatedUnder(p.roots[i]))
		}
		rootFS[i].need += n
	}
	for _, d := range p.dirs {
		rootFS[d.root].need += 4096
	}
	var out []Space
	for _, f := range order {
		out = append(out, Space{Path: f.path, Available: int64(min(f.avail, 1<<62)), Needed: f.need, Enough: f.need <= 0 || uint64(f.need) <= f.avail})
	}
	for _, f := range order {
		if f.need > 0 && uint64(f.need) > f.avail {
			what := "the restore needs"
			if delta {
				what = "the delta restore adds about"
			}
			return out, refusef("not enough free space for %s: %s %s, %s is available; free some space or restore elsewhere (--pgdata, --tablespace-map)", f.path, what, humanBytes(f.need), humanBytes(int64(f.avail)))
		}
	}
	return out, nil
}

// run writes the plan: fresh or delta, then settles, recovery files, and
// pg_control last.
func (w *writer) run(ctx context.Context, s *repo.Snapshot, settings []setting, delta bool, now func() time.Time) error {
	start := now()
	if delta {
		// An interrupted delta must not leave a directory that starts: the
		// old pg_control goes first.
		global := filepath.Join(w.p.roots[0], "global")
		if err := removeIfExists(filepath.Join(global, "pg_control")); err != nil {
			return err
		}
		if err := syncDirIfExists(global); err != nil {
			return err
		}
		if err := writeMarker(w.p.roots[0]); err != nil {
			return err
		}
		if err := w.layoutDelta(ctx); err != nil {
			return err
		}
	} else if err := w.layoutFresh(); err != nil {
		return err
	}
	w.log.Info("restore: directories laid out", "directories", len(w.p.dirs), "files", w.p.files, "seconds", now().Sub(start).Seconds())
	fetchStart := now()
	// Files are laid out and fetched in batches, so the total is the
	// snapshot's bytes (holes and, in a delta restore, unchanged files
	// included): the figure to expect, not a count that must be reached.
	w.progress.Phase("fetch", w.p.bytes, "")
	var visit func(l *listing, n *filemap.Node) error
	var end func(l *listing) error
	if delta {
		visit, end = w.cleanVisit, w.cleanEnd
	}
	err := w.p.eachBatch(ctx, w.r, func(files []entry) error {
		return w.batch(ctx, files, delta)
	}, visit, end)
	if err != nil {
		return err
	}
	settleStart := now()
	w.log.Info("restore: files written", "fetched_bytes", w.fetched.Load(), "seconds", settleStart.Sub(fetchStart).Seconds(),
		"compare_seconds", w.compareTime.Seconds(), "fetch_seconds", w.fetchTime.Seconds(), "settle_seconds", w.settleTime.Seconds())
	if err := w.settle(); err != nil {
		return err
	}
	w.log.Info("restore: files synced", "seconds", now().Sub(settleStart).Seconds())
	if err := w.writeRecoveryFiles(s, settings, now()); err != nil {
		return err
	}
	if err := w.writeControl(); err != nil {
		return err
	}
	if delta {
		w.log.Info("restore: relation pages compared", w.delta.logAttrs()...)
	}
	w.log.Info("restore: done", "backup", s.ID, "files", w.p.files+1, "fetched_bytes", w.fetched.Load(),
		"written_bytes", w.written.Load(), "unchanged_files", w.skipped.Load(), "removed", w.removed.Load(), "seconds", now().Sub(start).Seconds())
	return nil
}
