package drill

import (
	"testing"
	"time"
)

func TestParsePGTime(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2026-12-05 03:16:44.312193+00":   time.Date(2026, 12, 5, 3, 16, 44, 312193000, time.UTC),
		"2026-12-05 03:16:44+00":          time.Date(2026, 12, 5, 3, 16, 44, 0, time.UTC),
		"2026-12-05 08:46:44.5+05:30":     time.Date(2026, 12, 5, 3, 16, 44, 500000000, time.UTC),
		"2026-12-04 22:16:44.000001-05":   time.Date(2026, 12, 5, 3, 16, 44, 1000, time.UTC),
		" 2026-12-05 03:16:44.312193+00 ": time.Date(2026, 12, 5, 3, 16, 44, 312193000, time.UTC),
	} {
		got, err := parsePGTime(in)
		if err != nil || !got.Equal(want) {
			t.Errorf("parsePGTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parsePGTime("05/12/2026 03:16"); err == nil {
		t.Error("a non-ISO time parsed")
	}
	rp, ok := restorePointTime(`recovery stopping at restore point "a, time b", time 2026-12-05 03:16:44.312193+00`)
	if !ok || !rp.Equal(time.Date(2026, 12, 5, 3, 16, 44, 312193000, time.UTC)) {
		t.Errorf("restorePointTime: %v %v", rp, ok)
	}
	if _, ok := restorePointTime("consistent recovery state reached"); ok {
		t.Error("a time from a line without one")
	}
}
