package retention

import (
	"math"
	"slices"

	"github.com/tidemarkdb/tidemark/pg"
)

// WALFile is one archived WAL object of a cluster: a segment, a .partial or
// a .backup file. Timeline history files and the cluster marker are never
// removed and never listed here.
type WALFile struct {
	Key  string
	File pg.WALFile
	Seg  pg.SegNo
	Size int64
}

// SegRange is a run of segment numbers, First to Last inclusive.
type SegRange struct {
	First, Last pg.SegNo
}

// Ranges are the segment runs kept per timeline.
type Ranges map[pg.TimelineID][]SegRange

func (r Ranges) add(tli pg.TimelineID, first, last pg.SegNo) {
	if first > last {
		return
	}
	r[tli] = append(r[tli], SegRange{first, last})
}

func (r Ranges) has(tli pg.TimelineID, seg pg.SegNo) bool {
	for _, x := range r[tli] {
		if x.First <= seg && seg <= x.Last {
			return true
		}
	}
	return false
}

// spanSegments returns, for each timeline of history h, the segments
// recovery along h reads from that timeline: the segment holding a switch
// point is read from the new timeline (pg.History.SegmentTimeline).
func spanSegments(h pg.History, segSize uint32) map[pg.TimelineID]SegRange {
	out := map[pg.TimelineID]SegRange{}
	spans := h.Spans()
	for i, sp := range spans {
		first := pg.SegNo(0)
		if i > 0 {
			first = sp.Begin.Segment(segSize)
		}
		last := pg.SegNo(math.MaxUint64)
		if i+1 < len(spans) {
			next := spans[i+1].Begin.Segment(segSize)
			if next == 0 {
				continue
			}
			last = next - 1
		}
		if first <= last {
			out[sp.Timeline] = SegRange{first, last}
		}
	}
	return out
}

// KeepWAL returns the segment runs the kept snapshots need, per timeline:
// for a PITR snapshot everything from its start segment on, along every
// timeline it leads to; for the others their start to stop segments along
// their own history. Everything from the newest snapshot's start segment on
// is kept on every timeline, whatever leads there (a backup running now
// starts there or later). keepAll lists timelines whose history is unknown:
// all their WAL stays.
func KeepWAL(ds []Decision, lin Lineage, segSize uint32) (keep Ranges, keepAll map[pg.TimelineID]bool, from pg.SegNo) {
	keep = Ranges{}
	keepAll = map[pg.TimelineID]bool{}
	for _, t := range lin.Unknown {
		keepAll[t] = true
	}
	tls := []pg.TimelineID{1}
	for t := range lin.Histories {
		if t != 1 {
			tls = append(tls, t)
		}
	}
	slices.Sort(tls)
	from = math.MaxUint64
	for _, d := range ds {
		if !d.Keep {
			continue
		}
		s := d.Snapshot
		start := pg.LSN(s.StartLSN).Segment(segSize)
		stop := pg.LSN(s.StopLSN).PrevSegment(segSize)
		if d.Snapshot == ds[len(ds)-1].Snapshot {
			from = start
		}
		if h, ok := lin.history(pg.TimelineID(s.StopTimeline)); ok {
			for tli, r := range spanSegments(h, segSize) {
				keep.add(tli, max(start, r.First), min(stop, r.Last))
			}
		} else {
			// Without the history, keep the range on every timeline.
			for _, t := range slices.Concat(tls, lin.Unknown) {
				keep.add(t, start, stop)
			}
		}
		if !d.PITR {
			continue
		}
		for _, x := range tls {
			if !lin.leadsTo(s, x) {
				continue
			}
			h, _ := lin.history(x)
			for tli, r := range spanSegments(h, segSize) {
				keep.add(tli, max(start, r.First), r.Last)
			}
		}
	}
	return keep, keepAll, from
}

// PlanWAL returns the WAL files of a cluster the kept snapshots do not need.
// With no snapshot kept it returns none: WAL archived before a cluster's
// first backup waits for that backup.
func PlanWAL(ds []Decision, lin Lineage, files []WALFile, segSize uint32) []WALFile {
	kept := false
	for _, d := range ds {
		kept = kept || d.Keep
	}
	if !kept {
		return nil
	}
	keep, keepAll, from := KeepWAL(ds, lin, segSize)
	var del []WALFile
	for _, f := range files {
		tli := f.File.Timeline
		switch {
		case keepAll[tli], f.Seg >= from, keep.has(tli, f.Seg):
			continue
		}
		if _, known := lin.history(tli); !known {
			continue
		}
		del = append(del, f)
	}
	return del
}

// Merge returns the union of the runs of a and b per timeline, sorted and
// coalesced.
func Merge(a, b Ranges) Ranges {
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
