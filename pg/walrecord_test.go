package pg_test

import (
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
)

var t0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

func walSegment(tli pg.TimelineID, seg pg.SegNo, sysid uint64, commits []time.Time) []byte {
	return pgtest.Segment(tli, seg, 1<<20, sysid, commits)
}

func TestLastCommitTime(t *testing.T) {
	commits := []time.Time{t0, t0.Add(time.Second), t0.Add(time.Minute + 123*time.Microsecond)}
	seg := walSegment(1, 5, 1, commits)
	got, found, err := pg.LastCommitTime(seg)
	if err != nil || !found || !got.Equal(commits[2]) {
		t.Fatalf("got %v %v %v", got, found, err)
	}
	got, found, err = pg.LastCommitTime(walSegment(1, 5, 1, nil))
	if err != nil || found {
		t.Errorf("no commits: %v %v %v", got, found, err)
	}
	// A corrupt record ends the scan at the record before it.
	bad := walSegment(1, 5, 1, commits)
	idx := lastIndex(bad, commits[2])
	bad[idx] ^= 0xFF
	got, found, _ = pg.LastCommitTime(bad)
	if !found || !got.Equal(commits[1]) {
		t.Errorf("after corruption: %v %v", got, found)
	}
}

func lastIndex(seg []byte, ts time.Time) int {
	us := uint64(pg.ToTimestampTz(ts))
	for i := len(seg) - 8; i >= 0; i-- {
		v := uint64(0)
		for j := 7; j >= 0; j-- {
			v = v<<8 | uint64(seg[i+j])
		}
		if v == us {
			return i
		}
	}
	return -1
}

func FuzzLastCommitTime(f *testing.F) {
	f.Add(walSegment(1, 5, 1, []time.Time{t0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Any bytes: no panic, no endless loop.
		pg.LastCommitTime(b)
		if len(b) > 100 {
			seg := walSegment(1, 5, 1, []time.Time{t0})
			copy(seg[40:], b)
			pg.LastCommitTime(seg)
		}
	})
}
