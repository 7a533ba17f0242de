package filemap

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

func id(b byte) ID {
	var x ID
	for i := range x {
		x[i] = b
	}
	return x
}

func sampleTree() *Tree {
	return &Tree{Nodes: []Node{
		{Name: "PG_VERSION", Type: TypeFile, Mode: 0o600, UID: 101, GID: 104, Size: 3, ModTime: 1700000000123456789, Inode: 42, Content: []ID{id(1)}},
		{Name: "base", Type: TypeDir, Mode: 0o700, Subtree: id(2)},
		{Name: "empty", Type: TypeFile, Mode: 0o600},
		{Name: "pg_tblspc16384", Type: TypeSymlink, Mode: 0o777, Target: "/srv/ts1"},
		{Name: "rel16384", Type: TypeFile, Mode: 0o600, Size: 3 << 20, Map: id(3), ModTime: -5},
	}}
}

func TestTreeRoundTrip(t *testing.T) {
	tr := sampleTree()
	b, err := EncodeTree(tr)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeTree(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, tr) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, tr)
	}
	b2, _ := EncodeTree(got)
	if !bytes.Equal(b, b2) {
		t.Fatal("encoding is not canonical")
	}
	if n := got.Find("base"); n == nil || n.Type != TypeDir {
		t.Errorf("Find(base) = %v", n)
	}
	if got.Find("nope") != nil || got.Find("") != nil || got.Find("zzz") != nil {
		t.Error("Find of a missing name")
	}
	empty, err := EncodeTree(&Tree{})
	if err != nil {
		t.Fatal(err)
	}
	if tr, err := DecodeTree(empty); err != nil || len(tr.Nodes) != 0 {
		t.Fatalf("empty tree: %v %v", tr, err)
	}
}

func TestTreeValidate(t *testing.T) {
	cases := map[string]func(*Tree){
		"unsorted":          func(t *Tree) { t.Nodes[0], t.Nodes[1] = t.Nodes[1], t.Nodes[0] },
		"duplicate":         func(t *Tree) { t.Nodes[1].Name = t.Nodes[0].Name },
		"slash":             func(t *Tree) { t.Nodes[0].Name = "a/b" },
		"dotdot":            func(t *Tree) { t.Nodes[0].Name = ".." },
		"empty name":        func(t *Tree) { t.Nodes[0].Name = "" },
		"dir without tree":  func(t *Tree) { t.Nodes[1].Subtree = ID{} },
		"file with subtree": func(t *Tree) { t.Nodes[0].Subtree = id(9) },
		"map and content":   func(t *Tree) { t.Nodes[4].Content = []ID{id(1)} },
		"chunk count":       func(t *Tree) { t.Nodes[0].Size = ChunkSize + 1 },
		"symlink no target": func(t *Tree) { t.Nodes[3].Target = "" },
		"bad type":          func(t *Tree) { t.Nodes[0].Type = 9 },
		"mode bits":         func(t *Tree) { t.Nodes[0].Mode = 0o10600 },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			tr := sampleTree()
			mutate(tr)
			if _, err := EncodeTree(tr); !errors.Is(err, ErrInvalid) {
				t.Fatalf("EncodeTree accepted it: %v", err)
			}
		})
	}
}

func TestMapRoundTripAndValidate(t *testing.T) {
	m := &Map{BlockSize: 8192, Pages: 300, Extents: []Extent{
		{Page: 0, Count: 128, Blob: id(1), Written: 1700000000},
		{Page: 128, Count: 100},
		{Page: 228, Count: 2, Blob: id(2), BlobPage: 5, Written: 1700000500},
		{Page: 230, Count: 70, Blob: id(1), BlobPage: 2, Written: 1700000000},
	}}
	b, err := EncodeMap(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMap(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
	}
	for p, want := range map[uint32]int{0: 0, 127: 0, 128: 1, 227: 1, 228: 2, 229: 2, 230: 3, 299: 3, 300: -1} {
		if i := m.Lookup(p); i != want {
			t.Errorf("Lookup(%d) = %d, want %d", p, i, want)
		}
	}
	var blobs []ID
	m.Blobs(func(x ID) { blobs = append(blobs, x) })
	if len(blobs) != 3 { // id(1), id(2), id(1) again after a different one
		t.Errorf("Blobs = %d", len(blobs))
	}

	bad := map[string]*Map{
		"gap":        {BlockSize: 8192, Pages: 10, Extents: []Extent{{Page: 0, Count: 4}, {Page: 5, Count: 5}}},
		"short":      {BlockSize: 8192, Pages: 10, Extents: []Extent{{Page: 0, Count: 4}}},
		"past end":   {BlockSize: 8192, Pages: 3, Extents: []Extent{{Page: 0, Count: 4}}},
		"empty ext":  {BlockSize: 8192, Pages: 0, Extents: []Extent{{Page: 0, Count: 0}}},
		"block size": {BlockSize: 1000, Pages: 0},
		"zero page":  {BlockSize: 8192, Pages: 1, Extents: []Extent{{Page: 0, Count: 1, BlobPage: 3}}},
	}
	for name, m := range bad {
		if _, err := EncodeMap(m); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: EncodeMap accepted it: %v", name, err)
		}
	}
}

