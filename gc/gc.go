// Package gc deletes the packs of a tidemark repository that no snapshot
// refers to, and repacks packs that are mostly dead, while backups, WAL
// pushes, restores and verification keep running.
//
// It is mark and sweep in two phases with a quarantine in between; the full
// argument for why no blob a snapshot (committed or in progress) needs is ever
// deleted is in docs/operations.md ("Garbage collection"). In short:
//
//  1. Mark: every blob reachable from every snapshot (package repo/refs).
//  2. Packs uploaded before every running backup started (minus a grace
//     period) whose blobs are all unreferenced, packs in no index, and packs
//     mostly dead become candidates. They are written to a quarantine record
//     (repo: gc/quarantine/<id>), and the leases live at that moment
//     are listed into it. A writer that starts after the record exists never
//     deduplicates against a quarantined pack (repo.NewWriter), so only the
//     writers in that list can come to depend on one.
//  3. Live blobs of mostly dead packs are copied into new packs.
//  4. Sweep, once every lease in the record has ended (in this run after
//     waiting, or in a later run): mark again, and delete a quarantined pack
//     unless a blob in it is referenced and has no other copy; the index is
//     rewritten without the deleted packs first, then they are deleted.
//     Packs kept are released.
//
// WAL is not garbage collected here: the archive's segments are separate
// objects that retention (package retention) removes.
package gc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/repo/refs"
	"github.com/tidemarkdb/tidemark/storage"
)

// waitScopes are the lease scopes whose holders may depend on a pack
// without a snapshot saying so yet: backups (their index was loaded when they
// started, and they commit later), and readers that loaded the index before
// a rewrite (restores, drills and verify). A quarantine is swept only after
// every lease of these scopes that was live when it was written has ended.
var waitScopes = []string{lease.KindBackup, lease.KindRestore, lease.ScopeVerify}

// writerScopes are the scopes of leases whose holders upload packs: packs
// younger than the oldest of them (minus the grace period) are never
// candidates, so a backup's uploads wait for its commit.
var writerScopes = []string{lease.KindBackup}

// Repository is what garbage collection uses of the repository.
// *repo.Repo has it.
type Repository interface {
	refs.Reader
	Store() storage.Store
	AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error)
	Leases(ctx context.Context, scope string) ([]lease.Info, error)
	Snapshots(ctx context.Context, cluster uint64) ([]*repo.Snapshot, error)
	IndexFiles(ctx context.Context) ([]*index.File, error)
	ReloadIndex(ctx context.Context) error
	Quarantines(ctx context.Context) ([]*repo.Quarantine, error)
	CreateQuarantine(ctx context.Context, q *repo.Quarantine) error
	UpdateQuarantine(ctx context.Context, q *repo.Quarantine) error
	DeleteQuarantine(ctx context.Context, id string) error
	CompactIndexWithout(ctx context.Context, drop map[pack.ID]struct{}) (repo.CompactStats, error)
	ReadPack(ctx context.Context, p index.Pack, fn func(e pack.Entry, plain []byte) error) ([]pack.Entry, error)
	NewWriter(ctx context.Context, name string) (*repo.Writer, error)
	// LockedUntil is when the repository's object lock surely no longer
	// holds an object written at mod (zero: not locked).
	LockedUntil(key string, mod time.Time) time.Time
}

// Options configure a run. Zero values take the defaults.
type Options struct {
	// Grace: a pack is a candidate only when it was uploaded this long
	// before the run and before the oldest running backup started. It
	// also absorbs clock differences between hosts. Default 1 hour.
	Grace time.Duration
	// RepackDead: a pack whose blobs are at least this fraction of dead
	// bytes (but not all dead) is repacked. Default 0.5; 1 or more turns
	// repacking off.
	RepackDead float64
	// Wait: how long this run waits for the leases its new quarantine must
	// outlive, so that it can sweep it at once. 0 leaves it for the next
	// run unless no such lease exists.
	Wait time.Duration
	// PollEvery is how often leases are checked while waiting. Default 2s.
	PollEvery time.Duration
	// DryRun reports what a run would quarantine and delete, and changes
	// nothing.
	DryRun bool
	// Progress, when set, counts the snapshots marked (phase "mark"), the
	// packs repacked and the packs swept.
	Progress *progress.Counter
	Logger   *slog.Logger
	Now      func() time.Time
}

