// Package replicate copies snapshots and WAL from one tidemark repository
// into a second one that shares its master secret (tidemark copy): the
// second region or provider of docs/operations.md.
//
// It sends only what the target lacks. Because the two repositories share
// the master secret, a blob has the same ID in both: the blobs a snapshot
// refers to (found with repo/refs) are looked up in the target's index and
// only missing ones are read from the source, each verified against its
// keyed ID there, and stored through an ordinary repo.Writer in the target,
// which computes the ID again (it must match), compresses and encrypts to
// the target's own recipients. The snapshot is then committed by the
// target's commit protocol (packs, index delta, the WAL it needs confirmed
// present, the snapshot created create-only, with the same id). WAL files
// the target lacks are read (decrypted, MAC checked) and archived again
// through the target's archive, which checks them as a push does.
//
// A copy is safe beside garbage collection on either side: it holds a
// reader lease on the source (a restore's, so expire keeps the snapshot
// and gc waits for it) and a writer lease on the target (a backup's, so gc
// there leaves its new packs alone until the snapshot lands and expire
// waits). Killed at any point, a rerun reuses everything indexed in the
// target and every WAL object that landed.
//
// It is not a mirror of the store: leases, drills, verify state and the
// other repository's retention records are its own.
package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/refs"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// Options configure a copy. Zero values take the defaults.
type Options struct {
	// Cluster limits the copy to one cluster (system identifier); 0 copies
	// every cluster the source holds.
	Cluster uint64
	// Snapshots limits the copy to these snapshot ids (empty: every
	// snapshot the target lacks).
	Snapshots []string
	// NoWAL skips the WAL archive; NoSnapshots skips snapshots.
	NoWAL, NoSnapshots bool
	// Parallel is how many WAL files are copied at once (default 4).
	Parallel int
	// BatchBlobs is how many blobs are read from the source per batch
	// (default 4096): the batch's kinds are held in memory, and reads are
	// planned per pack within a batch.
	BatchBlobs int
	Logger     *slog.Logger
}

// Result says what a copy did.
type Result struct {
	Clusters int
	// Copied are the snapshot ids committed in the target by this run;
	// Present counts those the target had already; Skipped those left out
	// because the target's retention had expired their WAL.
	Copied  []string
	Present int
	Skipped []string
	// Blobs and RawBytes are what was read from the source and stored in
	// the target (plaintext); BlobsPresent the referenced blobs the target
	// already had.
	Blobs, RawBytes int64
	BlobsPresent    int64
	// Packs and PackBytes are what the target's writers uploaded.
	Packs, PackBytes int64
	// WALFiles and WALBytes are the WAL files archived in the target;
	// WALPresent those it had; WALExpired those its retention removed on
	// purpose and that were not copied back.
	WALFiles, WALBytes int64
	WALPresent         int64
	WALExpired         int64
	Elapsed            time.Duration
}

