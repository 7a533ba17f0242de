package pg

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestHistoryFixtures(t *testing.T) {
	for _, major := range fixtureMajors {
		for _, tli := range []TimelineID{2, 3} {
			b := readFixture(t, major, HistoryFileName(tli))
			h, err := ParseHistory(tli, b)
			if err != nil {
				t.Fatalf("pg%d %s: %v", major, HistoryFileName(tli), err)
			}
			if len(h.Entries) != int(tli-1) {
				t.Fatalf("pg%d %s: %d entries", major, HistoryFileName(tli), len(h.Entries))
			}
			for i, e := range h.Entries {
				if e.Parent != TimelineID(i+1) || e.Reason != "no recovery target specified" || !e.SwitchPoint.IsValid() {
					t.Errorf("pg%d %s entry %d: %+v", major, HistoryFileName(tli), i, e)
				}
			}
			// PostgreSQL's own format, blank lines and all, encodes back.
			if got := h.Encode(); string(got) != string(b) {
				t.Errorf("pg%d %s: Encode = %q, file %q", major, HistoryFileName(tli), got, b)
			}
		}
		h2, _ := ParseHistory(2, readFixture(t, major, "00000002.history"))
		h3, _ := ParseHistory(3, readFixture(t, major, "00000003.history"))
		if err := h3.Extends(h2); err != nil {
			t.Errorf("pg%d: 3 does not extend 2: %v", major, err)
		}
		if err := h2.Extends(h3); err == nil {
			t.Errorf("pg%d: 2 extends 3", major)
		}
	}
}

// A history like 00000005.history after promotions at 0/3000000 (1->2),
// 0/5000000 (2->4; timeline 3 was used by another branch), 1/0 (4->5).
const history5 = `1	0/3000000	no recovery target specified

2	0/5000000	before 2024-05-01 10:00:00+00

# a comment PostgreSQL would ignore
  4	1/0	at restore point "x"
`

func TestHistoryQueries(t *testing.T) {
	h, err := ParseHistory(5, []byte(history5))
	if err != nil {
		t.Fatal(err)
	}
	want := []HistoryEntry{
		{1, 0x3000000, "no recovery target specified"},
		{2, 0x5000000, "before 2024-05-01 10:00:00+00"},
		{4, 0x1_00000000, `at restore point "x"`},
	}
	if !reflect.DeepEqual(h.Entries, want) {
		t.Fatalf("entries %+v", h.Entries)
	}
	for _, tt := range []struct {
		lsn  LSN
		want TimelineID
	}{
		{0, 1}, {0x2FFFFFF, 1}, {0x3000000, 2}, {0x4FFFFFF, 2}, {0x5000000, 4}, {0xFFFFFFFF, 4}, {0x1_00000000, 5}, {MaxLSN, 5},
	} {
		if got := h.TimelineOf(tt.lsn); got != tt.want {
			t.Errorf("TimelineOf(%s) = %d, want %d", tt.lsn, got, tt.want)
		}
	}
	for _, tt := range []struct {
		tli  TimelineID
		lsn  LSN
		want bool
	}{
		{1, 0x2000000, true},
		{1, 0x3000000, true}, // consistent exactly at the switch point
		{1, 0x3000001, false},
		{2, 0x4000000, true},
		{3, 0x4000000, false}, // not an ancestor
		{4, 0x9000000, true},
		{5, 0x5_00000000, true},
		{6, 0x1000, false},
	} {
		if got := h.CanRecoverFrom(tt.tli, tt.lsn); got != tt.want {
			t.Errorf("CanRecoverFrom(%d, %s) = %v, want %v", tt.tli, tt.lsn, got, tt.want)
		}
	}
	if h.Contains(3) || !h.Contains(4) || !h.Contains(5) {
		t.Error("Contains")
	}
	if end, ok := h.End(5); !ok || end != MaxLSN {
		t.Error("End of the history's own timeline")
	}
	wantSpans := []TimelineSpan{
		{1, 0, 0x3000000}, {2, 0x3000000, 0x5000000}, {4, 0x5000000, 0x1_00000000}, {5, 0x1_00000000, MaxLSN},
	}
	if got := h.Spans(); !reflect.DeepEqual(got, wantSpans) {
		t.Errorf("Spans = %+v", got)
	}
	const seg16 = 16 << 20
	for _, tt := range []struct {
		seg  SegNo
		want TimelineID
	}{
		{1, 1}, {2, 1}, {3, 2}, {4, 2}, {5, 4}, {0xFF, 4}, {0x100, 5}, {0x1000, 5},
	} {
		if got := h.SegmentTimeline(tt.seg, seg16); got != tt.want {
			t.Errorf("SegmentTimeline(%#x) = %d, want %d", tt.seg, got, tt.want)
		}
	}
	// A switch in the middle of segment 3: recovery reads segment 3 from the
	// new timeline, which has the old WAL up to the switch point.
	mid, _ := ParseHistory(2, []byte("1\t0/3800000\tx\n"))
	if mid.SegmentTimeline(2, seg16) != 1 || mid.SegmentTimeline(3, seg16) != 2 {
		t.Error("SegmentTimeline at a mid-segment switch")
	}
	one, _ := ParseHistory(1, nil)
	if one.TimelineOf(0x1234) != 1 || one.SegmentTimeline(9, seg16) != 1 || len(one.Spans()) != 1 || len(one.Encode()) != 0 {
		t.Error("timeline 1's empty history")
	}
}

