package gc

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/refs"
)

func randData(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// opts are the options of these tests: the store makes every object look
// two hours old, so a 1-hour grace period never protects anything and the
// protocol alone must.
func opts() Options {
	return Options{Grace: time.Hour, PollEvery: 10 * time.Millisecond}
}

func newFixture(t *testing.T) *repotest.Fixture {
	f := repotest.New(t)
	f.Store.SetAge(2 * time.Hour)
	return f
}

// readAll checks that every blob of every file of the snapshot reads back.
func readAll(t *testing.T, r *repo.Repo, s *repo.Snapshot, files ...repotest.File) {
	t.Helper()
	ctx := context.Background()
	if err := r.ReloadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		for off := 0; off < len(f.Data); off += 1 << 20 {
			chunk := f.Data[off:min(off+1<<20, len(f.Data))]
			got, err := r.ReadBlob(ctx, r.BlobID(blob.KindFile, chunk), nil)
			if err != nil {
				t.Fatalf("snapshot %s file %s: %v", s.ID, f.Name, err)
			}
			if !bytes.Equal(got, chunk) {
				t.Fatalf("snapshot %s file %s: wrong contents", s.ID, f.Name)
			}
		}
	}
}

func packKeys(t *testing.T, f *repotest.Fixture) []string {
	return append(repotest.Keys(t, f.Store, "data/"), repotest.Keys(t, f.Store, "meta/")...)
}

