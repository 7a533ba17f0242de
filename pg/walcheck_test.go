package pg_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
)

const (
	checkSegSize = 1 << 20
	checkSysID   = 7000000000000000001
)

// fullSegment is segment 5 of timeline tli with WAL on every page but the
// last two, which are zero as after XLOG_SWITCH.
func fullSegment(tli pg.TimelineID) []byte {
	w := pgtest.NewSegmentWriter(tli, 5, checkSegSize, checkSysID)
	w.Record(pg.RMXLOG, pg.XLOGNoop, bytes.Repeat([]byte{7}, checkSegSize-3*pgtest.WALPageSize))
	return w.Bytes()
}

// runCheck feeds b to a check in pieces of size step.
func runCheck(name string, b []byte, step int) error {
	c, err := pg.NewWALSegmentCheck(name, checkSysID, checkSegSize, pgtest.WALPageSize)
	if err != nil {
		return err
	}
	for len(b) > 0 {
		n := min(step, len(b))
		if _, err := c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return c.Close()
}

func TestWALSegmentCheck(t *testing.T) {
	const name = "000000010000000000000005"
	good := fullSegment(1)
	page := func(i int) int { return i * pgtest.WALPageSize }
	le := binary.LittleEndian
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		file string
		b    []byte
		want string // "" passes
	}{
		{"good", name, good, ""},
		{"as partial", name + ".partial", good, ""},
		{"partial with a recycled tail", name + ".partial", mut(func(b []byte) []byte {
			le.PutUint64(b[page(100)+8:], 0x123456000) // an old segment's page
			b[page(101)] = 0xAA
			return b
		}), ""},
		{"partial cut mid-page", name + ".partial", good[:page(3)+100], ""},
		{"partial of one short page", name + ".partial", good[:100], ""},
		{"partial of garbage", name + ".partial", bytes.Repeat([]byte{1}, 100), "first page"},
		{"newer timeline name", "000000020000000000000005", good, ""},
		{"other segment's name", "000000010000000000000006", good, "starts at"},
		{"older timeline name", name, fullSegment(2), "timeline 2"},
		{"truncated", name, good[:page(40)], "bytes, a segment has"},
		{"truncated mid-page", name, good[:page(40)+5], "bytes, a segment has"},
		{"too long", name, append(bytes.Clone(good), 0), "more than the segment size"},
		{"empty", name, nil, "empty"},
		{"other system", name, mut(func(b []byte) []byte { le.PutUint64(b[24:], checkSysID+1); return b }), "system"},
		{"other page size", name, mut(func(b []byte) []byte { le.PutUint32(b[36:], 4096); return b }), "pages"},
		{"page address", name, mut(func(b []byte) []byte { le.PutUint64(b[page(7)+8:], 0x123456000); return b }), "page 7"},
		{"magic", name, mut(func(b []byte) []byte { le.PutUint16(b[page(9):], 0xD118); return b }), "magic"},
		{"long header mid-segment", name, mut(func(b []byte) []byte { b[page(9)+2] |= pg.XLPLongHeader; return b }), "long header"},
		{"undefined info bit", name, mut(func(b []byte) []byte { b[page(9)+2] |= 0x40; return b }), "undefined bits"},
		{"timeline goes back", name, mut(func(b []byte) []byte {
			for i := 1; i < 20; i++ {
				le.PutUint32(b[page(i)+4:], 0)
			}
			return b
		}), "timeline 0 after timeline 1"},
		{"zero page inside", name, mut(func(b []byte) []byte { clear(b[page(50):page(51)]); return b }), "not zero after an all-zero page"},
		{"garbage after the switch", name, mut(func(b []byte) []byte { b[page(127)+500] = 1; return b }), "page 127"},
		{"zero first page", name, mut(func(b []byte) []byte { clear(b[:page(1)]); return b }), "first page"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, step := range []int{1 << 30, 100, 8192, 3} {
				err := runCheck(tc.file, tc.b, step)
				switch {
				case tc.want == "" && err != nil:
					t.Fatalf("step %d: %v", step, err)
				case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
					t.Fatalf("step %d: got %v, want an error containing %q", step, err, tc.want)
				case err != nil && !errors.Is(err, pg.ErrInvalidWALHeader):
					t.Fatalf("step %d: %v does not match ErrInvalidWALHeader", step, err)
				}
			}
		})
	}
	for _, bad := range []string{"00000002.history", "junk"} {
		if _, err := pg.NewWALSegmentCheck(bad, 1, checkSegSize, 8192); err == nil {
			t.Errorf("NewWALSegmentCheck(%s) accepted", bad)
		}
	}
}

// FuzzWALSegmentCheck: any bytes, in any pieces, give the same verdict and
// never panic.
func FuzzWALSegmentCheck(f *testing.F) {
	good := fullSegment(1)
	f.Add(good[:3*pgtest.WALPageSize], uint16(100), false)
	f.Add(good[:40], uint16(7), true)
	f.Fuzz(func(t *testing.T, b []byte, step uint16, partial bool) {
		name := "000000010000000000000005"
		if partial {
			name += ".partial"
		}
		// Small inputs: pad to a segment with the good one's tail so that
		// the pages after the fuzzed ones are judged too.
		full := append(bytes.Clone(b), good[min(len(b), len(good)):]...)
		a := runCheck(name, full, 1<<30)
		z := runCheck(name, full, int(step)+1)
		if (a == nil) != (z == nil) || (a != nil && a.Error() != z.Error()) {
			t.Fatalf("whole: %v; in pieces of %d: %v", a, int(step)+1, z)
		}
	})
}
