package repo

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"slices"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
)

// TestReadBlobRun: one GET reads the first blob and those after it in its
// pack within the gap and size bounds; each decodes to its bytes; blobs
// elsewhere, before it, unknown or past the bounds are left out.
func TestReadBlobRun(t *testing.T) {
	c, f, ids := threePacks(t)
	// The blobs of the first pack in pack order.
	var inPack []blob.ID
	var first string
	for id := range ids {
		loc, err := f.repo.Lookup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if first == "" {
			first = loc.Pack.Key()
		}
		if loc.Pack.Key() == first {
			inPack = append(inPack, id)
		}
	}
	slices.SortFunc(inPack, func(a, b blob.ID) int {
		la, _ := f.repo.Lookup(ctx, a)
		lb, _ := f.repo.Lookup(ctx, b)
		return int(la.Offset) - int(lb.Offset)
	})
	if len(inPack) < 6 {
		t.Fatalf("test setup: %d blobs in the first pack", len(inPack))
	}
	var other blob.ID
	for id := range ids {
		if loc, _ := f.repo.Lookup(ctx, id); loc.Pack.Key() != first {
			other = id
			break
		}
	}

	// From the second blob on: the first is before it, other elsewhere,
	// {1} unknown; all others of the pack come with one GET.
	want := []blob.ID{inPack[1], inPack[0], other, {1}}
	want = append(want, inPack[2:]...)
	c.reset()
	run, err := f.repo.ReadBlobRun(ctx, want, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ranges.Load(); got != 1 {
		t.Fatalf("%d ranged GETs, want 1", got)
	}
	if run.Len() != len(inPack)-1 {
		t.Fatalf("run holds %d blobs, want %d", run.Len(), len(inPack)-1)
	}
	for i, id := range inPack {
		data, ok, err := run.Decode(id, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if ok != (i > 0) {
			t.Fatalf("blob %d of the pack: held %v", i, ok)
		}
		if ok && !bytes.Equal(data, append([]byte("x"), ids[id]...)) {
			t.Fatalf("blob %d of the pack decodes to other bytes", i)
		}
	}
	for _, id := range []blob.ID{other, {1}} {
		if _, ok, _ := run.Decode(id, nil); ok {
			t.Fatalf("run holds %s", id)
		}
	}
	run.Release()
	if _, ok, _ := run.Decode(inPack[1], nil); ok {
		t.Fatal("a released run still decodes")
	}

	// The size bound: a run of at most 25,000 bytes holds two blobs of
	// 10 KB; the first is read whatever its size.
	run, err = f.repo.ReadBlobRun(ctx, inPack, 25_000)
	if err != nil {
		t.Fatal(err)
	}
	if run.Len() != 2 {
		t.Fatalf("run of 25,000 bytes holds %d blobs", run.Len())
	}
	run.Release()
	if run, err = f.repo.ReadBlobRun(ctx, inPack[:1], 1); err != nil || run.Len() != 1 {
		t.Fatalf("a run of one blob larger than its bound: %v", err)
	}
	run.Release()

	// The gap bound: with none allowed, skipping a blob ends the run.
	r2 := f.reopen(t, Options{CoalesceGap: 1})
	run, err = r2.ReadBlobRun(ctx, []blob.ID{inPack[0], inPack[1], inPack[3]}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if run.Len() != 2 {
		t.Fatalf("run across a gap holds %d blobs, want 2", run.Len())
	}
	run.Release()

	// The first blob must exist.
	if _, err := f.repo.ReadBlobRun(ctx, []blob.ID{{1}, inPack[0]}, 1<<20); !errors.Is(err, ErrBlobNotFound) {
		t.Fatalf("unknown first blob: %v", err)
	}

	// A damaged pack is an error, never other bytes.
	rc, err := c.Store.Get(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := c.Store.Put(ctx, first, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	r3 := f.reopen(t, Options{})
	var ce *CorruptError
	if _, err := r3.ReadBlobRun(ctx, inPack, 1<<20); !errors.As(err, &ce) {
		t.Fatalf("damaged pack: %v", err)
	}
}

// TestReadBufsSurviveCollections: a read buffer given back is there for
// the next read after a garbage collection (a sync.Pool's would not be),
// up to keptReadBufs of them, and buffers over keptReadBuf are not kept.
func TestReadBufsSurviveCollections(t *testing.T) {
	var l bufList
	var held [][]byte
	for range keptReadBufs + 2 {
		held = append(held, l.get(1<<20))
	}
	for _, b := range held {
		l.put(b)
	}
	l.put(make([]byte, keptReadBuf+1))
	runtime.GC()
	runtime.GC()
	if len(l.bufs) != keptReadBufs {
		t.Fatalf("%d buffers kept, want %d", len(l.bufs), keptReadBufs)
	}
	b := l.get(1 << 19)
	if &b[:1][0] != &held[0][:1][0] || len(b) != 1<<19 {
		t.Errorf("get after two collections made a new buffer, want the first one given back")
	}
	if big := l.get(keptReadBuf); cap(big) < keptReadBuf || len(l.bufs) != keptReadBufs-1 {
		t.Errorf("a get larger than every kept buffer: cap %d, %d kept", cap(big), len(l.bufs))
	}
}