func TestMapSums(t *testing.T) {
	ext := []Extent{
		{Page: 0, Count: 128, Blob: id(1), Written: 1},
		{Page: 128, Count: 3, Blob: id(2), BlobPage: 9, Written: 2},
		{Page: 131, Count: 169, Blob: id(1), BlobPage: 3, Written: 1},
	}
	plain := &Map{BlockSize: 8192, Pages: 300, Extents: ext}
	withSums := &Map{BlockSize: 8192, Pages: 300, Extents: ext, Sums: []SlotSum{{Slot: 1, ID: id(7)}, {Slot: 2, ID: id(8)}}}
	pb, err := EncodeMap(plain)
	if err != nil {
		t.Fatal(err)
	}
	if string(pb[:4]) != "TMM1" {
		t.Errorf("a map without sums encodes as %q, want TMM1", pb[:4])
	}
	sb, err := EncodeMap(withSums)
	if err != nil {
		t.Fatal(err)
	}
	if string(sb[:4]) != "TMM2" {
		t.Errorf("a map with sums encodes as %q, want TMM2", sb[:4])
	}
	got, err := DecodeMap(sb)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, withSums) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, withSums)
	}
	if got.Windows() != 3 {
		t.Errorf("Windows = %d, want 3", got.Windows())
	}
	for w, want := range map[uint32]ID{0: {}, 1: id(7), 2: id(8), 3: {}} {
		if s, ok := got.Sum(w); s != want || ok != !want.IsZero() {
			t.Errorf("Sum(%d) = %v %v, want %v", w, s, ok, want)
		}
	}
	if c := got.Clone(); &c.Sums[0] == &got.Sums[0] {
		t.Error("Clone shares Sums")
	}
	bad := map[string][]SlotSum{
		"past end": {{Slot: 3, ID: id(1)}},
		"unsorted": {{Slot: 2, ID: id(1)}, {Slot: 1, ID: id(2)}},
		"repeated": {{Slot: 1, ID: id(1)}, {Slot: 1, ID: id(2)}},
		"zero id":  {{Slot: 1}},
	}
	for name, sums := range bad {
		m := &Map{BlockSize: 8192, Pages: 300, Extents: ext, Sums: sums}
		if _, err := EncodeMap(m); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: EncodeMap accepted it: %v", name, err)
		}
	}
	// TMM2 with an empty sum list would be a second encoding of a TMM1 map.
	empty := append([]byte("TMM2"), pb[4:]...)
	if _, err := DecodeMap(append(empty, 0)); !errors.Is(err, ErrInvalid) {
		t.Errorf("TMM2 without sums: %v", err)
	}
}

func TestDecodeRejectsCorruption(t *testing.T) {
	tb, _ := EncodeTree(sampleTree())
	mb, _ := EncodeMap(&Map{BlockSize: 8192, Pages: 128, Extents: []Extent{{Count: 128, Blob: id(1)}}})
	sb, _ := EncodeMap(&Map{BlockSize: 8192, Pages: 300, Extents: []Extent{{Count: 300, Blob: id(1)}}, Sums: []SlotSum{{Slot: 2, ID: id(3)}}})
	for name, dec := range map[string]func([]byte) error{
		"tree": func(b []byte) error { _, err := DecodeTree(b); return err },
		"map":  func(b []byte) error { _, err := DecodeMap(b); return err },
		"sums": func(b []byte) error { _, err := DecodeMap(b); return err },
	} {
		src := map[string][]byte{"tree": tb, "map": mb, "sums": sb}[name]
		for n := 0; n < len(src); n++ {
			if err := dec(src[:n]); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s truncated to %d bytes: %v", name, n, err)
			}
		}
		if err := dec(append(bytes.Clone(src), 0)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s with a trailing byte: %v", name, err)
		}
		wrong := bytes.Clone(src)
		wrong[3] = '9'
		if err := dec(wrong); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s with another version: %v", name, err)
		}
	}
}

