package backup

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/lease"
)

// keepaliveEvery is how often the backup checks its connection.
const keepaliveEvery = 10 * time.Second

// closeTimeout bounds flushing the writer after a failed backup, so that
// what it uploaded is indexed and reused by the next run.
const closeTimeout = time.Minute

// run is the state of one Run.
type run struct {
	r      *repo.Repo
	opts   Options
	ctl    *pg.ControlFile
	srv    *server
	id     string
	began  time.Time
	phase  atomic.Pointer[string]
	method atomic.Pointer[string]
	total  atomic.Int64
	copyAt atomic.Int64 // UnixNano when copying began
	cap    atomic.Pointer[capture]
	w      *repo.Writer
	timing Timing
	reads  repo.ReadStats // the repository's reads when the run began
}

// Run takes one backup of the cluster at opts.PGData into r and commits
// its snapshot. It holds the cluster's backup lease throughout: a second
// Run for the same cluster fails with a *lease.LockedError naming this one.
func Run(ctx context.Context, r *repo.Repo, opts Options) (*Result, error) {
	opts.setDefaults()
	if opts.PGData == "" {
		return nil, &RefusedError{What: "data directory", Err: errors.New("not given"), Hint: "pass --pgdata or set PGDATA"}
	}
	abs, err := filepath.Abs(opts.PGData)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", opts.PGData, err)
	}
	opts.PGData = abs
	// Refused before anything is written (the lease is the first write).
	if err := checkVersionFile(opts.PGData); err != nil {
		return nil, err
	}
	ctl, err := readControl(opts.PGData)
	if err != nil {
		return nil, err
	}
	b := &run{r: r, opts: opts, ctl: ctl, began: opts.Now(), reads: r.ReadStats()}
	b.setPhase(PhaseStart)
	l, err := acquireLease(ctx, r, ctl.SystemIdentifier, &opts)
	if err != nil {
		return nil, err
	}
	defer l.Release(context.WithoutCancel(ctx))
	for _, e := range l.Expired {
		opts.Logger.Warn("an earlier backup did not finish; its lease expired", "holder", e.String())
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-l.Lost():
			cancel(fmt.Errorf("lost the backup lease of cluster %d: %w", ctl.SystemIdentifier, l.Err()))
		case <-ctx.Done():
		}
	}()
	res, err := b.run(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(err, cause) && !errors.Is(cause, context.Canceled) {
		// Report why the run was stopped (the lease was lost), not only
		// what failed because of it.
		err = fmt.Errorf("%w (%v)", cause, err)
	}
	return res, err
}

func (b *run) setPhase(p string) { b.phase.Store(&p) }

// acquireLease takes the cluster's backup lease. A lease left by a backup
// on this host whose process is gone (kill -9, a crash) is removed at once
// rather than after its TTL, so that the next backup can resume right away.
func acquireLease(ctx context.Context, r *repo.Repo, cluster uint64, opts *Options) (*lease.Lease, error) {
	lo := lease.Options{Exclusive: true, Command: "backup", Logger: opts.Logger, Now: opts.Now, ReclaimGone: true}
	l, err := r.AcquireLease(ctx, lease.BackupScope(cluster), lo)
	var le *lease.LockedError
	switch {
	case errors.As(err, &le):
		return nil, fmt.Errorf("another backup of cluster %d is running: %w", cluster, err)
	case err != nil:
		return nil, fmt.Errorf("take the backup lease of cluster %d: %w", cluster, err)
	}
	return l, nil
}

func (b *run) run(ctx context.Context) (*Result, error) {
	opts := &b.opts
	log := opts.Logger
	srv, err := connect(ctx, opts.ConnString)
	if err != nil {
		return nil, err
	}
	b.srv = srv
	defer srv.close(context.WithoutCancel(ctx))
	if err := srv.checkPGData(opts.PGData, b.ctl); err != nil {
		return nil, err
	}
	if err := srv.checkArchiving(opts.WAL != nil); err != nil {
		return nil, err
	}
	// Read the snapshot list before the checkpoint: an unreachable
	// repository should fail the backup before it costs the server one.
	snaps, err := b.r.Snapshots(ctx, srv.SystemID)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of cluster %d: %w", srv.SystemID, err)
	}
	stopProgress := b.startProgress(ctx)
	defer stopProgress()

	b.id = repo.NewSnapshotID(b.began)
	startTime := opts.Now()
	start, tli, err := srv.start(ctx, opts.Label+" "+b.id, !opts.SpreadCheckpoint)
	if err != nil {
		return nil, err
	}
	log.Info("backup started", "snapshot", b.id, "start_lsn", start, "timeline", tli, "standby", srv.InRecovery)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	kaCtx, kaStop := context.WithCancel(ctx)
	defer kaStop()
	go srv.keepalive(kaCtx, keepaliveEvery, cancel)
	res, err := b.copyAndCommit(ctx, kaStop, snaps, start, tli, startTime)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(err, cause) {
		// Say why the backup was stopped (the session was lost), not
		// what failed because of it.
		err = fmt.Errorf("%w (%v)", cause, err)
	}
	return res, err
}