func TestParseHistoryErrors(t *testing.T) {
	tests := []struct {
		name string
		tli  TimelineID
		in   string
		want string
	}{
		{"timeline 0", 0, "", "timeline 0"},
		{"missing lsn", 2, "1\n", "want <timeline>"},
		{"bad tli", 2, "x\t0/1\tr\n", "not a positive number"},
		{"zero tli", 2, "0\t0/1\tr\n", "not a positive number"},
		{"bad lsn", 2, "1\t0/G\tr\n", "invalid LSN"},
		{"not increasing", 4, "1\t0/1\ta\n2\t0/2\tb\n2\t0/3\tc\n", "line 3: timeline 2 follows timeline 2"},
		{"switch point backwards", 4, "1\t0/5\ta\n2\t0/2\tb\n", "switch point 0/2 of timeline 2 is before"},
		{"ancestor not below", 2, "1\t0/1\ta\n2\t0/2\tb\n", "ancestor timeline 2 is not below 2"},
	}
	for _, tt := range tests {
		_, err := ParseHistory(tt.tli, []byte(tt.in))
		if !errors.Is(err, ErrInvalidHistory) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	// Equal switch points are allowed: a promotion before any WAL was
	// written on the intermediate timeline.
	if _, err := ParseHistory(3, []byte("1\t0/5\ta\n2\t0/5\tb\n")); err != nil {
		t.Errorf("equal switch points: %v", err)
	}
	// No reason, CRLF line ends and spaces instead of tabs, as a hand-edited
	// file may have.
	h, err := ParseHistory(2, []byte("1 0/30000A0\r\n"))
	if err != nil || h.Entries[0].SwitchPoint != 0x30000A0 || h.Entries[0].Reason != "" {
		t.Errorf("lenient line: %+v %v", h, err)
	}
}

func TestHistoryExtends(t *testing.T) {
	h2, _ := ParseHistory(2, []byte("1\t0/3000000\ta\n"))
	h3, _ := ParseHistory(3, []byte("1\t0/3000000\ta\n\n2\t0/5000000\tb\n"))
	bad3, _ := ParseHistory(3, []byte("1\t0/3000001\ta\n\n2\t0/5000000\tb\n"))
	sibling, _ := ParseHistory(4, []byte("1\t0/3000000\ta\n\n3\t0/5000000\tb\n"))
	if err := h3.Extends(h2); err != nil {
		t.Error(err)
	}
	for _, tt := range []struct {
		child, parent History
	}{{bad3, h2}, {sibling, h2}, {h2, h3}} {
		if err := tt.child.Extends(tt.parent); !errors.Is(err, ErrInvalidHistory) {
			t.Errorf("%d extends %d: %v", tt.child.Timeline, tt.parent.Timeline, err)
		}
	}
}

func FuzzParseHistory(f *testing.F) {
	f.Add(uint32(5), []byte(history5))
	f.Add(uint32(3), readFixture(f, 18, "00000003.history"))
	f.Add(uint32(2), []byte("1\t0/1"))
	f.Fuzz(func(t *testing.T, tli uint32, b []byte) {
		h, err := ParseHistory(TimelineID(tli), b)
		if err != nil {
			if !errors.Is(err, ErrInvalidHistory) {
				t.Fatalf("error %v does not match ErrInvalidHistory", err)
			}
			return
		}
		// Encoding is lossless for what was parsed, up to whitespace in
		// the reason.
		again, err := ParseHistory(h.Timeline, h.Encode())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", h.Encode(), err)
		}
		if len(again.Entries) != len(h.Entries) {
			t.Fatalf("round trip lost entries: %+v vs %+v", h, again)
		}
		for i := range h.Entries {
			a, b := h.Entries[i], again.Entries[i]
			if a.Parent != b.Parent || a.SwitchPoint != b.SwitchPoint {
				t.Fatalf("round trip changed entry %d: %+v vs %+v", i, a, b)
			}
		}
		spans := h.Spans()
		for i, s := range spans {
			if s.Begin > s.End || (i > 0 && spans[i-1].End != s.Begin) {
				t.Fatalf("spans not contiguous: %s", fmt.Sprint(spans))
			}
			if s.Begin < s.End && h.TimelineOf(s.Begin) != s.Timeline {
				t.Fatalf("TimelineOf(%s) = %d, span says %d", s.Begin, h.TimelineOf(s.Begin), s.Timeline)
			}
		}
	})
}
