package filemap

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"unsafe"
)

// randomUpdates returns sorted, non-overlapping updates within [0, pages)
// the way a backup makes them: runs of patch pages (some deltas against a
// window's base), whole slots, zero slots.
func randomUpdates(r *rand.Rand, pages uint32, written int64) []Extent {
	var out []Extent
	next := uint32(r.IntN(10))
	bp := uint32(0)
	patch := id(byte(20 + r.IntN(200)))
	for next < pages && r.IntN(8) != 0 {
		n := min(uint32(1+r.IntN(6)), pages-next)
		e := Extent{Page: next, Count: n, Written: written}
		switch r.IntN(6) {
		case 0:
			e.Blob = id(byte(100 + r.IntN(100)))
		case 1: // zero pages
		default:
			e.Blob, e.BlobPage = patch, bp
			bp += n
			if r.IntN(2) == 0 {
				e.Base, e.BasePage = id(byte(10+r.IntN(3))), next%128
			}
			if bp > 120 {
				patch, bp = id(byte(20+r.IntN(200))), 0
			}
		}
		out = append(out, e)
		next += n + uint32(r.IntN(5))
	}
	return out
}

func randomSums(r *rand.Rand, m *Map) []SlotSum {
	var sums []SlotSum
	for w := range m.Windows() {
		if r.IntN(3) == 0 {
			sums = append(sums, SlotSum{Slot: w, ID: id(byte(1 + r.IntN(250)))})
		}
	}
	return sums
}

// TestEncodeOverlayRandom: the map EncodeOverlay encodes window by window
// from a compact reference map and compact parts is byte for byte the one
// Overlay builds and EncodeMap encodes, over a chain of random backups
// (patches, deltas, zero pages, growth, truncation, sums), and its buffer is
// sized exactly: one allocation of the encoding, no map beside it.
func TestEncodeOverlayRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	m := &Map{BlockSize: 8192}
	for round := range 3000 {
		pages := uint32(r.IntN(600))
		if r.IntN(4) != 0 {
			pages = max(pages, m.Pages) // mostly growing files
		}
		updates := randomUpdates(r, pages, int64(round))
		want, err := Overlay(m, pages, updates)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		want.Sums = randomSums(r, want)
		wantB, err := EncodeMap(want)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// The updates as a backup holds them: one compact list per item.
		var parts []Extents
		for rest := updates; len(rest) > 0; {
			k := min(len(rest), 1+r.IntN(8))
			parts = append(parts, NewExtents(rest[:k]))
			rest = rest[k:]
		}
		seq := func(yield func(Extent) bool) {
			for i := range parts {
				for e := range parts[i].All() {
					if !yield(e) {
						return
					}
				}
			}
		}
		ref, err := DecodeCompactMap(mustEncode(t, m))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got, err := EncodeOverlay(ref, pages, seq, want.Sums)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !bytes.Equal(got, wantB) {
			t.Fatalf("round %d: EncodeOverlay differs from EncodeMap(Overlay)", round)
		}
		if len(got) != cap(got) {
			t.Fatalf("round %d: encoding of %d bytes in a buffer of %d", round, len(got), cap(got))
		}
		m = want
	}
}

func mustEncode(t *testing.T, m *Map) []byte {
	t.Helper()
	b, err := EncodeMap(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEncodeOverlayInvalid: what Overlay refuses, EncodeOverlay refuses.
func TestEncodeOverlayInvalid(t *testing.T) {
	base := &CompactMap{BlockSize: 8192, Pages: 256, Extents: NewExtents([]Extent{
		{Page: 0, Count: 256, Blob: id(1), Written: 10},
	})}
	for name, c := range map[string]struct {
		u    []Extent
		sums []SlotSum
	}{
		"overlap":       {u: []Extent{{Page: 5, Count: 3, Blob: id(3)}, {Page: 6, Count: 1, Blob: id(3)}}},
		"past end":      {u: []Extent{{Page: 255, Count: 2, Blob: id(3)}}},
		"empty":         {u: []Extent{{Page: 1, Count: 0, Blob: id(3)}}},
		"own base":      {u: []Extent{{Page: 1, Count: 1, Blob: id(3), Base: id(3)}}},
		"sum past end":  {sums: []SlotSum{{Slot: 2, ID: id(4)}}},
		"sums unsorted": {sums: []SlotSum{{Slot: 1, ID: id(4)}, {Slot: 0, ID: id(4)}}},
		"zero sum":      {sums: []SlotSum{{Slot: 0}}},
	} {
		if _, err := EncodeOverlay(base, 256, slices.Values(c.u), c.sums); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := EncodeOverlay(&CompactMap{}, 1, nil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("block size 0: %v", err)
	}
}

// TestExtentsCompact: a compact list holds the same extents in 24 bytes
// each, finds pages like Map.Lookup, and stores each blob once.
func TestExtentsCompact(t *testing.T) {
	if s := unsafe.Sizeof(packedExtent{}); s != PackedExtentSize {
		t.Fatalf("packedExtent is %d bytes, PackedExtentSize says %d", s, PackedExtentSize)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for round := range 200 {
		pages := uint32(1 + r.IntN(2000))
		m, err := Overlay(&Map{BlockSize: 8192}, pages, randomUpdates(r, pages, int64(round)))
		if err != nil {
			t.Fatal(err)
		}
		x := NewExtents(m.Extents)
		if got := slices.Collect(x.All()); !reflect.DeepEqual(got, m.Extents) && len(m.Extents) > 0 {
			t.Fatalf("round %d: extents differ", round)
		}
		for p := uint32(0); p <= pages; p++ {
			if a, b := x.Lookup(p), m.Lookup(p); a != b {
				t.Fatalf("round %d: Lookup(%d) = %d, Map.Lookup %d", round, p, a, b)
			}
		}
		distinct := map[extentRef]bool{{}: true}
		for _, e := range m.Extents {
			distinct[extentRef{e.Blob, e.Written}] = true
			if e.IsDelta() {
				distinct[extentRef{id: e.Base}] = true
			}
		}
		if len(x.refs) != len(distinct) {
			t.Fatalf("round %d: %d blobs in the table, %d distinct", round, len(x.refs), len(distinct))
		}
		if want := int64(len(m.Extents))*PackedExtentSize + int64(len(distinct))*40; x.Bytes() != want {
			t.Fatalf("round %d: Bytes = %d, want %d", round, x.Bytes(), want)
		}
	}
}