// copyAndCommit is the part of a backup between pg_backup_start and the
// commit. kaStop ends the keepalive once pg_backup_stop has returned.
func (b *run) copyAndCommit(ctx context.Context, kaStop func(), snaps []*repo.Snapshot, start pg.LSN, tli pg.TimelineID, startTime time.Time) (*Result, error) {
	opts, srv, log := &b.opts, b.srv, b.opts.Logger
	hist, err := readHistory(opts.PGData, tli)
	if err != nil {
		return nil, err
	}
	ref, why := chooseParent(snaps, hist, cluster{major: srv.Major, blockSize: srv.BlockSize, checksums: srv.Checksums}, start)
	ch, err := b.changeDetection(ctx, ref, why, hist, start)
	if err != nil {
		return nil, err
	}
	b.method.Store(&ch.method)
	log.Info("change detection", "method", ch.method, "parent", snapID(ch.parent), "why", ch.fallback)
	for _, src := range ch.sources {
		log.Info("change source", "source", src.Method, "used", src.Used, "pages", src.Pages, "summaries", src.Summaries, "why_not", src.Reason)
	}

	b.w, err = b.r.NewWriter(ctx, "backup "+b.id)
	if err != nil {
		return nil, err
	}
	committed := false
	defer func() {
		if !committed {
			// Index what was uploaded, for the next run to reuse.
			cctx, cc := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			defer cc()
			if err := b.w.Close(cctx); err != nil {
				log.Warn("could not index the uploads of the failed backup", "err", err)
			}
		}
	}()

	b.setPhase(PhaseCopy)
	copyAt := opts.Now()
	b.timing.Start = copyAt.Sub(b.began)
	b.copyAt.Store(copyAt.UnixNano())
	c, rts, err := b.capture(ctx, ch, ref, start, startTime)
	if errors.Is(err, errSummaryMismatch) {
		log.Warn("summaries disagree with the data files; reading every page's LSN instead", "source", ch.method, "detail", c.mismatch)
		ch.method, ch.fallback = MethodLSNScan, ch.method+" disagreed with a page: "+c.mismatch
		b.method.Store(&ch.method)
		ch.sum = nil
		c, rts, err = b.capture(ctx, ch, ref, start, startTime)
	}
	if err != nil {
		return nil, err
	}

	b.setPhase(PhaseStop)
	stopAt := opts.Now()
	b.timing.Copy = stopAt.Sub(copyAt)
	// With a WAL archive to ask, tidemark waits for the WAL itself, polling
	// more often than pg_backup_stop's one-second loop; without one,
	// PostgreSQL's wait for archive_command is the confirmation. A standby
	// cannot wait unless it archives itself (archive_mode = always).
	wait := opts.WAL == nil && (!srv.InRecovery || srv.ArchiveMode == "always")
	sctx, scancel := context.WithTimeoutCause(ctx, opts.ArchiveWait, &WALError{
		Err: fmt.Errorf("pg_backup_stop waited %s for archive_command", opts.ArchiveWait)})
	stop, label, spcmap, stopTLI, err := srv.stop(sctx, wait)
	scancel()
	if err != nil {
		if cause := context.Cause(sctx); cause != nil && ctx.Err() == nil {
			return nil, cause
		}
		return nil, err
	}
	kaStop()
	stopTime := opts.Now()
	b.timing.Stop = stopTime.Sub(stopAt)
	log.Info("backup stopped", "stop_lsn", stop, "timeline", stopTLI)
	if err := checkLabel(label, start, tli); err != nil {
		return nil, err
	}
	c.mu.Lock()
	csErrs, csCount := c.csErrs, c.csCount
	c.mu.Unlock()
	if csCount > 0 && opts.FailOnChecksumError {
		return nil, &ChecksumFailureError{Errors: csErrs}
	}

	b.setPhase(PhaseCommit)
	snap := &repo.Snapshot{
		ID: b.id, Cluster: srv.SystemID, PGVersion: srv.VersionNum, BlockSize: srv.BlockSize,
		WALSegmentSize: srv.WALSegSize, DataChecksums: srv.Checksums, Type: repo.SnapshotFull,
		StartLSN: uint64(start), StopLSN: uint64(stop), StartTimeline: uint32(tli), StopTimeline: uint32(stopTLI),
		StartTime: startTime.UTC(), StopTime: stopTime.UTC(),
		BackupLabel: label, TablespaceMap: spcmap, Tablespaces: rts.tablespaces, Roots: rts.ids,
		ChecksumErrors: csErrs, ToolVersion: opts.ToolVersion,
	}
	if ch.parent != nil {
		snap.Type, snap.Parent = repo.SnapshotIncremental, ch.parent.ID
	}
	nReused, err := checkReused(ctx, b.r.Store(), c.reused)
	if err != nil {
		return nil, err
	}
	// Flush before taking the statistics, so that the duration includes
	// the uploads; Commit then only writes the index and the snapshot.
	if err := b.w.Flush(ctx); err != nil {
		return nil, err
	}
	ws := b.w.Stats()
	snap.Stats = repo.SnapshotStats{LogicalBytes: c.stats.logical.Load(), NewBytes: ws.StoredBytes,
		Files: c.stats.files.Load(), Seconds: opts.Now().Sub(b.began).Seconds()}
	if stopTLI != tli {
		// A standby that followed a promotion while the backup ran.
		if hist, err = readHistory(opts.PGData, stopTLI); err != nil {
			return nil, err
		}
	}
	key, err := b.w.Commit(ctx, snap, func(ctx context.Context) error {
		return b.confirmWAL(ctx, snap, hist)
	})
	if err != nil {
		return nil, err
	}
	committed = true
	if err := b.w.Close(ctx); err != nil {
		log.Warn("closing the writer after commit", "err", err)
	}
	b.setPhase(PhaseDone)
	log.Info("snapshot committed", "snapshot", snap.ID, "key", key, "type", snap.Type, "method", ch.method,
		"logical", bytesize.Format(snap.Stats.LogicalBytes), "stored", bytesize.Format(snap.Stats.NewBytes),
		"seconds", fmt.Sprintf("%.1f", snap.Stats.Seconds), "checksum_errors", csCount)
	b.timing.Commit = opts.Now().Sub(stopTime)
	return &Result{Snapshot: snap, Key: key, Method: ch.method, Fallback: ch.fallback, Parent: ch.parent,
		Sources: ch.sources, Stats: b.stats(c, nReused), Timing: b.timing}, nil
}

