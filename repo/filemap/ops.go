package filemap

import (
	"iter"
	"slices"
)

// Overlay returns a new map in which the pages covered by updates point where
// the updates say, and every other page points where m says. updates must be
// sorted by Page, must not overlap, and must lie within [0, pages); the result
// has the given length in pages: pages past m's end that no update covers are
// zero pages (a relation that grew), and m's pages past the new end are dropped
// (a relation that was truncated). The result has no Sums: which windows'
// sums still hold is the caller's knowledge. Adjacent extents that continue one another
// are merged, so the same content always yields the same map.
func Overlay(m *Map, pages uint32, updates []Extent) (*Map, error) {
	out := &Map{BlockSize: m.BlockSize, Pages: pages}
	err := overlay(m, pages, slices.Values(updates), func(e Extent) error {
		out.Extents = append(out.Extents, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, out.Validate()
}

// EncodeOverlay returns what EncodeMap returns for Overlay(base, pages,
// updates) with sums as its Sums, without building that map: the map of a
// 1 GiB relation segment whose pages changed at random has an extent per
// run of changed pages, about 100 bytes each as an Extent, and only its
// encoding (which must be whole to be stored) is held. updates is iterated
// twice (once to size the encoding) and must yield the same extents each
// time.
func EncodeOverlay(base *CompactMap, pages uint32, updates iter.Seq[Extent], sums []SlotSum) ([]byte, error) {
	if err := checkBlockSize(base.BlockSize); err != nil {
		return nil, err
	}
	// First pass: validate, count, and size the encoding exactly.
	var count, size, deltaSize int
	var next uint32
	err := overlay(base, pages, updates, func(e Extent) error {
		if err := checkExtent(count, &e, next, pages); err != nil {
			return err
		}
		next = e.Page + e.Count
		count++
		size += extentLen(&e)
		if e.IsDelta() {
			deltaSize += 32 + uvarintLen(uint64(e.BasePage))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if next != pages {
		return nil, invalidf("extents cover %d of %d pages", next, pages)
	}
	h := &Map{BlockSize: base.BlockSize, Pages: pages, Sums: sums}
	if err := checkSums(sums, h.Windows()); err != nil {
		return nil, err
	}
	deltas := deltaSize > 0
	if deltas {
		size += count + deltaSize
	}
	size += 4 + uvarintLen(uint64(h.BlockSize)) + uvarintLen(uint64(pages)) + uvarintLen(uint64(count))
	if deltas || len(sums) > 0 {
		size += uvarintLen(uint64(len(sums)))
		prev := uint32(0)
		for _, s := range sums {
			size += uvarintLen(uint64(s.Slot-prev)) + 32
			prev = s.Slot + 1
		}
	}
	b := make([]byte, 0, size)
	b = appendMapHeader(b, h, count, deltas)
	err = overlay(base, pages, updates, func(e Extent) error {
		b = appendExtent(b, &e, deltas)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return appendSums(b, sums, deltas), nil
}

// extentSource is a map's extents, ordinary (Map) or compact (CompactMap).
type extentSource interface {
	Lookup(p uint32) int
	at(i int) Extent
}

// overlay calls emit with the extents of Overlay(base, pages, updates) in
// order, adjacent ones that continue one another merged.
func overlay(base extentSource, pages uint32, updates iter.Seq[Extent], emit func(Extent) error) error {
	var cur Extent // the extent being grown; none while its Count is 0
	push := func(e Extent) error {
		if e.Count == 0 {
			return nil
		}
		if e.Blob.IsZero() {
			// Zero pages have no blob and no age: one canonical form.
			e.BlobPage, e.Written, e.Base, e.BasePage = 0, 0, ID{}, 0
		}
		if cur.Count > 0 && Continues(cur, e) {
			cur.Count += e.Count
			return nil
		}
		if cur.Count > 0 {
			if err := emit(cur); err != nil {
				return err
			}
		}
		cur = e
		return nil
	}
	var page uint32
	// fill copies base pages [page, end), zero pages past base's end.
	fill := func(end uint32) error {
		for page < end {
			i := base.Lookup(page)
			if i < 0 {
				err := push(Extent{Page: page, Count: end - page})
				page = end
				return err
			}
			e := base.at(i)
			n := min(e.Count-(page-e.Page), end-page)
			if err := push(e.Slice(page, n)); err != nil {
				return err
			}
			page += n
		}
		return nil
	}
	i := 0
	for u := range updates {
		if u.Count == 0 || u.Page < page || uint64(u.Page)+uint64(u.Count) > uint64(pages) {
			return invalidf("update %d (pages %d+%d) overlaps, is unsorted or past %d pages", i, u.Page, u.Count, pages)
		}
		if err := fill(u.Page); err != nil {
			return err
		}
		if err := push(u); err != nil {
			return err
		}
		page = u.Page + u.Count
		i++
	}
	if err := fill(pages); err != nil {
		return err
	}
	if cur.Count > 0 {
		return emit(cur)
	}
	return nil
}

// Slice returns the part of e covering pages [page, page+n), which must lie
// within e.
func (e Extent) Slice(page, n uint32) Extent {
	skip := page - e.Page
	out := Extent{Page: page, Count: n, Blob: e.Blob, Written: e.Written, Base: e.Base}
	if !e.Blob.IsZero() {
		out.BlobPage = e.BlobPage + skip
	}
	if e.IsDelta() {
		out.BasePage = e.BasePage + skip
	}
	return out
}

// Continues reports whether b directly follows a in the file, the blob and
// the base, so that the two can be one extent.
func Continues(a, b Extent) bool {
	if a.Blob != b.Blob || a.Base != b.Base || a.Written != b.Written || a.Page+a.Count != b.Page {
		return false
	}
	if a.IsDelta() && a.BasePage+a.Count != b.BasePage {
		return false
	}
	return a.Blob.IsZero() || a.BlobPage+a.Count == b.BlobPage
}

// Clone returns a deep copy of m.
func (m *Map) Clone() *Map {
	c := *m
	c.Extents = slices.Clone(m.Extents)
	c.Sums = slices.Clone(m.Sums)
	return &c
}
