package walarchive

import (
	"math"
	"slices"

	"github.com/tidemarkdb/tidemark/pg"
)

// Ranges are segment runs per timeline: what retention keeps, what
// expire removed.
type Ranges map[pg.TimelineID][]SegRange

// Add appends the run first..last of timeline tli (nothing when first >
// last); MergeRanges sorts and coalesces.
func (r Ranges) Add(tli pg.TimelineID, first, last pg.SegNo) {
	if first > last {
		return
	}
	r[tli] = append(r[tli], SegRange{first, last})
}

// Has reports whether a run of timeline tli holds seg.
func (r Ranges) Has(tli pg.TimelineID, seg pg.SegNo) bool {
	for _, x := range r[tli] {
		if x.First <= seg && seg <= x.Last {
			return true
		}
	}
	return false
}

// MergeRanges returns the union of the runs of a and b per timeline, sorted and
// coalesced.
func MergeRanges(a, b Ranges) Ranges {
	out := Ranges{}
	for _, src := range []Ranges{a, b} {
		for t, rs := range src {
			out[t] = append(out[t], rs...)
		}
	}
	for t, rs := range out {
		slices.SortFunc(rs, func(x, y SegRange) int {
			switch {
			case x.First < y.First:
				return -1
			case x.First > y.First:
				return 1
			}
			return 0
		})
		var m []SegRange
		for _, r := range rs {
			if n := len(m); n > 0 && r.First <= m[n-1].Last+1 {
				m[n-1].Last = max(m[n-1].Last, r.Last)
				continue
			}
			m = append(m, r)
		}
		out[t] = m
	}
	return out
}

// Covers reports whether the runs of timeline tli cover first..last.
func (r Ranges) Covers(tli pg.TimelineID, first, last pg.SegNo) bool {
	for s := first; s <= last; {
		found := false
		for _, x := range r[tli] {
			if x.First <= s && s <= x.Last {
				if x.Last == math.MaxUint64 {
					return true
				}
				s = x.Last + 1
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