func (o *Options) fill() {
	if o.Grace == 0 {
		o.Grace = time.Hour
	}
	if o.RepackDead == 0 {
		o.RepackDead = 0.5
	}
	if o.PollEvery <= 0 {
		o.PollEvery = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Result says what a run did.
type Result struct {
	Snapshots   int   `json:"snapshots"`   // snapshots marked
	MetaBlobs   int   `json:"meta_blobs"`  // metadata blobs read to mark
	Referenced  int   `json:"referenced"`  // distinct blobs referenced
	Packs       int   `json:"packs"`       // pack objects found
	PackBytes   int64 `json:"pack_bytes"`  // their bytes
	IndexBlobs  int   `json:"index_blobs"` // blob entries in the index
	Quarantined Count `json:"quarantined"` // packs put in quarantine by this run
	Deleted     Count `json:"deleted"`     // packs deleted
	Released    Count `json:"released"`    // quarantined packs kept because a snapshot needs them
	Repacked    Count `json:"repacked"`    // mostly dead packs whose live blobs were copied
	// Locked are packs that would be candidates but that the repository's
	// object lock still holds; the first run after LockedUntil (the
	// earliest of their locks) takes them.
	Locked      Count     `json:"locked"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
	CopiedBytes int64     `json:"copied_bytes"` // plaintext bytes of blobs copied by repacking
	// Pending are quarantine records left for a later run, and Waiting the
	// leases they wait for.
	Pending int      `json:"pending"`
	Waiting []string `json:"waiting"`
	// Candidates describe the packs quarantined (or, in a dry run, that
	// would be) and deleted, for --dry-run and logs.
	Candidates []Candidate `json:"candidates"`
}

// Count is a number of packs and their bytes.
type Count struct {
	Packs int   `json:"packs"`
	Bytes int64 `json:"bytes"`
}

func (c *Count) add(n int64) { c.Packs++; c.Bytes += n }

// Candidate is one pack this run acted on.
type Candidate struct {
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	Reason string `json:"reason"` // garbage, orphan, repack
	Action string `json:"action"` // quarantine, delete, release
}

// Reasons a pack is a candidate.
const (
	ReasonGarbage = "garbage" // no blob in it is referenced
	ReasonOrphan  = "orphan"  // in no index (an upload whose run never indexed it)
	ReasonRepack  = "repack"  // mostly dead; its live blobs are copied first
)

// IncompleteError says that the mark could not see everything: a snapshot's
// metadata is unreadable. Nothing is deleted then.
type IncompleteError struct {
	Snapshot string
	Blob     blob.ID
	Err      error
}

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("snapshot %s: metadata blob %s cannot be read (%v): garbage collection cannot tell what it refers to and deletes nothing; run tidemark verify", e.Snapshot, e.Blob, e.Err)
}

func (e *IncompleteError) Unwrap() error { return e.Err }

// run is the state of one Run.
type run struct {
	r     Repository
	o     Options
	log   *slog.Logger
	res   *Result
	g     *refs.Graph
	seen  map[string]bool // snapshot keys marked
	marks int             // mark calls so far
	ref   map[blob.ID]struct{}

	packs   map[pack.ID]*packInfo // indexed packs
	objects map[pack.ID]storage.ObjectInfo
	copies  map[blob.ID]int // how many existing packs hold each blob
}

type packInfo struct {
	p     index.Pack
	blobs []index.Entry
}

// Run collects garbage once. See the package comment for the protocol.
func Run(ctx context.Context, r Repository, opts Options) (*Result, error) {
	opts.fill()
	g := &run{r: r, o: opts, log: opts.Logger, res: &Result{}, g: refs.New(r, opts.Logger),
		seen: map[string]bool{}, ref: map[blob.ID]struct{}{}}
	if !opts.DryRun {
		l, err := r.AcquireLease(ctx, lease.ScopeGC, lease.Options{Exclusive: true, Command: "gc", Logger: opts.Logger})
		if err != nil {
			return nil, fmt.Errorf("take the gc lease: %w", err)
		}
		defer l.Release(context.WithoutCancel(ctx))
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-l.Lost():
				cancel(fmt.Errorf("lost the gc lease: %w", l.Err()))
			case <-ctx.Done():
			}
		}()
	}
	err := g.run(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w (%v)", cause, err)
	}
	return g.res, err
}

func (g *run) run(ctx context.Context) error {
	// Which quarantines are due: decided before the snapshots are listed,
	// so that whatever their waited-for writers committed is in the list.
	qs, err := g.r.Quarantines(ctx)
	if err != nil {
		return err
	}
	live, err := g.liveLeases(ctx, waitScopes)
	if err != nil {
		return err
	}
	var due, pending []*repo.Quarantine
	for _, q := range qs {
		if w := g.waitsFor(q, live); len(w) > 0 {
			pending = append(pending, q)
			g.res.Waiting = append(g.res.Waiting, w...)
			continue
		}
		due = append(due, q)
	}
	cutoff, err := g.cutoff(ctx)
	if err != nil {
		return err
	}
	if err := g.mark(ctx); err != nil {
		return err
	}
	if err := g.loadPacks(ctx); err != nil {
		return err
	}

	// Sweep the quarantines that are due.
	if len(due) > 0 {
		if err := g.sweep(ctx, due); err != nil {
			return err
		}
	}

	// New candidates.
	held := repo.QuarantinedPacks(pending)
	cands := g.candidates(cutoff, held)
	if len(cands) == 0 {
		g.res.Pending = len(pending)
		return nil
	}
	for _, c := range cands {
		g.res.Quarantined.add(c.Size)
		g.res.Candidates = append(g.res.Candidates, Candidate{Key: c.Key, Size: c.Size, Reason: c.Reason, Action: "quarantine"})
	}
	if g.o.DryRun {
		return nil
	}
	q := &repo.Quarantine{Packs: cands}
	if err := g.r.CreateQuarantine(ctx, q); err != nil {
		return err
	}
	// Repack before the sweep can run, so that the copies exist when the
	// sweep looks for other copies of live blobs.
	if err := g.repack(ctx, q); err != nil {
		return err
	}
	// The leases live now are the only holders that can have loaded an
	// index before the record existed, or before the repacked copies were
	// indexed (such a reader may know a live blob only by its location in
	// a quarantined pack); everyone who starts later reads the copies.
	live, err = g.liveLeases(ctx, waitScopes)
	if err != nil {
		return err
	}
	for k := range live {
		q.Leases = append(q.Leases, k)
	}
	slices.Sort(q.Leases)
	q.LeasesListed = true
	if err := g.r.UpdateQuarantine(ctx, q); err != nil {
		return err
	}
	g.log.Info("gc: packs quarantined", "record", repo.QuarantineKey(q.ID), "packs", len(cands), "waits_for", len(q.Leases))

	if err := g.waitLeases(ctx, q); err != nil {
		return err
	}
	live, err = g.liveLeases(ctx, waitScopes)
	if err != nil {
		return err
	}
	if w := g.waitsFor(q, live); len(w) > 0 {
		g.res.Pending = len(pending) + 1
		g.res.Waiting = append(g.res.Waiting, w...)
		g.log.Info("gc: quarantine left for a later run: leases still live", "record", repo.QuarantineKey(q.ID), "leases", w)
		return nil
	}
	// Everyone who could have depended on the candidates is done: mark
	// what was committed meanwhile, then sweep.
	if err := g.mark(ctx); err != nil {
		return err
	}
	if err := g.loadPacks(ctx); err != nil {
		return err
	}
	if err := g.sweep(ctx, []*repo.Quarantine{q}); err != nil {
		return err
	}
	g.res.Pending = len(pending)
	return nil
}

// liveLeases returns the live leases of scopes by key.
func (g *run) liveLeases(ctx context.Context, scopes []string) (map[string]lease.Info, error) {
	now := g.o.Now()
	out := map[string]lease.Info{}
	for _, s := range scopes {
		ls, err := g.r.Leases(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("list %s leases: %w", s, err)
		}
		for _, l := range ls {
			if !l.Expired(now) {
				out[l.Key()] = l
			}
		}
	}
	return out, nil
}

// waitsFor returns the live leases a quarantine must outlive. A record
// whose lease list was never written waits for every live lease that may
// have started before it (by the holder's clock, give or take Grace).
func (g *run) waitsFor(q *repo.Quarantine, live map[string]lease.Info) []string {
	var out []string
	if q.LeasesListed {
		for _, k := range q.Leases {
			if _, ok := live[k]; ok {
				out = append(out, k)
			}
		}
		return out
	}
	for k, l := range live {
		if !l.Started.After(q.Created.Add(g.o.Grace)) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// cutoff is the newest upload time a candidate may have: Grace before now
// and before the oldest running backup started (its uploads are referenced
// only once it commits).
func (g *run) cutoff(ctx context.Context) (time.Time, error) {
	t := g.o.Now()
	live, err := g.liveLeases(ctx, writerScopes)
	if err != nil {
		return t, err
	}
	for _, l := range live {
		if l.Started.Before(t) {
			t = l.Started
		}
	}
	return t.Add(-g.o.Grace), nil
}

// mark adds every blob reachable from every snapshot not yet marked.
func (g *run) mark(ctx context.Context) error {
	snaps, err := g.r.Snapshots(ctx, 0)
	if err != nil {
		return fmt.Errorf("list snapshots to mark: %w", err)
	}
	var fresh []*repo.Snapshot
	var roots []blob.ID
	for _, s := range snaps {
		k := repo.SnapshotKey(s.Cluster, s.ID)
		if g.seen[k] {
			continue
		}
		g.seen[k] = true
		fresh = append(fresh, s)
		roots = append(roots, s.Roots...)
	}
	g.res.Snapshots += len(fresh)
	g.marks++
	if g.marks > 1 && len(fresh) > 0 {
		// A later mark sees snapshots committed since the index was
		// loaded for the first: their blobs are only in a newer index.
		if err := g.r.ReloadIndex(ctx); err != nil {
			return fmt.Errorf("mark: reload the index: %w", err)
		}
	}
	g.o.Progress.Phase("mark: read metadata", 0, "")
	if err := g.g.Load(ctx, roots); err != nil {
		return fmt.Errorf("mark: %w", err)
	}
	g.o.Progress.Phase("mark", int64(len(fresh)), "snapshots")
	for _, s := range fresh {
		g.o.Progress.Add(1)
		var bad *IncompleteError
		// g.ref doubles as the walk's visited set: what an earlier snapshot
		// reached is not walked again.
		g.g.Walk(s.Roots, g.ref, func(id blob.ID, meta bool, n *refs.Node) {
			if meta && bad == nil && (n == nil || n.Err != nil) {
				bad = &IncompleteError{Snapshot: repo.SnapshotKey(s.Cluster, s.ID), Blob: id, Err: errors.New("not read")}
				if n != nil {
					bad.Err = n.Err
				}
			}
		})
		if bad != nil {
			return bad
		}
	}
	g.res.MetaBlobs = g.g.Len()
	g.res.Referenced = len(g.ref)
	return nil
}

// loadPacks reads the index (every location) and lists the pack objects.
func (g *run) loadPacks(ctx context.Context) error {
	files, err := g.r.IndexFiles(ctx)
	if err != nil {
		return err
	}
	g.packs = map[pack.ID]*packInfo{}
	g.res.IndexBlobs = 0
	for _, f := range files {
		infos := make([]*packInfo, len(f.Packs))
		for i, p := range f.Packs {
			pi := g.packs[p.ID]
			if pi == nil {
				pi = &packInfo{p: p}
				g.packs[p.ID] = pi
			} else {
				pi = nil // the same pack listed twice: count its blobs once
			}
			infos[i] = pi
		}
		for _, e := range f.Blobs {
			if pi := infos[e.Pack]; pi != nil {
				pi.blobs = append(pi.blobs, e)
			}
		}
		g.res.IndexBlobs += len(f.Blobs)
	}
	g.objects = map[pack.ID]storage.ObjectInfo{}
	g.res.Packs, g.res.PackBytes = 0, 0
	st := g.r.Store()
	for _, class := range []blob.Class{blob.ClassData, blob.ClassMeta} {
		prefix := class.Prefix() + "/"
		for oi, err := range st.List(ctx, prefix, "") {
			if err != nil {
				return fmt.Errorf("list %s: %w", prefix, err)
			}
			c, id, perr := pack.ParseKey(oi.Key)
			if perr != nil || c != class {
				continue
			}
			g.objects[id] = oi
			g.res.Packs++
			g.res.PackBytes += oi.Size
		}
	}
	g.copies = map[blob.ID]int{}
	for id, pi := range g.packs {
		if _, ok := g.objects[id]; !ok {
			continue
		}
		for _, e := range pi.blobs {
			g.copies[e.ID]++
		}
	}
	return nil
}

// candidates returns the packs to quarantine: uploaded before cutoff, not
// held by a pending quarantine, and garbage, orphans or mostly dead.
func (g *run) candidates(cutoff time.Time, held map[pack.ID]struct{}) []repo.QuarantinedPack {
	var out []repo.QuarantinedPack
	now := g.o.Now()
	for id, oi := range g.objects {
		if _, ok := held[id]; ok || !oi.ModTime.Before(cutoff) {
			continue
		}
		var c repo.QuarantinedPack
		pi := g.packs[id]
		if pi == nil {
			c = repo.QuarantinedPack{Key: oi.Key, Size: oi.Size, Reason: ReasonOrphan}
		} else if c = g.judge(oi, pi); c.Key == "" {
			continue
		}
		// A pack the object lock still holds is not a candidate: it could
		// not be deleted, and a repack would only store a second copy of
		// its live blobs now. It is judged again by a later run.
		if u := g.r.LockedUntil(oi.Key, oi.ModTime); !u.IsZero() && now.Before(u) {
			g.res.Locked.add(oi.Size)
			if g.res.LockedUntil.IsZero() || u.Before(g.res.LockedUntil) {
				g.res.LockedUntil = u
			}
			continue
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b repo.QuarantinedPack) int { return strings.Compare(a.Key, b.Key) })
	if g.res.Locked.Packs > 0 {
		g.log.Info("gc: packs no longer needed are still under the object lock; a later run takes them",
			"packs", g.res.Locked.Packs, "bytes", g.res.Locked.Bytes, "first_release", g.res.LockedUntil)
	}
	return out
}

// judge returns pi as a candidate (garbage or mostly dead), or a zero
// QuarantinedPack.
func (g *run) judge(oi storage.ObjectInfo, pi *packInfo) repo.QuarantinedPack {
	var live, total int64
	for _, e := range pi.blobs {
		total += int64(e.Length)
		if _, ok := g.ref[e.ID]; ok {
			live += int64(e.Length)
		}
	}
	switch {
	case live == 0:
		return repo.QuarantinedPack{Key: oi.Key, Size: oi.Size, Reason: ReasonGarbage}
	case g.o.RepackDead < 1 && float64(total-live) >= g.o.RepackDead*float64(total):
		return repo.QuarantinedPack{Key: oi.Key, Size: oi.Size, Reason: ReasonRepack}
	}
	return repo.QuarantinedPack{}
}

// sweep decides, for the packs of due quarantines, which go and which are
// released, then rewrites the index without those that go, deletes them,
// and deletes the records.
func (g *run) sweep(ctx context.Context, due []*repo.Quarantine) error {
	drop := map[pack.ID]struct{}{}
	reason := map[pack.ID]string{}
	inDrop := map[blob.ID]int{} // packs in drop holding each blob
	for _, q := range due {
		for _, p := range q.Packs {
			_, id, err := pack.ParseKey(p.Key)
			if err != nil {
				continue
			}
			if _, ok := g.objects[id]; !ok {
				continue // already gone
			}
			if _, ok := drop[id]; ok {
				continue
			}
			drop[id], reason[id] = struct{}{}, p.Reason
			if pi := g.packs[id]; pi != nil {
				for _, e := range pi.blobs {
					inDrop[e.ID]++
				}
			}
		}
	}
	// A pack may go only if every referenced blob in it has a copy in a
	// pack that stays. Keeping one pack can make another's blob the last
	// copy, so repeat until nothing changes. An orphan nobody indexed has
	// no blob anything can refer to.
	for changed := true; changed; {
		changed = false
		for id := range drop {
			pi := g.packs[id]
			if pi == nil {
				continue
			}
			for _, e := range pi.blobs {
				if _, ok := g.ref[e.ID]; !ok || g.copies[e.ID]-inDrop[e.ID] > 0 {
					continue
				}
				delete(drop, id)
				for _, e := range pi.blobs {
					inDrop[e.ID]--
				}
				changed = true
				oi := g.objects[id]
				g.res.Released.add(oi.Size)
				g.res.Candidates = append(g.res.Candidates, Candidate{Key: oi.Key, Size: oi.Size, Reason: reason[id], Action: "release"})
				g.log.Info("gc: a quarantined pack holds the only copy of a referenced blob; released", "pack", oi.Key, "blob", e.ID)
				break
			}
		}
	}
	if g.o.DryRun {
		for id := range drop {
			oi := g.objects[id]
			g.res.Deleted.add(oi.Size)
			g.res.Candidates = append(g.res.Candidates, Candidate{Key: oi.Key, Size: oi.Size, Reason: reason[id], Action: "delete"})
		}
		return nil
	}
	if len(drop) > 0 {
		if err := g.rewriteIndex(ctx, drop); err != nil {
			return err
		}
		// The index no longer names them; a crash from here on leaves
		// orphans that a later run quarantines and deletes.
		var keys []string
		for id := range drop {
			keys = append(keys, g.objects[id].Key)
		}
		slices.Sort(keys)
		for i := 0; i < len(keys); i += 1000 {
			batch := keys[i:min(i+1000, len(keys))]
			if err := g.r.Store().Delete(ctx, batch...); repo.IsLocked(err) {
				// Planned around the lock, so only a clock far off gets
				// here: the packs are out of the index, and a later run
				// deletes them as orphans.
				g.log.Warn("gc: the store refused to delete packs still under the object lock; a later run deletes them", "err", err)
			} else if err != nil {
				return fmt.Errorf("delete %d packs (first %s): %w", len(batch), batch[0], err)
			}
		}
		for id := range drop {
			oi := g.objects[id]
			g.res.Deleted.add(oi.Size)
			g.res.Candidates = append(g.res.Candidates, Candidate{Key: oi.Key, Size: oi.Size, Reason: reason[id], Action: "delete"})
			delete(g.objects, id)
			if pi := g.packs[id]; pi != nil {
				for _, e := range pi.blobs {
					g.copies[e.ID]--
				}
			}
		}
		g.log.Info("gc: packs deleted", "packs", len(keys))
	}
	for _, q := range due {
		if err := g.r.DeleteQuarantine(ctx, q.ID); err != nil {
			return err
		}
	}
	return nil
}

// rewriteIndex writes an index generation without drop, waiting a while
// for a compaction or repair that holds the index lease.
func (g *run) rewriteIndex(ctx context.Context, drop map[pack.ID]struct{}) error {
	deadline := g.o.Now().Add(5 * time.Minute)
	for {
		_, err := g.r.CompactIndexWithout(ctx, drop)
		var le *repo.LockedError
		if err == nil || !errors.As(err, &le) || g.o.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("rewrite the index without %d packs: %w", len(drop), err)
			}
			return nil
		}
		g.log.Info("gc: index lease held; waiting", "holder", le.Holder.String())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(g.o.PollEvery):
		}
	}
}

// repack copies the referenced blobs of q's mostly dead packs into new
// packs. The writer starts after q exists, so it does not deduplicate
// against them and stores fresh copies.
func (g *run) repack(ctx context.Context, q *repo.Quarantine) error {
	var todo []*packInfo
	for _, p := range q.Packs {
		if p.Reason != ReasonRepack {
			continue
		}
		_, id, err := pack.ParseKey(p.Key)
		if err != nil || g.packs[id] == nil {
			continue
		}
		todo = append(todo, g.packs[id])
	}
	if len(todo) == 0 {
		return nil
	}
	slices.SortFunc(todo, func(a, b *packInfo) int { return cmp.Compare(a.p.Key(), b.p.Key()) })
	w, err := g.r.NewWriter(ctx, "gc repack")
	if err != nil {
		return err
	}
	g.o.Progress.Phase("repack", int64(len(todo)), "packs")
	for _, pi := range todo {
		g.o.Progress.Add(1)
		_, err := g.r.ReadPack(ctx, pi.p, func(e pack.Entry, plain []byte) error {
			if _, ok := g.ref[e.ID]; !ok {
				return nil
			}
			id, err := w.Add(ctx, e.Kind, plain)
			if err != nil {
				return err
			}
			if id != e.ID && !id.IsZero() {
				return fmt.Errorf("repack %s: blob %s stored as %s", pi.p.Key(), e.ID, id)
			}
			g.res.CopiedBytes += int64(len(plain))
			return nil
		})
		if err != nil {
			w.Abort()
			return fmt.Errorf("repack %s: %w", pi.p.Key(), err)
		}
		g.res.Repacked.add(pi.p.CipherSize())
	}
	if err := w.Close(ctx); err != nil {
		return fmt.Errorf("repack: %w", err)
	}
	return nil
}

// waitLeases waits up to Options.Wait for the leases q lists to end.
func (g *run) waitLeases(ctx context.Context, q *repo.Quarantine) error {
	if g.o.Wait <= 0 || len(q.Leases) == 0 {
		return nil
	}
	deadline := g.o.Now().Add(g.o.Wait)
	for {
		live, err := g.liveLeases(ctx, waitScopes)
		if err != nil {
			return err
		}
		w := g.waitsFor(q, live)
		if len(w) == 0 || g.o.Now().After(deadline) {
			return nil
		}
		g.log.Info("gc: waiting for leases before sweeping", "leases", w)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(g.o.PollEvery):
		}
	}
}