func TestGarbageDeletedLiveKept(t *testing.T) {
	f := newFixture(t)
	live := repotest.File{Name: "a", Data: randData(300 << 10)}
	s := repotest.Commit(t, f.Repo, repotest.Snap{}, live)
	repotest.Garbage(t, f.Open(t), randData(400<<10))
	before := len(packKeys(t, f))

	res, err := Run(context.Background(), f.Open(t), opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.Quarantined.Packs == 0 || res.Deleted.Packs != res.Quarantined.Packs {
		t.Fatalf("quarantined %+v, deleted %+v: with no lease live the sweep runs at once", res.Quarantined, res.Deleted)
	}
	if got := len(packKeys(t, f)); got != before-res.Deleted.Packs {
		t.Fatalf("%d packs left of %d, %d deleted", got, before, res.Deleted.Packs)
	}
	if qs := repotest.Keys(t, f.Store, repo.QuarantinePrefix); len(qs) != 0 {
		t.Fatalf("quarantine records left: %v", qs)
	}
	readAll(t, f.Open(t), s, live)

	// A second run finds nothing to do.
	res, err = Run(context.Background(), f.Open(t), opts())
	if err != nil || res.Quarantined.Packs != 0 || res.Deleted.Packs != 0 {
		t.Fatalf("second run: %+v %v", res, err)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	f := newFixture(t)
	repotest.Commit(t, f.Repo, repotest.Snap{}, repotest.File{Name: "a", Data: randData(100 << 10)})
	repotest.Garbage(t, f.Open(t), randData(200<<10))
	before := repotest.Keys(t, f.Store, "")
	o := opts()
	o.DryRun = true
	res, err := Run(context.Background(), f.Open(t), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Quarantined.Packs == 0 {
		t.Fatalf("dry run found nothing: %+v", res)
	}
	if after := repotest.Keys(t, f.Store, ""); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("dry run changed the store:\nbefore %v\nafter  %v", before, after)
	}
}

// A backup that started before the quarantine deduplicates against garbage
// and commits a snapshot that refers to it: the sweep, which waits for its
// lease, finds the reference and releases the pack.
func TestWriterBeforeQuarantineKeepsWhatItReuses(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	old := randData(200 << 10)
	repotest.Garbage(t, f.Open(t), old)

	// A process that starts now still reads a blob whose only copy is
	// quarantined: a snapshot committed by a backup that was running at
	// the quarantine may refer to it, and the sweep then keeps the pack.
	if _, err := f.Open(t).ReadBlob(ctx, f.Open(t).BlobID(blob.KindFile, old), nil); err != nil {
		t.Fatalf("read a blob only in a quarantined pack: %v", err)
	}

	backup := f.Open(t)
	l, err := backup.AcquireLease(ctx, "backup/7000000000000000001", lease.Options{Exclusive: true, Command: "backup"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := backup.NewWriter(ctx, "backup") // loads the index: the garbage is in it
	if err != nil {
		t.Fatal(err)
	}

	res, err := Run(ctx, f.Open(t), opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.Quarantined.Packs == 0 || res.Deleted.Packs != 0 || res.Pending != 1 || len(res.Waiting) != 1 {
		t.Fatalf("first run: %+v", res)
	}

	// The backup goes on: it finds the garbage blob in its index and does
	// not store it again, then commits.
	file := repotest.File{Name: "reused", Data: old}
	root := repotest.AddTree(t, w, file)
	if st := w.Stats(); st.NewBlobs != 1 { // only the tree
		t.Fatalf("the backup stored %d blobs; it should have reused the garbage one", st.NewBlobs)
	}
	s := repotest.CommitWith(t, w, repotest.Snap{}, root)
	w.Close(ctx)

	// Still running: the sweep waits.
	res, err = Run(ctx, f.Open(t), opts())
	if err != nil || res.Deleted.Packs != 0 || res.Pending != 1 {
		t.Fatalf("run while the backup's lease is live: %+v %v", res, err)
	}
	l.Release(ctx)

	res, err = Run(ctx, f.Open(t), opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.Released.Packs == 0 {
		t.Fatalf("the pack the new snapshot uses was not released: %+v", res)
	}
	readAll(t, f.Open(t), s, file)
	if qs := repotest.Keys(t, f.Store, repo.QuarantinePrefix); len(qs) != 0 {
		t.Fatalf("quarantine records left: %v", qs)
	}
}

// A backup that starts after the quarantine stores its own copy of a blob
// found only in a quarantined pack; the sweep then deletes the old pack and
// the snapshot still reads.
func TestWriterAfterQuarantineStoresOwnCopy(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	old := randData(200 << 10)
	repotest.Garbage(t, f.Open(t), old)

	// Something holds a lease, so the quarantine is not swept at once.
	holder, err := f.Repo.AcquireLease(ctx, "restore/1", lease.Options{Command: "restore"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(ctx, f.Open(t), opts())
	if err != nil || res.Pending != 1 {
		t.Fatalf("first run: %+v %v", res, err)
	}

	// A process that starts now still reads a blob whose only copy is
	// quarantined: a snapshot committed by a backup that was running at
	// the quarantine may refer to it, and the sweep then keeps the pack.
	if _, err := f.Open(t).ReadBlob(ctx, f.Open(t).BlobID(blob.KindFile, old), nil); err != nil {
		t.Fatalf("read a blob only in a quarantined pack: %v", err)
	}

	backup := f.Open(t)
	l, err := backup.AcquireLease(ctx, "backup/7000000000000000001", lease.Options{Exclusive: true, Command: "backup"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := backup.NewWriter(ctx, "backup")
	if err != nil {
		t.Fatal(err)
	}
	file := repotest.File{Name: "again", Data: old}
	root := repotest.AddTree(t, w, file)
	if st := w.Stats(); st.NewBlobs != 2 {
		t.Fatalf("the backup stored %d blobs, want its own copy and the tree", st.NewBlobs)
	}
	// Once its copy is indexed, the process reads that one, not the
	// quarantined one the sweep below deletes.
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	loc, err := backup.Lookup(ctx, backup.BlobID(blob.KindFile, old))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := backup.Quarantines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := repo.QuarantinedPacks(qs)[loc.Pack.ID]; ok {
		t.Fatalf("a writer process reads the quarantined copy in %s", loc.Pack.Key())
	}
	holder.Release(ctx)

	// The backup is still running, but started after the quarantine: the
	// sweep does not wait for it.
	res, err = Run(ctx, f.Open(t), opts())
	if err != nil || res.Deleted.Packs == 0 || res.Released.Packs != 0 {
		t.Fatalf("sweep during the later backup: %+v %v", res, err)
	}
	s := repotest.CommitWith(t, w, repotest.Snap{}, root)
	w.Close(ctx)
	l.Release(ctx)
	readAll(t, f.Open(t), s, file)
}

func TestRepackMostlyDeadPack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	// One writer stores a small live file and a large dead one in the same
	// packs; then the snapshot that used the dead one goes.
	w, err := f.Repo.NewWriter(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	live := repotest.File{Name: "live", Data: randData(20 << 10)}
	dead := repotest.File{Name: "dead", Data: randData(40 << 10)}
	root := repotest.AddTree(t, w, live)
	deadRoot := repotest.AddTree(t, w, dead)
	s := repotest.CommitWith(t, w, repotest.Snap{}, root)
	w.Close(ctx)
	_ = deadRoot

	res, err := Run(ctx, f.Open(t), opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.Repacked.Packs == 0 || res.CopiedBytes == 0 {
		t.Fatalf("nothing repacked: %+v", res)
	}
	if res.Deleted.Packs < res.Repacked.Packs {
		t.Fatalf("repacked packs not deleted in the same run: %+v", res)
	}
	readAll(t, f.Open(t), s, live)
	// And a full index rebuild agrees: the live blob is in a pack that exists.
	r := f.Open(t)
	if _, err := r.RebuildIndex(ctx, true); err != nil {
		t.Fatal(err)
	}
	readAll(t, r, s, live)
}

func TestOrphanPackDeleted(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	live := repotest.File{Name: "a", Data: randData(100 << 10)}
	s := repotest.Commit(t, f.Repo, repotest.Snap{}, live)
	deltas := repotest.Keys(t, f.Store, "index/delta/")
	repotest.Garbage(t, f.Open(t), randData(100<<10))
	// Forget the garbage's index delta: its pack is an orphan now.
	for _, k := range repotest.Keys(t, f.Store, "index/delta/") {
		if !strings.Contains(strings.Join(deltas, ","), k) {
			f.Store.Delete(ctx, k)
		}
	}
	res, err := Run(ctx, f.Open(t), opts())
	if err != nil {
		t.Fatal(err)
	}
	orphans := 0
	for _, c := range res.Candidates {
		if c.Reason == ReasonOrphan && c.Action == "delete" {
			orphans++
		}
	}
	if orphans == 0 {
		t.Fatalf("no orphan deleted: %+v", res.Candidates)
	}
	readAll(t, f.Open(t), s, live)
}

func TestUnreadableSnapshotStopsGC(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	repotest.Commit(t, f.Repo, repotest.Snap{}, repotest.File{Name: "a", Data: randData(10 << 10)})
	repotest.Garbage(t, f.Open(t), randData(100<<10))
	// Lose the meta packs: the tree cannot be read.
	for _, k := range repotest.Keys(t, f.Store, "meta/") {
		f.Store.Delete(ctx, k)
	}
	before := repotest.Keys(t, f.Store, "data/")
	_, err := Run(ctx, f.Open(t), opts())
	var ie *IncompleteError
	if !errors.As(err, &ie) {
		t.Fatalf("gc over an unreadable snapshot: %v", err)
	}
	if after := repotest.Keys(t, f.Store, "data/"); len(after) != len(before) {
		t.Fatalf("gc deleted packs although it could not mark: %d -> %d", len(before), len(after))
	}
}

func TestRunningBackupsUploadsAreNotCandidates(t *testing.T) {
	ctx := context.Background()
	f := repotest.New(t) // objects look as old as they are
	backup := f.Open(t)
	l, err := backup.AcquireLease(ctx, "backup/1", lease.Options{Exclusive: true, Command: "backup"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	repotest.Garbage(t, backup, randData(100<<10)) // uploaded and indexed, not yet committed
	o := opts()
	o.Grace = time.Millisecond
	res, err := Run(ctx, f.Open(t), o)
	if err != nil || res.Quarantined.Packs != 0 {
		t.Fatalf("the running backup's uploads were candidates: %+v %v", res, err)
	}
}

// TestLaterMarkReloadsIndex: the mark before a sweep reads snapshots that
// another process committed after the first mark loaded the index; their
// blobs are only in a newer index (TestGCConcurrent found this).
func TestLaterMarkReloadsIndex(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	repotest.Commit(t, f.Repo, repotest.Snap{}, repotest.File{Name: "a", Data: randData(100 << 10)})
	r := f.Open(t)
	o := opts()
	o.fill()
	g := &run{r: r, o: o, log: o.Logger, res: &Result{}, g: refs.New(r, o.Logger),
		seen: map[string]bool{}, ref: map[blob.ID]struct{}{}}
	if err := g.mark(ctx); err != nil {
		t.Fatal(err)
	}
	repotest.Commit(t, f.Open(t), repotest.Snap{}, repotest.File{Name: "b", Data: randData(100 << 10)})
	if err := g.mark(ctx); err != nil {
		t.Fatalf("second mark: %v", err)
	}
	if g.res.Snapshots != 2 {
		t.Fatalf("marked %d snapshots, want 2", g.res.Snapshots)
	}
}