func snapID(s *repo.Snapshot) string {
	if s == nil {
		return ""
	}
	return s.ID
}

func (b *run) stats(c *capture, reusedPacks int) Stats {
	ws := b.w.Stats()
	rs := b.r.ReadStats()
	return Stats{
		Files: c.stats.files.Load(), RelFiles: c.stats.relFiles.Load(), ReusedFiles: c.stats.reusedFiles.Load(),
		LogicalBytes: c.stats.logical.Load(), ReadBytes: c.stats.read.Load(), DirectBytes: c.stats.directRead.Load(), PatchedPages: c.stats.patched.Load(),
		DeltaPages: c.stats.deltaPages.Load(), BaseReadBytes: c.stats.baseRead.Load(),
		SummedWindows: c.stats.summed.Load(), UnsummedWindows: c.stats.unsummed.Load(),
		RebasedSlots: c.stats.rebased.Load(), SampledPages: c.stats.sampled.Load(), ChecksumPages: c.stats.verified.Load(),
		RepoReadBytes: rs.Bytes - b.reads.Bytes, RepoGets: rs.Gets - b.reads.Gets,
		NewBytes: ws.StoredBytes, NewBlobs: ws.NewBlobs, ReusedPacks: reusedPacks,
	}
}

// capture runs one pass over the files.
func (b *run) capture(ctx context.Context, ch changes, ref *repo.Snapshot, start pg.LSN, startTime time.Time) (*capture, *roots, error) {
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	srv := b.srv
	c := &capture{
		ctx: cctx, cancel: cancel, addCtx: context.WithoutCancel(ctx),
		store: b.r, w: b.w, log: b.opts.Logger, opts: &b.opts, pgdata: b.opts.PGData,
		major: srv.Major, blockSize: srv.BlockSize, relSegSize: b.ctl.RelSegSize, catVersion: b.ctl.CatalogVersion,
		checksums: srv.Checksums, start: start, now: startTime.Unix(), day: startTime.Unix() / 86400,
		method: ch.method, sum: ch.sum, limiter: newRateLimiter(b.opts.MaxReadRate),
	}
	if ref != nil {
		c.ref = &reference{snap: ref, start: pg.LSN(ref.StartLSN), reuseBefore: ref.StartTime.Add(-reuseMargin).UnixNano()}
	}
	b.total.Store(b.totalSize())
	b.cap.Store(c)
	rts, err := c.run()
	return c, rts, err
}