// Run copies from one repository into the other. Both must share the
// master secret (repo.Repo.CheckSharedSecret).
func Run(ctx context.Context, from, to *repo.Repo, opts Options) (*Result, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.BatchBlobs <= 0 {
		opts.BatchBlobs = 4096
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := from.CheckSharedSecret(to); err != nil {
		return nil, err
	}
	if from.Config().ID == to.Config().ID {
		return nil, fmt.Errorf("copy from %s to %s: both are the same repository (id %s)", from.Store(), to.Store(), from.Config().ID)
	}
	start := time.Now()
	c := &copier{from: from, to: to, opts: opts, log: opts.Logger, res: &Result{},
		src: walarchive.FromRepo(from, walarchive.Options{Logger: opts.Logger}),
		dst: walarchive.FromRepo(to, walarchive.Options{Logger: opts.Logger}),
		g:   refs.New(from, opts.Logger)}
	clusters, snaps, err := c.plan(ctx)
	if err != nil {
		return nil, err
	}
	for _, cl := range clusters {
		if err := c.cluster(ctx, cl, snaps[cl]); err != nil {
			c.res.Elapsed = time.Since(start)
			return c.res, err
		}
		c.res.Clusters++
	}
	c.res.Elapsed = time.Since(start)
	return c.res, nil
}

type copier struct {
	from, to *repo.Repo
	src, dst *walarchive.Archive
	opts     Options
	log      *slog.Logger
	res      *Result
	g        *refs.Graph
}

// plan lists the clusters to copy and the source's snapshots of each, in
// the order they are copied (oldest first, so a parent lands before its
// children).
func (c *copier) plan(ctx context.Context) ([]uint64, map[uint64][]*repo.Snapshot, error) {
	all, err := c.from.Snapshots(ctx, c.opts.Cluster)
	if err != nil {
		return nil, nil, fmt.Errorf("list the snapshots of %s: %w", c.from.Store(), err)
	}
	want := map[string]bool{}
	for _, id := range c.opts.Snapshots {
		want[id] = true
	}
	snaps := map[uint64][]*repo.Snapshot{}
	var clusters []uint64
	add := func(cl uint64) {
		if !slices.Contains(clusters, cl) {
			clusters = append(clusters, cl)
		}
	}
	for _, s := range all {
		if len(want) > 0 && !want[s.ID] {
			continue
		}
		delete(want, s.ID)
		snaps[s.Cluster] = append(snaps[s.Cluster], s)
		add(s.Cluster)
	}
	for id := range want {
		return nil, nil, fmt.Errorf("no snapshot %s in %s: tidemark list --repo ... shows its snapshots", id, c.from.Store())
	}
	if !c.opts.NoWAL && len(c.opts.Snapshots) == 0 {
		if c.opts.Cluster != 0 {
			add(c.opts.Cluster)
		} else {
			wc, err := c.src.Clusters(ctx)
			if err != nil {
				return nil, nil, fmt.Errorf("list the WAL archive of %s: %w", c.from.Store(), err)
			}
			for _, cl := range wc {
				add(cl)
			}
		}
	}
	slices.Sort(clusters)
	return clusters, snaps, nil
}

// cluster copies one cluster's WAL, then its snapshots, under the leases.
func (c *copier) cluster(ctx context.Context, cl uint64, snaps []*repo.Snapshot) error {
	rl, err := c.from.AcquireLease(ctx, lease.RestoreScope(cl), lease.Options{Command: "copy (source)", Logger: c.log, ReclaimGone: true})
	if err != nil {
		return fmt.Errorf("take the reader lease on %s: %w", c.from.Store(), err)
	}
	defer rl.Release(context.WithoutCancel(ctx))
	wl, err := c.to.AcquireLease(ctx, lease.BackupScope(cl), lease.Options{Exclusive: true, Command: "copy (target)", Logger: c.log, ReclaimGone: true})
	if err != nil {
		return fmt.Errorf("take the writer lease on %s: %w", c.to.Store(), err)
	}
	defer wl.Release(context.WithoutCancel(ctx))

	expired, err := c.dst.Expired(ctx, cl)
	if err != nil {
		return err
	}
	if !c.opts.NoWAL {
		if err := c.wal(ctx, cl, expired); err != nil {
			return err
		}
	}
	if c.opts.NoSnapshots || len(snaps) == 0 {
		return nil
	}
	have, err := c.to.Snapshots(ctx, cl)
	if err != nil {
		return fmt.Errorf("list the snapshots of %s: %w", c.to.Store(), err)
	}
	present := map[string]bool{}
	for _, s := range have {
		present[s.ID] = true
	}
	for _, s := range snaps {
		if present[s.ID] {
			c.res.Present++
			continue
		}
		if segSize := uint32(s.WALSegmentSize); segSize > 0 && expired.Has(pg.TimelineID(s.StartTimeline), pg.LSN(s.StartLSN).Segment(segSize)) {
			// The target's retention removed this stretch on purpose:
			// copying the snapshot back would only undo it.
			c.log.Info("not copied: the target's retention expired its WAL", "snapshot", s.ID)
			c.res.Skipped = append(c.res.Skipped, s.ID)
			continue
		}
		if err := c.snapshot(ctx, s); err != nil {
			return fmt.Errorf("copy snapshot %s: %w", s.ID, err)
		}
		c.res.Copied = append(c.res.Copied, s.ID)
	}
	return nil
}

// snapshot copies the blobs of s the target lacks and commits s there.
func (c *copier) snapshot(ctx context.Context, s *repo.Snapshot) error {
	start := time.Now()
	if err := c.g.Load(ctx, s.Roots); err != nil {
		return err
	}
	w, err := c.to.NewWriter(ctx, "copy "+s.ID)
	if err != nil {
		return err
	}
	defer w.Close(context.WithoutCancel(ctx))
	var need []blob.ID
	var bad error
	var present int64
	c.g.Walk(s.Roots, nil, func(id blob.ID, meta bool, n *refs.Node) {
		if meta && (n == nil || n.Err != nil) && bad == nil {
			bad = fmt.Errorf("metadata blob %s of the source cannot be read: %w", id, nodeErr(n))
		}
		if w.Has(id) {
			present++
			return
		}
		need = append(need, id)
	})
	if bad != nil {
		return fmt.Errorf("%w; run tidemark verify on %s", bad, c.from.Store())
	}
	var blobs, raw atomic.Int64
	for batch := range chunks(need, c.opts.BatchBlobs) {
		kinds := make(map[blob.ID]blob.Kind, len(batch))
		for _, id := range batch {
			loc, err := c.from.Lookup(ctx, id)
			if err != nil {
				return err
			}
			kinds[id] = loc.Kind
		}
		// The source checked each blob's keyed ID when it read it; the
		// target computes it again from the plaintext it stores.
		err := c.from.ReadBlobs(ctx, batch, func(id blob.ID, data []byte) error {
			got, err := w.Add(ctx, kinds[id], data)
			if err != nil {
				return err
			}
			if got != id {
				return &repo.CorruptError{Key: "blob " + id.String(),
					Err: fmt.Errorf("its plaintext has ID %s in %s: the repositories do not agree on blob IDs", got, c.to.Store())}
			}
			blobs.Add(1)
			raw.Add(int64(len(data)))
			return nil
		})
		if err != nil {
			return err
		}
	}
	cp := *s
	cp.Committed = time.Time{}
	key, err := w.Commit(ctx, &cp, func(ctx context.Context) error { return c.checkWAL(ctx, s) })
	if err != nil {
		return err
	}
	st := w.Stats()
	c.res.Blobs += blobs.Load()
	c.res.RawBytes += raw.Load()
	c.res.BlobsPresent += present
	c.res.Packs += st.Packs
	c.res.PackBytes += st.PackBytes
	c.log.Info("snapshot copied", "snapshot", s.ID, "key", key, "blobs_sent", blobs.Load(), "bytes_sent", raw.Load(),
		"blobs_present", present, "packs", st.Packs, "pack_bytes", st.PackBytes, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

func nodeErr(n *refs.Node) error {
	if n == nil {
		return repo.ErrCorrupt
	}
	return n.Err
}

// checkWAL confirms that the target's archive holds the WAL s needs to
// become consistent, as a backup does before it commits.
func (c *copier) checkWAL(ctx context.Context, s *repo.Snapshot) error {
	h, err := c.dst.History(ctx, s.Cluster, pg.TimelineID(s.StopTimeline))
	if err != nil {
		return fmt.Errorf("history of timeline %d in %s: %w", s.StopTimeline, c.to.Store(), err)
	}
	missing, err := c.dst.CheckRange(ctx, s.Cluster, h, pg.LSN(s.StartLSN), pg.LSN(s.StopLSN)+1)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks WAL segment %s that the snapshot needs (copy without --no-wal, or check that wal-push archives to both): %w",
			c.to.Store(), missing[0], ErrWALMissing)
	}
	return nil
}

// ErrWALMissing is matched when the target lacks WAL a snapshot needs.
var ErrWALMissing = errors.New("WAL missing from the target")

func chunks[T any](s []T, n int) iter.Seq[[]T] {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}

// wal copies the WAL files of cluster cl the target lacks, except those
// its retention expired. Both archives are listed in key order and merged,
// so memory does not grow with the archive.
func (c *copier) wal(ctx context.Context, cl uint64, expired walarchive.Ranges) error {
	ci, err := c.src.Cluster(ctx, cl)
	if errors.Is(err, walarchive.ErrNotArchived) {
		return nil
	}
	if err != nil {
		return err
	}
	prefix := walarchive.ClusterPrefix(cl)
	next, stop := iter.Pull2(c.to.Store().List(ctx, prefix, ""))
	defer stop()
	var have string
	haveDone := false
	// advance moves the target's listing to the first key at or after key
	// and reports whether that is key.
	advance := func(key string) (bool, error) {
		for !haveDone && have < key {
			oi, err, ok := next()
			if !ok {
				haveDone = true
				break
			}
			if err != nil {
				return false, fmt.Errorf("list %s in %s: %w", prefix, c.to.Store(), err)
			}
			have = oi.Key
		}
		return have == key, nil
	}

	work := make(chan pg.WALFile)
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var files, bytes atomic.Int64
	for range c.opts.Parallel {
		wg.Go(func() {
			for f := range work {
				n, err := c.walFile(wctx, ci, f)
				if err != nil {
					cancel(err)
					continue
				}
				files.Add(1)
				bytes.Add(n)
			}
		})
	}
	listErr := func() error {
		for oi, err := range c.from.Store().List(wctx, prefix, "") {
			if err != nil {
				return fmt.Errorf("list %s in %s: %w", prefix, c.from.Store(), err)
			}
			_, f, ok := walarchive.ParseKey(oi.Key)
			if !ok {
				continue
			}
			found, err := advance(oi.Key)
			if err != nil {
				return err
			}
			if found {
				c.res.WALPresent++
				continue
			}
			if f.Kind == pg.WALSegment || f.Kind == pg.WALPartialSegment {
				if seg, err := f.SegNo(ci.SegSize); err == nil && expired.Has(f.Timeline, seg) {
					c.res.WALExpired++
					continue
				}
			}
			select {
			case work <- f:
			case <-wctx.Done():
				return nil
			}
		}
		return nil
	}()
	close(work)
	wg.Wait()
	c.res.WALFiles += files.Load()
	c.res.WALBytes += bytes.Load()
	if listErr != nil {
		return listErr
	}
	if err := context.Cause(wctx); err != nil {
		return err
	}
	if files.Load() > 0 {
		c.log.Info("WAL copied", "cluster", cl, "files", files.Load(), "bytes", bytes.Load(), "present", c.res.WALPresent)
	}
	return nil
}

// walFile copies one WAL file: read and checked in the source, archived in
// the target as a push would (create-only; an identical object already
// there is a success, a different one a conflict).
func (c *copier) walFile(ctx context.Context, ci walarchive.ClusterInfo, f pg.WALFile) (int64, error) {
	name := f.Name()
	// Sized for a segment up front: growing a buffer to 16 MiB costs more
	// than the copy's own hashing of it.
	var buf bytes.Buffer
	if f.Kind == pg.WALSegment {
		buf.Grow(int(ci.SegSize))
	}
	if _, err := c.src.Get(ctx, ci.SystemID, name, &buf); err != nil {
		return 0, fmt.Errorf("read %s from %s: %w", name, c.from.Store(), err)
	}
	if _, err := c.dst.Put(ctx, ci, name, buf.Bytes()); err != nil {
		return 0, fmt.Errorf("archive %s in %s: %w", name, c.to.Store(), err)
	}
	return int64(buf.Len()), nil
}
