package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

const testCluster = 7312345678901234567

func testSnapshot(roots ...blob.ID) *Snapshot {
	return &Snapshot{Cluster: testCluster, PGVersion: 150004, BlockSize: 8192, WALSegmentSize: 16 << 20,
		DataChecksums: true, Type: SnapshotFull, StartLSN: 0x3000028, StopLSN: 0x3000100,
		StartTimeline: 1, StopTimeline: 1, StartTime: time.Now().UTC(), StopTime: time.Now().UTC(),
		BackupLabel: []byte("START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n"),
		Roots:       roots, ToolVersion: "test"}
}

func TestCommitOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		f := initRepo(t, newStore(t))
		w, err := f.repo.NewWriter(ctx, "backup")
		if err != nil {
			t.Fatal(err)
		}
		data, _ := w.Add(ctx, blob.KindSlot, randBytes(100_000))
		root, _ := w.Add(ctx, blob.KindTree, []byte(`{"root":"`+data.String()+`"}`))

		// A root that is not stored anywhere is refused, and nothing is written.
		if _, err := w.Commit(ctx, testSnapshot(root, blob.ID{9}), nil); !errors.Is(err, ErrNotDurable) {
			t.Fatalf("commit with a missing root: %v", err)
		}
		// A failing pre-commit check (the WAL is not there) stops the commit.
		walMissing := errors.New("WAL segment 000000010000000000000003 is not archived")
		if _, err := w.Commit(ctx, testSnapshot(root), func(context.Context) error { return walMissing }); !errors.Is(err, walMissing) {
			t.Fatalf("commit with a failing pre-commit: %v", err)
		}
		if n := len(keysUnder(t, f.store, SnapshotPrefix)); n != 0 {
			t.Fatalf("%d snapshots after failed commits", n)
		}
		// The pre-commit check runs after the packs and the index delta are
		// durable: it sees the root in a freshly opened repository.
		var checked bool
		key, err := w.Commit(ctx, testSnapshot(root), func(ctx context.Context) error {
			r2 := f.reopen(t, Options{})
			ok, err := r2.Has(ctx, root)
			checked = ok
			return err
		})
		if err != nil || !checked {
			t.Fatalf("commit: %v (root visible before snapshot: %v)", err, checked)
		}
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(ctx, testSnapshot(root), nil); !errors.Is(err, ErrWriterClosed) {
			t.Fatalf("second commit on a writer: %v", err)
		}

		r2 := f.reopen(t, Options{})
		snaps, err := r2.Snapshots(ctx, testCluster)
		if err != nil || len(snaps) != 1 || SnapshotKey(snaps[0].Cluster, snaps[0].ID) != key {
			t.Fatalf("snapshots: %v %v", snaps, err)
		}
		s := snaps[0]
		if s.Roots[0] != root || s.StartLSN != 0x3000028 || !bytes.HasPrefix(s.BackupLabel, []byte("START WAL")) ||
			s.Committed.IsZero() || s.Cluster != testCluster {
			t.Fatalf("snapshot read back: %+v", s)
		}
		got, err := r2.LoadSnapshot(ctx, testCluster, s.ID)
		if err != nil || got.ID != s.ID {
			t.Fatal(err)
		}

		// Create-only: a second snapshot with the same id is refused.
		w2, _ := r2.NewWriter(ctx, "again")
		dup := testSnapshot(root)
		dup.ID = s.ID
		if _, err := w2.Commit(ctx, dup, nil); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("overwriting a snapshot: %v", err)
		}
		w2.Close(ctx)
	})
}

