package filemap

import (
	"cmp"
	"iter"
	"slices"
)

// Extents is a read-only list of extents sorted by page, held compactly for
// the maps a backup keeps while it builds new ones: 24 bytes an extent
// instead of an Extent's 96, because each distinct blob (with its Written)
// and each base is stored once and extents refer to it by number. A map of
// a 1 GiB relation segment whose pages changed at random has one extent per
// run of changed pages, tens of thousands of them, so this is what bounds a
// backup's memory by its files in flight rather than by how many of their
// pages changed. It is an in-memory form only; the repository holds maps as
// EncodeMap writes them.
type Extents struct {
	refs []extentRef // refs[0] is the zero ID, written 0
	list []packedExtent
}

// extentRef is one distinct blob of a list with its Written; bases are
// stored with Written 0.
type extentRef struct {
	id      ID
	written int64
}

// packedExtent is an Extent whose Blob (with Written) and Base are indexes
// into Extents.refs; base 0 means not a delta.
type packedExtent struct {
	page, count, blobPage, basePage uint32
	blob, base                      uint32
}

// PackedExtentSize is what one extent of an Extents costs in memory, in
// bytes (the table of distinct blobs aside).
const PackedExtentSize = 24

// extentsBuilder fills an Extents, interning blob IDs.
type extentsBuilder struct {
	x  Extents
	ix map[extentRef]uint32
}

func (b *extentsBuilder) ref(r extentRef) uint32 {
	if b.x.refs == nil {
		b.x.refs = []extentRef{{}}
	}
	// Neighbouring extents mostly share their blobs: look at the newest
	// few before the table.
	for i := len(b.x.refs) - 1; i >= 0 && i >= len(b.x.refs)-4; i-- {
		if b.x.refs[i] == r {
			return uint32(i)
		}
	}
	if r == (extentRef{}) {
		return 0
	}
	if b.ix == nil {
		b.ix = make(map[extentRef]uint32)
		for i, r := range b.x.refs {
			b.ix[r] = uint32(i)
		}
	}
	if i, ok := b.ix[r]; ok {
		return i
	}
	i := uint32(len(b.x.refs))
	b.x.refs = append(b.x.refs, r)
	b.ix[r] = i
	return i
}

func (b *extentsBuilder) add(e Extent) {
	p := packedExtent{page: e.Page, count: e.Count, blobPage: e.BlobPage, basePage: e.BasePage,
		blob: b.ref(extentRef{e.Blob, e.Written})}
	if e.IsDelta() {
		p.base = b.ref(extentRef{id: e.Base})
	}
	b.x.list = append(b.x.list, p)
}

// done returns the list, its slices cut to their length.
func (b *extentsBuilder) done() Extents {
	x := b.x
	x.refs = slices.Clip(x.refs)
	x.list = slices.Clip(x.list)
	return x
}

// NewExtents returns a compact copy of ext, which must be sorted by page.
func NewExtents(ext []Extent) Extents {
	b := extentsBuilder{x: Extents{list: make([]packedExtent, 0, len(ext))}}
	for _, e := range ext {
		b.add(e)
	}
	return b.done()
}

// Len is the number of extents.
func (x *Extents) Len() int { return len(x.list) }

// At returns extent i.
func (x *Extents) At(i int) Extent {
	p := x.list[i]
	r := x.refs[p.blob]
	e := Extent{Page: p.page, Count: p.count, Blob: r.id, BlobPage: p.blobPage, Written: r.written}
	if p.base != 0 {
		e.Base, e.BasePage = x.refs[p.base].id, p.basePage
	}
	return e
}

// All yields the extents in order.
func (x *Extents) All() iter.Seq[Extent] {
	return func(yield func(Extent) bool) {
		for i := range x.list {
			if !yield(x.At(i)) {
				return
			}
		}
	}
}

// Lookup returns the index of the extent holding page p, or -1.
func (x *Extents) Lookup(p uint32) int {
	i, ok := slices.BinarySearchFunc(x.list, p, func(e packedExtent, p uint32) int {
		switch {
		case p < e.page:
			return 1
		case p >= e.page+e.count:
			return -1
		}
		return 0
	})
	if !ok {
		return -1
	}
	return i
}

// Bytes is about what the list holds in memory.
func (x *Extents) Bytes() int64 {
	return int64(cap(x.list))*PackedExtentSize + int64(cap(x.refs))*40
}

// CompactMap is a Map whose extents are held as Extents: how a backup holds
// the reference snapshot's map of each file it captures (DecodeCompactMap).
type CompactMap struct {
	BlockSize uint32
	Pages     uint32
	Extents   Extents
	Sums      []SlotSum
}

// DecodeCompactMap decodes and validates a page map like DecodeMap, into
// the compact form.
func DecodeCompactMap(data []byte) (*CompactMap, error) {
	m := &CompactMap{}
	var b extentsBuilder
	h, err := decodeMap(data, func(n int) { b.x.list = make([]packedExtent, 0, n) }, b.add)
	if err != nil {
		return nil, err
	}
	m.BlockSize, m.Pages, m.Sums = h.BlockSize, h.Pages, h.Sums
	m.Extents = b.done()
	return m, nil
}

// Lookup returns the index of the extent holding page p, or -1.
func (m *CompactMap) Lookup(p uint32) int { return m.Extents.Lookup(p) }

func (m *CompactMap) at(i int) Extent { return m.Extents.At(i) }

// Sum returns window w's sum, if the map holds one.
func (m *CompactMap) Sum(w uint32) (ID, bool) { return findSum(m.Sums, w) }

// Map returns m in the ordinary form.
func (m *CompactMap) Map() *Map {
	out := &Map{BlockSize: m.BlockSize, Pages: m.Pages, Sums: slices.Clone(m.Sums)}
	if n := m.Extents.Len(); n > 0 {
		out.Extents = make([]Extent, 0, n)
		out.Extents = slices.AppendSeq(out.Extents, m.Extents.All())
	}
	return out
}

// Bytes is about what the map holds in memory.
func (m *CompactMap) Bytes() int64 { return m.Extents.Bytes() + int64(cap(m.Sums))*36 }

func findSum(sums []SlotSum, w uint32) (ID, bool) {
	i, ok := slices.BinarySearchFunc(sums, w, func(s SlotSum, w uint32) int { return cmp.Compare(s.Slot, w) })
	if !ok {
		return ID{}, false
	}
	return sums[i].ID, true
}
