package pg

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// HistoryEntry is one line of a timeline history file: timeline Parent ended
// at SwitchPoint, where the next timeline in the history began.
type HistoryEntry struct {
	Parent      TimelineID
	SwitchPoint LSN
	// Reason is PostgreSQL's free text, e.g. "no recovery target specified"
	// or "before 2024-05-01 10:00:00+00".
	Reason string
}

// History is the content of timeline Timeline's history file: the
// timelines it descends from, oldest first. Timeline 1 has no file and an
// empty history.
type History struct {
	Timeline TimelineID
	Entries  []HistoryEntry
}

// ErrInvalidHistory is returned (wrapped) for a timeline history file that
// PostgreSQL would refuse or that contradicts itself.
var ErrInvalidHistory = errors.New("invalid timeline history")

// ParseHistory parses the history file of timeline tli (readTimeLineHistory).
// Blank lines and lines starting with '#' are skipped, as by PostgreSQL.
// Timelines must increase and stay below tli, and switch points must not go
// backwards, because recovery relies on both.
func ParseHistory(tli TimelineID, b []byte) (History, error) {
	h := History{Timeline: tli}
	if tli == 0 {
		return h, fmt.Errorf("%w: timeline 0 does not exist", ErrInvalidHistory)
	}
	lineNo := 0
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		lineNo++
		line = bytes.TrimRight(line, "\r")
		trimmed := bytes.TrimLeft(line, " \t")
		if len(trimmed) == 0 || trimmed[0] == '#' {
			continue
		}
		e, err := parseHistoryLine(trimmed)
		if err != nil {
			return History{}, fmt.Errorf("%w: %s line %d: %v", ErrInvalidHistory, HistoryFileName(tli), lineNo, err)
		}
		if n := len(h.Entries); n > 0 {
			prev := h.Entries[n-1]
			if e.Parent <= prev.Parent {
				return History{}, fmt.Errorf("%w: %s line %d: timeline %d follows timeline %d; timeline IDs must increase",
					ErrInvalidHistory, HistoryFileName(tli), lineNo, e.Parent, prev.Parent)
			}
			if e.SwitchPoint < prev.SwitchPoint {
				return History{}, fmt.Errorf("%w: %s line %d: switch point %s of timeline %d is before switch point %s of timeline %d",
					ErrInvalidHistory, HistoryFileName(tli), lineNo, e.SwitchPoint, e.Parent, prev.SwitchPoint, prev.Parent)
			}
		}
		if e.Parent >= tli {
			return History{}, fmt.Errorf("%w: %s line %d: ancestor timeline %d is not below %d",
				ErrInvalidHistory, HistoryFileName(tli), lineNo, e.Parent, tli)
		}
		h.Entries = append(h.Entries, e)
	}
	return h, nil
}

// parseHistoryLine reads "<tli>\t<lsn>\t<reason>". PostgreSQL scans the first
// two fields with sscanf("%u\t%X/%X"), so any whitespace separates them;
// the reason is the rest of the line and may be missing in hand-made files.
func parseHistoryLine(line []byte) (HistoryEntry, error) {
	f1, rest := splitField(line)
	f2, rest := splitField(rest)
	if len(f1) == 0 || len(f2) == 0 {
		return HistoryEntry{}, errors.New("want <timeline>\\t<switch point>\\t<reason>")
	}
	tli, err := strconv.ParseUint(string(f1), 10, 32)
	if err != nil || tli == 0 || f1[0] == '+' {
		return HistoryEntry{}, fmt.Errorf("timeline %q is not a positive number", f1)
	}
	lsn, err := ParseLSN(string(f2))
	if err != nil {
		return HistoryEntry{}, err
	}
	return HistoryEntry{Parent: TimelineID(tli), SwitchPoint: lsn, Reason: string(bytes.TrimSpace(rest))}, nil
}

func splitField(b []byte) (field, rest []byte) {
	b = bytes.TrimLeft(b, " \t")
	i := bytes.IndexAny(b, " \t")
	if i < 0 {
		return b, nil
	}
	return b[:i], b[i:]
}

// Encode writes the history in PostgreSQL's own format
// (writeTimeLineHistory): each promotion copies the parent's file and
// appends "\n<tli>\t<lsn>\t<reason>\n", so entries after the first are
// separated by a blank line. A file PostgreSQL wrote encodes back to the same
// bytes; tidemark still archives history files byte for byte.
func (h History) Encode() []byte {
	var b []byte
	for i, e := range h.Entries {
		if i > 0 {
			b = append(b, '\n')
		}
		b = strconv.AppendUint(b, uint64(e.Parent), 10)
		b = append(b, '\t')
		b = e.SwitchPoint.appendText(b)
		b = append(b, '\t')
		b = append(b, e.Reason...)
		b = append(b, '\n')
	}
	return b
}

