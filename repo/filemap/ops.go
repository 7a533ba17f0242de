package filemap

import "slices"

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
	base := m.Extents
	var page uint32
	push := func(e Extent) {
		if e.Count == 0 {
			return
		}
		if e.Blob.IsZero() {
			// Zero pages have no blob and no age: one canonical form.
			e.BlobPage, e.Written, e.Base, e.BasePage = 0, 0, ID{}, 0
		}
		if n := len(out.Extents); n > 0 && Continues(out.Extents[n-1], e) {
			out.Extents[n-1].Count += e.Count
			return
		}
		out.Extents = append(out.Extents, e)
	}
	// fill copies base pages [page, end) into out, zero pages past base's end.
	fill := func(end uint32) {
		for page < end {
			i := m.Lookup(page)
			if i < 0 {
				push(Extent{Page: page, Count: end - page})
				page = end
				return
			}
			e := base[i]
			skip := page - e.Page
			n := min(e.Count-skip, end-page)
			ne := e.Slice(page, n)
			push(ne)
			page += n
		}
	}
	for i, u := range updates {
		if u.Count == 0 || u.Page < page || uint64(u.Page)+uint64(u.Count) > uint64(pages) {
			return nil, invalidf("update %d (pages %d+%d) overlaps, is unsorted or past %d pages", i, u.Page, u.Count, pages)
		}
		fill(u.Page)
		push(u)
		page = u.Page + u.Count
	}
	fill(pages)
	return out, out.Validate()
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