func TestSnapshotsOrderedByRecordedTime(t *testing.T) {
	f := initRepo(t, mem.New())
	w, _ := f.repo.NewWriter(ctx, "x")
	root, _ := w.Add(ctx, blob.KindTree, []byte("root"))
	w.Close(ctx)
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	// Ids sort opposite to the recorded times.
	for i, id := range []string{"c", "b", "a"} {
		w, _ := f.repo.NewWriter(ctx, "x")
		s := testSnapshot(root)
		s.ID = id
		s.StopTime = base.Add(time.Duration(i) * time.Hour)
		if _, err := w.Commit(ctx, s, nil); err != nil {
			t.Fatal(err)
		}
		w.Close(ctx)
	}
	other := testSnapshot(root)
	other.Cluster = 42
	w, _ = f.repo.NewWriter(ctx, "x")
	if _, err := w.Commit(ctx, other, nil); err != nil {
		t.Fatal(err)
	}
	w.Close(ctx)
	snaps, err := f.repo.Snapshots(ctx, testCluster)
	if err != nil || len(snaps) != 3 || snaps[0].ID != "c" || snaps[2].ID != "a" {
		t.Fatalf("order: %v", err)
	}
	if all, _ := f.repo.Snapshots(ctx, 0); len(all) != 4 {
		t.Fatalf("all clusters: %d", len(all))
	}
}

func TestIndexDeltasAndCompaction(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		f := initRepo(t, newStore(t))
		all := make(map[blob.ID][]byte)
		for run := range 4 {
			var list [][]byte
			for i := range 20 {
				list = append(list, compressible(20_000, byte(run*20+i)))
			}
			for id, d := range writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindPatch: list}) {
				all[id] = d
			}
		}
		deltas := keysUnder(t, f.store, deltaPrefix)
		if len(deltas) < 4 {
			t.Fatalf("%d deltas after 4 runs", len(deltas))
		}
		check := func(r *Repo) {
			t.Helper()
			for id, d := range all {
				got, err := r.ReadBlob(ctx, id, nil)
				if err != nil || !bytes.Equal(got, d) {
					t.Fatalf("blob %s: %v", id, err)
				}
			}
		}
		st, err := f.repo.CompactIndex(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Generation != 1 || st.Merged != len(deltas) || st.Blobs != len(all) {
			t.Fatalf("compaction: %+v", st)
		}
		// The merged deltas stay one round (for readers that chose the
		// previous state), covered by the generation.
		if n := len(keysUnder(t, f.store, deltaPrefix)); n != len(deltas) {
			t.Fatalf("%d deltas after compaction, want %d kept for a round", n, len(deltas))
		}
		check(f.reopen(t, Options{}))

		// New deltas on top of a generation, then a second compaction
		// removes the first generation.
		more := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {randBytes(3000)}})
		for id, d := range more {
			all[id] = d
		}
		check(f.reopen(t, Options{}))
		st, err = f.repo.CompactIndex(ctx)
		if err != nil || st.Generation != 2 || st.Deleted != len(deltas) {
			t.Fatalf("second compaction: %+v %v", st, err)
		}
		check(f.reopen(t, Options{}))
		st, err = f.repo.CompactIndex(ctx)
		if err != nil || st.Generation != 3 {
			t.Fatalf("third compaction: %+v %v", st, err)
		}
		if n := len(keysUnder(t, f.store, deltaPrefix)); n != 0 {
			t.Fatalf("%d deltas left two compactions later", n)
		}
		for _, k := range keysUnder(t, f.store, genPrefix) {
			if seq, _, _ := parseGenKey(k); seq < 2 {
				t.Fatalf("superseded object %s left", k)
			}
		}
		check(f.reopen(t, Options{}))
	})
}