// TimelineSpan is the stretch of WAL that one timeline contributes to a
// history: from Begin (inclusive; 0 for the first) to End (exclusive; MaxLSN
// for the timeline the history belongs to, which has not ended).
type TimelineSpan struct {
	Timeline   TimelineID
	Begin, End LSN
}

// Spans returns the timelines of the history, oldest first, ending with
// h.Timeline itself.
func (h History) Spans() []TimelineSpan {
	spans := make([]TimelineSpan, 0, len(h.Entries)+1)
	begin := InvalidLSN
	for _, e := range h.Entries {
		spans = append(spans, TimelineSpan{Timeline: e.Parent, Begin: begin, End: e.SwitchPoint})
		begin = e.SwitchPoint
	}
	return append(spans, TimelineSpan{Timeline: h.Timeline, Begin: begin, End: MaxLSN})
}

// TimelineOf returns the timeline that wrote the WAL at lsn, as seen from
// h.Timeline (tliOfPointInHistory). A switch point belongs to the new
// timeline: the old one ended just before it.
func (h History) TimelineOf(lsn LSN) TimelineID {
	for _, e := range h.Entries {
		if lsn < e.SwitchPoint {
			return e.Parent
		}
	}
	return h.Timeline
}

// Contains reports whether tli is h.Timeline or one of its ancestors.
func (h History) Contains(tli TimelineID) bool {
	_, ok := h.End(tli)
	return ok
}

// End returns where tli ends in this history (tliSwitchPoint): its switch
// point for an ancestor, MaxLSN for h.Timeline itself. ok is false when tli
// is not part of the history.
func (h History) End(tli TimelineID) (end LSN, ok bool) {
	if tli == h.Timeline {
		return MaxLSN, true
	}
	for _, e := range h.Entries {
		if e.Parent == tli {
			return e.SwitchPoint, true
		}
	}
	return 0, false
}

// CanRecoverFrom reports whether a backup taken on timeline tli that becomes
// consistent at lsn (its stop LSN, which recovery must reach) can be
// recovered into h.Timeline: tli must be in the history and must not have
// ended before lsn. PostgreSQL refuses the same cases with "requested
// timeline is not a child of this server's history" and "does not contain
// minimum recovery point".
func (h History) CanRecoverFrom(tli TimelineID, lsn LSN) bool {
	end, ok := h.End(tli)
	return ok && lsn <= end
}

// SegmentTimeline returns the timeline whose copy of segment seg recovery
// along h.Timeline reads (the choice XLogFileReadAnyTLI makes): the newest
// timeline in the history that had begun by the start of that segment. The
// segment holding a switch point exists on both timelines; recovery reads
// the new timeline's copy, which holds the old WAL up to the switch point.
func (h History) SegmentTimeline(seg SegNo, segSize uint32) TimelineID {
	for i := len(h.Entries) - 1; i >= 0; i-- {
		if h.Entries[i].SwitchPoint.Segment(segSize) <= seg {
			return h.nextAfter(i)
		}
	}
	if len(h.Entries) > 0 {
		return h.Entries[0].Parent
	}
	return h.Timeline
}

// nextAfter returns the timeline that began at entry i's switch point.
func (h History) nextAfter(i int) TimelineID {
	if i+1 < len(h.Entries) {
		return h.Entries[i+1].Parent
	}
	return h.Timeline
}

// Extends checks that h is a history descending from parent: every timeline
// of parent's history appears in h with the same switch point, and parent's
// own timeline appears next. A pair of history files in the archive that fail
// this do not describe one cluster's past.
func (h History) Extends(parent History) error {
	if len(h.Entries) <= len(parent.Entries) {
		return fmt.Errorf("%w: %s does not descend from timeline %d", ErrInvalidHistory, HistoryFileName(h.Timeline), parent.Timeline)
	}
	for i, pe := range parent.Entries {
		e := h.Entries[i]
		if e.Parent != pe.Parent || e.SwitchPoint != pe.SwitchPoint {
			return fmt.Errorf("%w: %s says timeline %d ended at %s, %s says timeline %d ended at %s",
				ErrInvalidHistory, HistoryFileName(h.Timeline), e.Parent, e.SwitchPoint,
				HistoryFileName(parent.Timeline), pe.Parent, pe.SwitchPoint)
		}
	}
	if next := h.Entries[len(parent.Entries)].Parent; next != parent.Timeline {
		return fmt.Errorf("%w: %s has timeline %d where %s expects %d",
			ErrInvalidHistory, HistoryFileName(h.Timeline), next, HistoryFileName(parent.Timeline), parent.Timeline)
	}
	return nil
}