// totalSize estimates the bytes the capture considers.
func (b *run) totalSize() int64 {
	n := scanSize(b.opts.PGData, "", "")
	ents, err := listDir(filepath.Join(b.opts.PGData, "pg_tblspc"), "pg_tblspc", "")
	if err != nil {
		return n
	}
	own := pg.TablespaceDir(b.srv.Major, b.ctl.CatalogVersion)
	for _, e := range ents {
		if e.tablespace != 0 {
			n += scanSize(e.node.Target, "pg_tblspc/"+e.node.Name, own)
		}
	}
	return n
}

// checkLabel makes sure the backup_label pg_backup_stop returned describes
// the backup this run started.
func checkLabel(label []byte, start pg.LSN, tli pg.TimelineID) error {
	l, err := pg.ParseBackupLabel(label)
	if err != nil {
		return fmt.Errorf("backup_label from pg_backup_stop: %w", err)
	}
	if l.StartLSN != start || l.StartTimeline != 0 && l.StartTimeline != tli {
		return fmt.Errorf("backup_label from pg_backup_stop starts at %s on timeline %d, but pg_backup_start returned %s on timeline %d",
			l.StartLSN, l.StartTimeline, start, tli)
	}
	return nil
}

// confirmWAL waits until the WAL archive holds every segment recovery
// needs from start to stop. On a primary, pg_backup_stop has already waited
// for archive_command; a standby depends on the primary archiving the
// segment that holds its stop, which can take until the next WAL switch.
func (b *run) confirmWAL(ctx context.Context, s *repo.Snapshot, h pg.History) error {
	if b.opts.WAL == nil {
		return nil
	}
	deadline := b.opts.Now().Add(b.opts.ArchiveWait)
	// archive_command usually needs a fraction of a second for the last
	// segment: poll fast at first.
	poll := 50 * time.Millisecond
	// Through the byte at stop, not just before it: a standby's stop can
	// fall on a segment boundary, and recovery then reads the next record,
	// in the next segment, before it can stop at consistency (--target
	// immediate failed with "recovery ended before the target" until the
	// primary archived it).
	for {
		missing, err := b.opts.WAL.CheckRange(ctx, s.Cluster, h, pg.LSN(s.StartLSN), pg.LSN(s.StopLSN)+1)
		if err == nil && len(missing) == 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%d segment(s) not archived, first %s", len(missing), missing[0])
		}
		if ctx.Err() != nil || b.opts.Now().After(deadline) {
			return &WALError{Err: err}
		}
		if poll >= time.Second {
			b.opts.Logger.Info("waiting for the WAL archive", "stop_lsn", pg.LSN(s.StopLSN), "err", err)
		}
		select {
		case <-ctx.Done():
			return &WALError{Err: ctx.Err()}
		case <-time.After(poll):
		}
		poll = min(2*poll, 2*time.Second)
	}
}

// startProgress calls opts.Progress periodically until the returned stop
// function runs, which reports once more.
func (b *run) startProgress(ctx context.Context) func() {
	if b.opts.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(b.opts.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				b.opts.Progress(b.progress())
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		p := b.progress()
		p.Final = true
		b.opts.Progress(p)
	}
}

func (b *run) progress() Progress {
	p := Progress{Phase: *b.phase.Load(), Elapsed: b.opts.Now().Sub(b.began), TotalBytes: b.total.Load()}
	if m := b.method.Load(); m != nil {
		p.Method = *m
	}
	if c := b.cap.Load(); c != nil {
		p.DoneBytes, p.ReadBytes, p.Files = c.stats.done.Load(), c.stats.read.Load(), c.stats.files.Load()
	}
	if b.w != nil {
		p.StoredBytes = b.w.Stats().StoredBytes
	}
	if at := b.copyAt.Load(); at != 0 && p.Phase == PhaseCopy {
		secs := b.opts.Now().Sub(time.Unix(0, at)).Seconds()
		if secs > 0 {
			p.Rate = float64(p.DoneBytes) / secs
		}
		if p.Rate > 0 && p.TotalBytes > p.DoneBytes {
			p.ETA = time.Duration(float64(p.TotalBytes-p.DoneBytes) / p.Rate * float64(time.Second))
		}
	}
	return p
}
