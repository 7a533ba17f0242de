package restore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// timelines is the archive's view of how a cluster's timelines branched.
type timelines map[pg.TimelineID]pg.History

func newTimelines(hs []pg.History) timelines {
	m := timelines{1: {Timeline: 1}}
	for _, h := range hs {
		m[h.Timeline] = h
	}
	return m
}

// newest is the highest timeline with a history in the archive.
func (t timelines) newest() pg.TimelineID {
	var n pg.TimelineID
	for tli := range t {
		n = max(n, tli)
	}
	return n
}

// branches describes the timelines that branched off tli, for messages.
func (t timelines) branches(tli pg.TimelineID) string {
	var out []string
	for _, h := range t.sorted() {
		if len(h.Entries) == 0 {
			continue
		}
		last := h.Entries[len(h.Entries)-1]
		if last.Parent == tli {
			out = append(out, fmt.Sprintf("timeline %d (branched from %d at %s)", h.Timeline, tli, last.SwitchPoint))
		}
	}
	return strings.Join(out, ", ")
}

func (t timelines) sorted() []pg.History {
	var hs []pg.History
	for _, h := range t {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b pg.History) int { return int(a.Timeline) - int(b.Timeline) })
	return hs
}

// recoverable reports whether snapshot s can recover along h: both the
// timeline it started on and the one it became consistent on are in h's
// lineage, and the latter had not ended before the snapshot's stop LSN.
func recoverable(h pg.History, s *repo.Snapshot) bool {
	return h.Contains(pg.TimelineID(s.StartTimeline)) &&
		h.CanRecoverFrom(pg.TimelineID(s.StopTimeline), pg.LSN(s.StopLSN))
}

// chooseTimeline picks the timeline to recover along. An explicit one must
// exist in the archive. Otherwise it is the timeline of the newest backup
// (or of the requested one), never blindly the newest timeline: an
// accidental promotion of a scratch copy archived into the same repository
// creates a newer timeline that recovery must not follow by default.
func chooseTimeline(tl timelines, snaps []*repo.Snapshot, backup *repo.Snapshot, want pg.TimelineID, latest bool) (pg.History, string, error) {
	if latest {
		want = tl.newest()
		return tl[want], fmt.Sprintf("timeline %d, the newest in the archive (--target-timeline latest)", want), nil
	}
	if want != 0 {
		h, ok := tl[want]
		if !ok {
			return pg.History{}, "", refusef("--target-timeline %d: the archive has no history file for timeline %d (it has %s): pick one of those", want, want, tl.list())
		}
		return h, fmt.Sprintf("timeline %d (--target-timeline)", want), nil
	}
	newest := snaps[len(snaps)-1]
	tli := pg.TimelineID(newest.StopTimeline)
	why := fmt.Sprintf("timeline %d, the timeline of the newest backup %s", tli, newest.ID)
	if backup != nil {
		if h, ok := tl[tli]; !ok || !recoverable(h, backup) {
			tli = pg.TimelineID(backup.StopTimeline)
			why = fmt.Sprintf("timeline %d, the timeline of backup %s", tli, backup.ID)
		}
	}
	h, ok := tl[tli]
	if !ok {
		return pg.History{}, "", refusef("the archive has no history file for timeline %d of backup %s: run tidemark verify, or pass --target-timeline with one of %s", tli, newest.ID, tl.list())
	}
	if b := tl.branches(tli); b != "" {
		why += "; the archive also has " + b + ": pass --target-timeline to follow it"
	}
	return h, why, nil
}

func (t timelines) list() string {
	var s []string
	for _, h := range t.sorted() {
		s = append(s, strconv.Itoa(int(h.Timeline)))
	}
	return strings.Join(s, ", ")
}

// xidOf returns the next transaction ID recorded in a snapshot's pg_control
// (at the backup's start checkpoint), for choosing a snapshot for an xid
// target.
type xidOf func(ctx context.Context, s *repo.Snapshot) (uint64, error)

