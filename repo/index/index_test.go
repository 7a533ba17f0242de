package index

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/pack"
)

func sample(n int) *File {
	f := &File{Packs: []Pack{
		{ID: pack.ID{1}, Class: blob.ClassData, PayloadOffset: 200, PlainSize: 1 << 20},
		{ID: pack.ID{2}, Class: blob.ClassMeta, PayloadOffset: 300, PlainSize: 1 << 16},
	}}
	for i := range n {
		var id blob.ID
		rand.Read(id[:])
		e := Entry{ID: id, Offset: uint32(i * 100), Length: 100, RawLength: 300, Kind: blob.KindSlot, Compression: blob.Zstd}
		if i%3 == 0 {
			e.Pack, e.Kind, e.Offset = 1, blob.KindTree, uint32(i)
		}
		f.Blobs = append(f.Blobs, e)
	}
	return f
}

func TestFileRoundtrip(t *testing.T) {
	f := sample(100)
	b := f.Encode()
	if len(b) != HeaderSize+2*PackRecordSize+100*BlobRecordSize {
		t.Fatalf("%d bytes", len(b))
	}
	g, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g.Encode(), b) {
		t.Fatal("re-encoding differs")
	}
	b[len(b)-4] = 9 // compression of the last blob
	if _, err := Decode(b); !errors.Is(err, ErrFormat) {
		t.Fatalf("bad compression: %v", err)
	}
}

func TestIndexLookupAndMerge(t *testing.T) {
	t.Run("memory", func(t *testing.T) { testLookupAndMerge(t, New()) })
	t.Run("spilling", func(t *testing.T) {
		x := NewSpilling(t.TempDir(), 0)
		x.spillAt = 700 // runs of a few hundred entries, merged as they come
		testLookupAndMerge(t, x)
		if len(x.runs) == 0 || x.runs[0].n < 1000 {
			t.Fatalf("%d runs", len(x.runs))
		}
		t.Logf("%d runs, the oldest of %d entries", len(x.runs), x.runs[0].n)
	})
}

func testLookupAndMerge(t *testing.T, x *Index) {
	f := sample(1000)
	x.AddFile(f)
	// Entries added one pack at a time, past the overlay merge threshold.
	var added []pack.Entry
	for range mergeAt + 10 {
		var id blob.ID
		rand.Read(id[:])
		added = append(added, pack.Entry{ID: id, Kind: blob.KindPatch, Length: 1, RawLength: 1})
	}
	x.AddPack(Pack{ID: pack.ID{3}, PayloadOffset: 100, PlainSize: 1 << 20}, added)
	x.AddFile(f) // duplicates are ignored
	if x.Len() != 1000+len(added) || x.PackCount() != 3 {
		t.Fatalf("len %d packs %d", x.Len(), x.PackCount())
	}
	for _, e := range f.Blobs {
		loc, ok := x.Lookup(e.ID)
		if !ok || loc.Offset != e.Offset || loc.Pack.ID != f.Packs[e.Pack].ID {
			t.Fatalf("lookup %s: %+v %v", e.ID, loc, ok)
		}
	}
	for _, e := range added {
		if !x.Has(e.ID) {
			t.Fatal("added entry missing")
		}
	}
	if x.Has(blob.ID{0xff}) {
		t.Fatal("phantom entry")
	}
	// Files splits and keeps everything.
	y := New()
	files, err := x.Files(5000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	x.Each(func(Entry, *Pack) bool { n++; return true })
	if n != x.Len() {
		t.Fatalf("Each saw %d of %d entries", n, x.Len())
	}
	for _, part := range files {
		g, err := Decode(part.Encode())
		if err != nil {
			t.Fatal(err)
		}
		y.AddFile(g)
	}
	if y.Len() != x.Len() {
		t.Fatalf("%d after split, want %d", y.Len(), x.Len())
	}
	t.Logf("%d entries: %d bytes in memory, %.1f bytes/entry (EntryMemSize %d)",
		x.Len(), x.MemBytes(), float64(x.MemBytes())/float64(x.Len()), EntryMemSize)
}

func FuzzDecode(f *testing.F) {
	f.Add(sample(3).Encode())
	f.Add(sample(0).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(g.Encode(), b) && len(b) > 0 {
			// Reserved bytes are not checked, so only compare lengths.
			if len(g.Encode()) != len(b) {
				t.Fatal("re-encoding changes length")
			}
		}
		x := New()
		x.AddFile(g)
		for _, e := range g.Blobs {
			if _, ok := x.Lookup(e.ID); !ok {
				t.Fatal("decoded entry not found")
			}
		}
	})
}

// TestSpillingMemory: the memory given to a spilling index bounds the
// entries it holds (the sorted array's capacity, merges included, and the
// overlay), whatever the number of entries; past it they go to runs and
// stay found, the first location of an ID kept.
func TestSpillingMemory(t *testing.T) {
	const bound = 2000
	for _, n := range []int{5 * bound, 60 * bound} {
		x := NewSpilling(t.TempDir(), bound*int64(EntryMemSize))
		if x.spillAt != bound {
			t.Fatalf("spillAt %d, want %d", x.spillAt, bound)
		}
		var ids []blob.ID
		maxCap, maxOverlay := 0, 0
		for p := 0; len(ids) < n; p++ {
			var added []pack.Entry
			for range 1 + p%700 { // packs of 1 to 700 blobs
				var id blob.ID
				rand.Read(id[:])
				ids = append(ids, id)
				added = append(added, pack.Entry{ID: id, Kind: blob.KindPatch, Length: 1, RawLength: 1})
			}
			if p%5 == 0 && len(ids) > 10 {
				// A blob stored again keeps its first location.
				added = append(added, pack.Entry{ID: ids[len(ids)/2], Kind: blob.KindPatch, Offset: 99, Length: 1, RawLength: 1})
			}
			x.AddPack(Pack{ID: pack.ID{byte(p), byte(p >> 8), byte(p >> 16)}, PlainSize: 1 << 20}, added)
			maxCap, maxOverlay = max(maxCap, cap(x.sorted)), max(maxOverlay, len(x.recent))
		}
		if maxCap > bound || maxOverlay > bound/8 {
			t.Fatalf("%d entries: sorted array capacity up to %d, overlay up to %d; bound %d", n, maxCap, maxOverlay, bound)
		}
		if len(x.runs) == 0 {
			t.Fatal("nothing spilled")
		}
		if x.Len() != len(ids) {
			t.Fatalf("Len %d, want %d", x.Len(), len(ids))
		}
		for _, id := range ids {
			loc, ok := x.Lookup(id)
			if !ok || loc.Offset == 99 {
				t.Fatalf("entry %s: %+v %v", id, loc.Entry, ok)
			}
		}
		t.Logf("%d entries: sorted capacity up to %d, overlay up to %d, %d runs, %d bytes in memory",
			n, maxCap, maxOverlay, len(x.runs), x.MemBytes())
	}
	if d := NewSpilling(t.TempDir(), 0); d.spillAt != 1<<18 {
		t.Fatalf("default spillAt %d", d.spillAt)
	}
}
