package retention

import (
	"math"
	"slices"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// WALFile is one archived WAL object of a cluster: a segment, a .partial or
// a .backup file, or a segment's block summary (Summary, File then names
// the segment), which goes when its segment goes. Timeline history files
// and the cluster marker are never removed and never listed here.
type WALFile struct {
	Key     string
	File    pg.WALFile
	Seg     pg.SegNo
	Size    int64
	Mod     time.Time // when it was archived (the listing's modification time)
	Summary bool
}

// spanSegments returns, for each timeline of history h, the segments
// recovery along h reads from that timeline: the segment holding a switch
// point is read from the new timeline (pg.History.SegmentTimeline).
func spanSegments(h pg.History, segSize uint32) map[pg.TimelineID]walarchive.SegRange {
	out := map[pg.TimelineID]walarchive.SegRange{}
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
			out[sp.Timeline] = walarchive.SegRange{First: first, Last: last}
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
func KeepWAL(ds []Decision, lin Lineage, segSize uint32) (keep walarchive.Ranges, keepAll map[pg.TimelineID]bool, from pg.SegNo) {
	keep = walarchive.Ranges{}
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
				keep.Add(tli, max(start, r.First), min(stop, r.Last))
			}
		} else {
			// Without the history, keep the range on every timeline.
			for _, t := range slices.Concat(tls, lin.Unknown) {
				keep.Add(t, start, stop)
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
				keep.Add(tli, max(start, r.First), r.Last)
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
		case keepAll[tli], f.Seg >= from, keep.Has(tli, f.Seg):
			continue
		}
		if _, known := lin.history(tli); !known {
			continue
		}
		del = append(del, f)
	}
	return del
}