// TestReadersDuringCompaction loads the index over and over while writers
// add deltas and compactions replace them: every load sees every blob that
// was durable before it started.
func TestReadersDuringCompaction(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	var mu sync.Mutex
	var durable []blob.ID
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var writes atomic.Int64
	wg.Add(2)
	go func() { // writer
		defer wg.Done()
		for i := 0; ctx.Err() == nil && i < 40; i++ {
			ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {compressible(5000, byte(i)), randBytes(100)}})
			mu.Lock()
			for id := range ids {
				durable = append(durable, id)
			}
			mu.Unlock()
			writes.Add(1)
		}
	}()
	go func() { // compactor
		defer wg.Done()
		for ctx.Err() == nil && writes.Load() < 40 {
			if _, err := f.repo.CompactIndex(ctx); err != nil {
				var le *LockedError
				if !errors.As(err, &le) && ctx.Err() == nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	reader := f.reopen(t, Options{})
	for loads := 0; writes.Load() < 40 && !t.Failed(); loads++ {
		mu.Lock()
		want := append([]blob.ID(nil), durable...)
		mu.Unlock()
		if err := reader.ReloadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		for _, id := range want {
			if ok, _ := reader.Has(ctx, id); !ok {
				t.Fatalf("load %d: durable blob %s missing", loads, id)
			}
		}
	}
	cancel()
	wg.Wait()
}

func TestRepairIndexAfterKill(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore func(t *testing.T) storage.Store) {
		store := newStore(t)
		f := initRepo(t, store)
		kept := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {randBytes(1000)}})

		// A run whose packs are uploaded but whose index delta is never
		// written, as after a kill -9 between the two.
		r := f.reopen(t, Options{IndexEveryPacks: 1 << 20, IndexEvery: time.Hour})
		w, err := r.NewWriter(ctx, "killed")
		if err != nil {
			t.Fatal(err)
		}
		lost := make(map[blob.ID][]byte)
		for i := range 40 {
			d := randBytes(30_000 + i)
			id, err := w.Add(ctx, blob.KindSlot, d)
			if err != nil {
				t.Fatal(err)
			}
			lost[id] = d
		}
		meta, _ := w.Add(ctx, blob.KindTree, []byte("tree"))
		lost[meta] = []byte("tree")
		// Let the full packs upload, then die without an index.
		waitUploads(t, w)
		w.Abort()
		orphans := len(keysUnder(t, store, "data/")) - 1
		if orphans < 2 {
			t.Fatalf("%d orphan packs", orphans)
		}

		// The repository still opens and reads what was committed.
		r2 := f.reopen(t, Options{})
		for id := range kept {
			if _, err := r2.ReadBlob(ctx, id, nil); err != nil {
				t.Fatal(err)
			}
		}
		found := 0
		for id := range lost {
			if ok, _ := r2.Has(ctx, id); ok {
				found++
			}
		}
		if found != 0 {
			t.Fatalf("%d blobs of the killed run indexed before repair", found)
		}
		st, err := r2.RebuildIndex(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if st.Indexed != orphans || len(st.Unreadable) != 0 {
			t.Fatalf("repair: %+v, want %d orphan packs indexed", st, orphans)
		}
		r3 := f.reopen(t, Options{})
		recovered := 0
		for id, d := range lost {
			got, err := r3.ReadBlob(ctx, id, nil)
			if errors.Is(err, ErrBlobNotFound) {
				continue // in the open pack that was never uploaded
			}
			if err != nil || !bytes.Equal(got, d) {
				t.Fatalf("blob %s after repair: %v", id, err)
			}
			recovered++
		}
		if recovered < len(lost)/2 {
			t.Fatalf("recovered %d of %d blobs", recovered, len(lost))
		}
		// The next run reuses what the killed run uploaded.
		w2, _ := r3.NewWriter(ctx, "resume")
		for id, d := range lost {
			if ok, _ := r3.Has(ctx, id); ok {
				w2.Add(ctx, blob.KindSlot, d)
			}
		}
		w2.Close(ctx)
		if s := w2.Stats(); s.NewBlobs != 0 {
			t.Fatalf("resumed run re-uploaded %d blobs", s.NewBlobs)
		}

		// A full rebuild from trailers alone gives the same index.
		if err := r3.ReloadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		before, _ := r3.IndexStats(ctx)
		st, err = r3.RebuildIndex(ctx, true)
		if err != nil || st.Generation == 0 {
			t.Fatalf("full rebuild: %+v %v", st, err)
		}
		after, _ := f.reopen(t, Options{}).IndexStats(ctx)
		if after.Blobs != before.Blobs || after.Packs != before.Packs {
			t.Fatalf("full rebuild: %+v, before %+v", after, before)
		}
	})
}