// pagesOf expands a map into one (blob, blob page) per file page, the ground
// truth Overlay is checked against.
type loc struct {
	blob     ID
	page     uint32
	base     ID
	basePage uint32
}

func pagesOf(m *Map) []loc {
	out := make([]loc, 0, m.Pages)
	for _, e := range m.Extents {
		for i := uint32(0); i < e.Count; i++ {
			l := loc{blob: e.Blob, base: e.Base}
			if !e.Blob.IsZero() {
				l.page = e.BlobPage + i
			}
			if e.IsDelta() {
				l.basePage = e.BasePage + i
			}
			out = append(out, l)
		}
	}
	return out
}

func TestOverlay(t *testing.T) {
	base := &Map{BlockSize: 8192, Pages: 256, Extents: []Extent{
		{Page: 0, Count: 128, Blob: id(1), Written: 10},
		{Page: 128, Count: 128, Blob: id(2), Written: 20},
	}}
	// Change pages 5-6 and 130 into a patch blob, grow to 260 pages.
	m, err := Overlay(base, 260, []Extent{
		{Page: 5, Count: 2, Blob: id(7), BlobPage: 0, Written: 30},
		{Page: 130, Count: 1, Blob: id(7), BlobPage: 2, Written: 30},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{Page: 0, Count: 5, Blob: id(1), Written: 10},
		{Page: 5, Count: 2, Blob: id(7), Written: 30},
		{Page: 7, Count: 121, Blob: id(1), BlobPage: 7, Written: 10},
		{Page: 128, Count: 2, Blob: id(2), Written: 20},
		{Page: 130, Count: 1, Blob: id(7), BlobPage: 2, Written: 30},
		{Page: 131, Count: 125, Blob: id(2), BlobPage: 3, Written: 20},
		{Page: 256, Count: 4},
	}
	if !reflect.DeepEqual(m.Extents, want) {
		t.Fatalf("overlay:\n got %+v\nwant %+v", m.Extents, want)
	}
	// Truncate to 100 pages: everything past is gone.
	m2, err := Overlay(m, 100, nil)
	if err != nil || m2.Pages != 100 || len(m2.Extents) != 3 {
		t.Fatalf("truncate: %+v %v", m2, err)
	}
	// Overlaying the base's own content merges back into one extent.
	m3, err := Overlay(m, 256, []Extent{{Page: 5, Count: 2, Blob: id(1), BlobPage: 5, Written: 10}})
	if err != nil || m3.Extents[0].Count != 128 {
		t.Fatalf("merge: %+v %v", m3, err)
	}
	for name, u := range map[string][]Extent{
		"overlap":  {{Page: 5, Count: 3, Blob: id(3)}, {Page: 6, Count: 1, Blob: id(3)}},
		"past end": {{Page: 255, Count: 2, Blob: id(3)}},
		"empty":    {{Page: 1, Count: 0, Blob: id(3)}},
	} {
		if _, err := Overlay(base, 256, u); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestOverlayRandom checks Overlay against a page-by-page model.
func TestOverlayRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	m := &Map{BlockSize: 8192}
	for round := 0; round < 2000; round++ {
		pages := uint32(r.IntN(400))
		model := pagesOf(m)
		if uint32(len(model)) > pages {
			model = model[:pages]
		}
		for uint32(len(model)) < pages {
			model = append(model, loc{})
		}
		var updates []Extent
		blob := id(byte(r.IntN(4)))
		var base ID
		if !blob.IsZero() && r.IntN(2) == 0 {
			base = id(byte(10 + r.IntN(2)))
		}
		next := uint32(r.IntN(20))
		bp := uint32(0)
		for next < pages && r.IntN(4) != 0 {
			n := uint32(1 + r.IntN(30))
			if next+n > pages {
				n = pages - next
			}
			e := Extent{Page: next, Count: n, Blob: blob, BlobPage: bp, Written: 5, Base: base}
			if e.IsDelta() {
				e.BasePage = next % 128
			}
			updates = append(updates, e)
			for i := uint32(0); i < n; i++ {
				l := loc{blob: blob, base: base}
				if !blob.IsZero() {
					l.page = bp + i
				}
				if e.IsDelta() {
					l.basePage = e.BasePage + i
				}
				model[next+i] = l
			}
			bp += n
			next += n + uint32(r.IntN(20))
		}
		got, err := Overlay(m, pages, updates)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !reflect.DeepEqual(pagesOf(got), model) && !(len(model) == 0 && len(pagesOf(got)) == 0) {
			t.Fatalf("round %d: overlay disagrees with the model", round)
		}
		for i := 1; i < len(got.Extents); i++ {
			if Continues(got.Extents[i-1], got.Extents[i]) {
				t.Fatalf("round %d: extents %d and %d not merged", round, i-1, i)
			}
		}
		b, err := EncodeMap(got)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if dec, err := DecodeMap(b); err != nil || !reflect.DeepEqual(pagesOf(dec), pagesOf(got)) {
			t.Fatalf("round %d: encoded map does not decode to itself: %v", round, err)
		}
		m = got
	}
}

func TestMapDeltas(t *testing.T) {
	ext := []Extent{
		{Page: 0, Count: 10, Blob: id(1), Written: 1},
		{Page: 10, Count: 2, Blob: id(2), BlobPage: 4, Written: 2, Base: id(1), BasePage: 10},
		{Page: 12, Count: 116, Blob: id(1), BlobPage: 12, Written: 1},
		{Page: 128, Count: 1, Blob: id(2), BlobPage: 6, Written: 2},
	}
	m := &Map{BlockSize: 8192, Pages: 129, Extents: ext}
	b, err := EncodeMap(m)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:4]) != "TMM3" {
		t.Errorf("a map with deltas encodes as %q, want TMM3", b[:4])
	}
	got, err := DecodeMap(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
	}
	onlyBase := &Map{BlockSize: 8192, Pages: 4, Extents: []Extent{{Count: 4, Blob: id(2), Base: id(5), BasePage: 7}}}
	blobs := map[ID]bool{}
	onlyBase.Blobs(func(i ID) { blobs[i] = true })
	if want := map[ID]bool{id(2): true, id(5): true}; !reflect.DeepEqual(blobs, want) {
		t.Errorf("Blobs = %v, want the base reported too: %v", blobs, want)
	}
	withSums := got.Clone()
	withSums.Sums = []SlotSum{{Slot: 0, ID: id(9)}}
	if sb, err := EncodeMap(withSums); err != nil || string(sb[:4]) != "TMM3" {
		t.Fatalf("deltas and sums: %q %v", sb[:4], err)
	} else if dec, err := DecodeMap(sb); err != nil || !reflect.DeepEqual(dec, withSums) {
		t.Fatalf("deltas and sums round trip: %+v %v", dec, err)
	}

	// Cutting a delta extent keeps blob and base pages in step, and the
	// parts of one delta merge back.
	part := ext[1].Slice(11, 1)
	if part.BlobPage != 5 || part.BasePage != 11 || part.Base != id(1) {
		t.Errorf("Slice = %+v", part)
	}
	if !Continues(ext[1].Slice(10, 1), part) {
		t.Error("the two halves of a delta do not continue one another")
	}
	shifted := part
	shifted.BasePage++
	if Continues(ext[1].Slice(10, 1), shifted) {
		t.Error("a delta whose base page jumps continues the one before")
	}
	over, err := Overlay(got, 129, []Extent{{Page: 11, Count: 1, Blob: id(3), Written: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if e := over.Extents[1]; e.Page != 10 || e.Count != 1 || e.Base != id(1) || e.BasePage != 10 {
		t.Errorf("overlay kept %+v of the delta", e)
	}
	if e := over.Extents[2]; e.IsDelta() || e.Blob != id(3) {
		t.Errorf("overlay put %+v over the delta's second page", e)
	}

	bad := map[string]Extent{
		"zero pages with a base":   {Page: 10, Count: 2, Base: id(1)},
		"its own base":             {Page: 10, Count: 2, Blob: id(2), Base: id(2)},
		"base page without a base": {Page: 10, Count: 2, Blob: id(2), BasePage: 3},
		"base overflows":           {Page: 10, Count: 2, Blob: id(2), Base: id(1), BasePage: 1<<32 - 1},
	}
	for name, e := range bad {
		m := &Map{BlockSize: 8192, Pages: 129, Extents: append(append(append([]Extent(nil), ext[0]), e), ext[2:]...)}
		if _, err := EncodeMap(m); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: EncodeMap accepted it: %v", name, err)
		}
	}
	// TMM3 without a delta would be a second encoding of a TMM1 or TMM2 map.
	plain, err := EncodeMap(&Map{BlockSize: 8192, Pages: 10, Extents: ext[:1]})
	if err != nil {
		t.Fatal(err)
	}
	tmm3 := append([]byte("TMM3"), plain[4:]...)
	tmm3 = append(tmm3, 0, 0) // no base flag, no sums
	if _, err := DecodeMap(tmm3); !errors.Is(err, ErrInvalid) {
		t.Errorf("TMM3 without deltas: %v", err)
	}
	// A base flag other than 0 or 1, and a zero base ID, are refused.
	for _, flag := range []byte{2, 1} {
		d := append([]byte("TMM3"), plain[4:]...)
		d = append(d, flag)
		if flag == 1 {
			d = append(d, make([]byte, 32)...)
			d = append(d, 0)
		}
		d = append(d, 0)
		if _, err := DecodeMap(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("base flag %d: %v", flag, err)
		}
	}
}

func FuzzDecodeTree(f *testing.F) {
	b, _ := EncodeTree(sampleTree())
	f.Add(b)
	f.Add([]byte("TMT1\x00"))
	pb, _ := EncodeTree(&Tree{Parts: []TreePart{{First: "1000", Count: 3, ID: id(1)}, {First: "2000", Count: 1, ID: id(2)}}})
	f.Add(pb)
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := DecodeTree(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		out, err := EncodeTree(tr)
		if err != nil {
			t.Fatalf("decoded tree does not encode: %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatal("decode/encode is not the identity on accepted input")
		}
	})
}

func FuzzDecodeMap(f *testing.F) {
	b, _ := EncodeMap(&Map{BlockSize: 8192, Pages: 130, Extents: []Extent{{Count: 128, Blob: id(1), Written: 3}, {Page: 128, Count: 2}}})
	f.Add(b)
	b, _ = EncodeMap(&Map{BlockSize: 8192, Pages: 300, Extents: []Extent{{Count: 300, Blob: id(1)}}, Sums: []SlotSum{{Slot: 0, ID: id(2)}, {Slot: 2, ID: id(3)}}})
	f.Add(b)
	b, _ = EncodeMap(&Map{BlockSize: 8192, Pages: 130, Extents: []Extent{{Count: 2, Blob: id(1)}, {Page: 2, Count: 128, Blob: id(2), Base: id(1), BasePage: 2}}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMap(data)
		cm, cerr := DecodeCompactMap(data)
		if (err == nil) != (cerr == nil) {
			t.Fatalf("DecodeMap: %v, DecodeCompactMap: %v", err, cerr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) || !errors.Is(cerr, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v, %v", err, cerr)
			}
			return
		}
		if !reflect.DeepEqual(cm.Map(), m) {
			t.Fatal("the compact map differs from the map")
		}
		out, err := EncodeMap(m)
		if err != nil {
			t.Fatalf("decoded map does not encode: %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatal("decode/encode is not the identity on accepted input")
		}
	})
}

// TestPartedTree: a big directory's tree of parts round-trips, is
// validated, and its parts are checked against it.
func TestPartedTree(t *testing.T) {
	pt := &Tree{Parts: []TreePart{{First: "1000", Count: 3, ID: id(1)}, {First: "2000", Count: 1, ID: id(2)}}}
	b, err := EncodeTree(pt)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeTree(b)
	if err != nil || !reflect.DeepEqual(got, pt) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []*Tree{
		{Parts: []TreePart{{First: "2000", Count: 1, ID: id(1)}, {First: "1000", Count: 1, ID: id(2)}}},
		{Parts: []TreePart{{First: "1000", Count: 0, ID: id(1)}}},
		{Parts: []TreePart{{First: "a/b", Count: 1, ID: id(1)}}},
		{Parts: []TreePart{{First: "1000", Count: 1}}},
		{Parts: []TreePart{{First: "1000", Count: 1, ID: id(1)}}, Nodes: sampleTree().Nodes},
	} {
		if _, err := EncodeTree(bad); err == nil {
			t.Errorf("encoded %+v", bad)
		}
	}
	part := &Tree{Nodes: []Node{{Name: "1000", Type: TypeFile}, {Name: "1001", Type: TypeFile}, {Name: "1002", Type: TypeFile}}}
	if err := CheckPart(pt.Parts[0], "2000", part); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ref  TreePart
		next string
	}{
		{TreePart{First: "1000", Count: 2, ID: id(1)}, "2000"}, // count
		{TreePart{First: "0999", Count: 3, ID: id(1)}, "2000"}, // first
		{TreePart{First: "1000", Count: 3, ID: id(1)}, "1001"}, // overlaps the next
	} {
		if err := CheckPart(c.ref, c.next, part); err == nil {
			t.Errorf("accepted part %+v before %q", c.ref, c.next)
		}
	}
	// Parts end where names say, between PartMin and PartMax.
	n, cuts := 0, 0
	for i := range 200000 {
		n++
		if PartEnds(fmt.Sprint(i), n) {
			if n < PartMin || n > PartMax {
				t.Fatalf("part of %d entries", n)
			}
			n, cuts = 0, cuts+1
		}
	}
	if cuts < 200000/PartMax || cuts > 200000/PartMin {
		t.Errorf("%d parts for 200000 names", cuts)
	}
}