// chooseSnapshot picks the newest snapshot that can recover along h and ends
// before the target, or checks the one the user asked for.
func chooseSnapshot(ctx context.Context, snaps []*repo.Snapshot, h pg.History, backup *repo.Snapshot, t pg.RecoveryTarget, nextXID xidOf) (*repo.Snapshot, error) {
	var cands []*repo.Snapshot
	for _, s := range snaps {
		if recoverable(h, s) {
			cands = append(cands, s)
		}
	}
	if backup != nil {
		if !recoverable(h, backup) {
			return nil, refusef("backup %s (timeline %d, stop LSN %s) cannot recover along timeline %d: pick another --backup or --target-timeline", backup.ID, backup.StopTimeline, pg.LSN(backup.StopLSN), h.Timeline)
		}
		ok, err := endsBefore(ctx, backup, t, nextXID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, refusef("backup %s ends after the %s target (it stopped at %s, LSN %s): pick an earlier --backup or a later target", backup.ID, t.Kind, backup.StopTime.UTC().Format(time.RFC3339), pg.LSN(backup.StopLSN))
		}
		return backup, nil
	}
	if len(cands) == 0 {
		return nil, refusef("no backup of this cluster can recover along timeline %d: take a backup, or pick another --target-timeline", h.Timeline)
	}
	for i := len(cands) - 1; i >= 0; i-- {
		ok, err := endsBefore(ctx, cands[i], t, nextXID)
		if err != nil {
			return nil, err
		}
		if ok {
			return cands[i], nil
		}
	}
	oldest := cands[0]
	return nil, refusef("the %s target %s is earlier than the end of the oldest backup on timeline %d (%s stopped at %s, LSN %s): pick a later target", t.Kind, t.Describe(), h.Timeline, oldest.ID, oldest.StopTime.UTC().Format(time.RFC3339Nano), pg.LSN(oldest.StopLSN))
}

// endsBefore reports whether snapshot s becomes consistent before target t,
// so that recovery from it can stop there.
func endsBefore(ctx context.Context, s *repo.Snapshot, t pg.RecoveryTarget, nextXID xidOf) (bool, error) {
	switch t.Kind {
	case pg.TargetTime:
		// Every commit before the stop LSN has a timestamp at or before
		// StopTime; a strict comparison keeps recovery from meeting the
		// target before it is consistent.
		return s.StopTime.Before(t.Time), nil
	case pg.TargetLSN:
		return pg.LSN(s.StopLSN) <= t.LSN, nil
	case pg.TargetXID:
		next, err := nextXID(ctx, s)
		if err != nil {
			return false, err
		}
		return xidNotBefore(t.XID, next), nil
	}
	// A restore point's position is not known without reading all the WAL;
	// immediate and end-of-archive fit every snapshot.
	return true, nil
}

// xidNotBefore reports whether xid was assigned at or after next (the next
// transaction ID at a backup's start). A 64-bit xid compares as a full
// transaction ID; a 32-bit one with PostgreSQL's modulo-2^32 rule.
func xidNotBefore(xid, next uint64) bool {
	if xid > 0xFFFFFFFF {
		return xid >= next
	}
	return int32(uint32(xid)-uint32(next)) >= 0
}

// walSpan is what the archive holds along a timeline's lineage from a
// snapshot's start segment on.
type walSpan struct {
	first pg.SegNo // the snapshot's start segment
	last  pg.SegNo // last segment of the continuous run from first; first-1 when first is missing
	head  pg.SegNo // the newest segment archived anywhere on the lineage
	gap   bool     // head > last: WAL exists beyond a missing segment
}

// scanWAL walks the segments recovery along h would read from the
// snapshot's start segment on (for each segment the copy of the timeline
// SegmentTimeline names) and finds where the continuous run ends.
func scanWAL(ctx context.Context, a Archive, cluster uint64, h pg.History, first pg.SegNo, segSize uint32) (walSpan, error) {
	sp := walSpan{first: first, last: first - 1, head: first - 1}
	seg := first
	continuous := true
	for _, span := range h.Spans() {
		if span.End != pg.MaxLSN && span.End.Segment(segSize) < first {
			continue
		}
		from := max(first, span.Begin.Segment(segSize))
		segs, err := a.Segments(ctx, cluster, span.Timeline, from)
		if err != nil {
			return sp, fmt.Errorf("list WAL of timeline %d: %w", span.Timeline, err)
		}
		for _, s := range segs {
			if s < seg || h.SegmentTimeline(s, segSize) != span.Timeline {
				// Before where we are, or a copy recovery along h does
				// not read (an ancestor's WAL past its switch point).
				continue
			}
			sp.head = max(sp.head, s)
			if continuous && s == seg {
				sp.last = s
				seg++
				continue
			}
			continuous = false
		}
		// The segments of this span that recovery reads end where the next
		// timeline's copies begin; a segment it needs and did not find
		// breaks the run.
		if continuous && span.End != pg.MaxLSN && h.SegmentTimeline(seg, segSize) == span.Timeline {
			continuous = false
		}
	}
	sp.gap = sp.head > sp.last
	return sp, nil
}