// waitUploads waits until the writer has no pack in flight.
func waitUploads(t *testing.T, w *Writer) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.inflight > 0 && w.err == nil {
		w.cond.Wait()
	}
}

func TestRepairReportsCorruptPack(t *testing.T) {
	store := mem.New()
	f := initRepo(t, store)
	key, _ := onePack(t, f)
	rc, _ := store.Get(ctx, key)
	b, _ := io.ReadAll(rc)
	store.Corrupt(key, len(b)-5) // in the footer chunk
	st, err := f.repo.RebuildIndex(ctx, true)
	if err != nil || len(st.Unreadable) != 1 || st.Unreadable[0] != key {
		t.Fatalf("full rebuild over a corrupt pack: %+v %v", st, err)
	}
}

// TestEscrowDecryptsWithStockAge decrypts a pack, an index delta and a
// snapshot with only the escrow identity and the stock age library, as an
// operator would with `age -d` and `zstd -d`.
func TestEscrowDecryptsWithStockAge(t *testing.T) {
	escrow, _ := age.GenerateHybridIdentity()
	store := mem.New()
	f := initRepo(t, store, func(o *InitOptions) { o.EscrowRecipients = []string{escrow.Recipient().String()} })
	want := map[blob.ID][]byte{}
	w, _ := f.repo.NewWriter(ctx, "x")
	for _, d := range [][]byte{randBytes(5000), compressible(60_000, 1)} {
		id, _ := w.Add(ctx, blob.KindFile, d)
		want[id] = d
	}
	root, _ := w.Add(ctx, blob.KindTree, []byte("root"))
	snapKey, err := w.Commit(ctx, testSnapshot(root), nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Close(ctx)

	decrypt := func(key string) []byte {
		rc, err := store.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		r, err := age.Decrypt(rc, escrow)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	unzstd := func(b []byte) []byte {
		d, _ := zstd.NewReader(nil)
		defer d.Close()
		out, err := d.DecodeAll(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := 0
	for _, key := range keysUnder(t, store, "data/") {
		plain := decrypt(key)
		entries, err := pack.DecodeTrailer(plain, int64(len(plain)))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b := plain[e.Offset : e.Offset+e.Length]
			if e.Compression == blob.Zstd {
				b = unzstd(b)
			}
			if !bytes.Equal(b, want[e.ID]) {
				t.Fatalf("blob %s differs", e.ID)
			}
			got++
		}
	}
	if got != len(want) {
		t.Fatalf("escrow read %d of %d blobs", got, len(want))
	}
	for _, key := range keysUnder(t, store, deltaPrefix) {
		if _, err := index.Decode(unzstd(decrypt(key))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := DecodeSnapshot(snapKey, unzstd(decrypt(snapKey))); err != nil {
		t.Fatal(err)
	}
	// Raw objects (WAL) too.
	var buf bytes.Buffer
	wc, _ := f.repo.Encrypt(&buf)
	fmt.Fprint(wc, "segment")
	wc.Close()
	r, err := age.Decrypt(&buf, escrow)
	if b, _ := io.ReadAll(r); err != nil || string(b) != "segment" {
		t.Fatalf("raw object: %q %v", b, err)
	}
}

func TestClassicEscrowMakesClassicRepository(t *testing.T) {
	escrow, _ := age.GenerateX25519Identity()
	f := initRepo(t, mem.New(), func(o *InitOptions) { o.EscrowRecipients = []string{escrow.Recipient().String()} })
	if len(f.res.Warnings) == 0 {
		t.Fatal("no warning about a classic escrow key")
	}
	ids := writeBlobs(t, f.repo, map[blob.Kind][][]byte{blob.KindFile: {[]byte("hello")}})
	for id := range ids {
		if _, err := f.repo.ReadBlob(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	wc, _ := f.repo.Encrypt(&buf)
	wc.Close()
	if _, err := age.Decrypt(&buf, escrow); err != nil {
		t.Fatal(err)
	}
}
