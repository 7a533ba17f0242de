package pg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestSegmentHeaderFixtures(t *testing.T) {
	for _, major := range fixtureMajors {
		b := readFixture(t, major, "wal.head")
		ctl, err := ParseControlFile(readFixture(t, major, "pg_control"))
		if err != nil {
			t.Fatal(err)
		}
		h, err := ParseSegmentHeader(b)
		if err != nil {
			t.Fatalf("pg%d: %v", major, err)
		}
		if h.Major != major {
			t.Errorf("pg%d: magic %#04x maps to %d", major, h.Magic, h.Major)
		}
		if magic, _ := WALMagic(major); magic != h.Magic {
			t.Errorf("pg%d: WALMagic = %#04x, WAL has %#04x", major, magic, h.Magic)
		}
		if h.PageAddr != 0x1000000 || h.Timeline != 1 || h.SegSize != ctl.WALSegSize || h.BlockSize != ctl.WALBlockSize {
			t.Errorf("pg%d: header %+v", major, h)
		}
		// The segment comes from the same cluster as the pg_control fixture.
		if err := h.CheckSystem(ctl.SystemIdentifier); err != nil {
			t.Errorf("pg%d: %v", major, err)
		}
		if err := h.CheckSystem(ctl.SystemIdentifier + 1); !errors.Is(err, ErrInvalidWALHeader) {
			t.Errorf("pg%d: foreign system accepted: %v", major, err)
		}
		for _, name := range []string{"000000010000000000000001", "000000010000000000000001.partial", "000000020000000000000001"} {
			if err := h.CheckName(name); err != nil {
				t.Errorf("pg%d: CheckName(%s): %v", major, name, err)
			}
		}
		for _, name := range []string{"000000010000000000000002", "000000010000000100000001", "00000002.history", "000000010000000000000001.00000028.backup", "junk"} {
			if err := h.CheckName(name); err == nil {
				t.Errorf("pg%d: CheckName(%s) accepted", major, name)
			}
		}
		// The second page has the short header and continues a record.
		p2, err := ParseWALPageHeader(b[DefaultWALBlockSize:])
		if err != nil || p2.IsLong() || p2.Magic != h.Magic || p2.PageAddr != 0x1002000 || p2.Info&XLPFirstIsContRecord == 0 || p2.RemLen == 0 {
			t.Errorf("pg%d: second page %+v, %v", major, p2, err)
		}
		if _, err := ParseSegmentHeader(b[DefaultWALBlockSize:]); err == nil {
			t.Errorf("pg%d: a short header passed as a segment header", major)
		}
	}
}

func TestSegmentHeaderErrors(t *testing.T) {
	good := readFixture(t, 17, "wal.head")[:WALLongPageHeaderSize]
	le := binary.LittleEndian
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "shorter than a WAL page header"},
		{"short long header", good[:30], "shorter than a long WAL page header"},
		{"PostgreSQL 12 magic", mut(func(b []byte) { le.PutUint16(b, 0xD101) }), "magic 0xd101"},
		{"zero page", make([]byte, 64), "magic 0x0000"},
		{"undefined info bit", mut(func(b []byte) { le.PutUint16(b[2:], 0x12) }), "undefined bits"},
		{"short header", mut(func(b []byte) { le.PutUint16(b[2:], 0) }), "long header flag"},
		{"bad seg size", mut(func(b []byte) { le.PutUint32(b[32:], 1000) }), "xlp_seg_size"},
		{"bad block size", mut(func(b []byte) { le.PutUint32(b[36:], 100) }), "xlp_xlog_blcksz"},
		{"mid-segment address", mut(func(b []byte) { le.PutUint64(b[8:], 0x1002000) }), "not the start of a segment"},
		{"timeline 0", mut(func(b []byte) { le.PutUint32(b[4:], 0) }), "xlp_tli is 0"},
	}
	for _, tt := range tests {
		_, err := ParseSegmentHeader(tt.b)
		if !errors.Is(err, ErrInvalidWALHeader) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	// A first record from a newer timeline than the file's name is wrong.
	h, _ := ParseSegmentHeader(mut(func(b []byte) { le.PutUint32(b[4:], 3) }))
	if err := h.CheckName("000000020000000000000001"); !errors.Is(err, ErrInvalidWALHeader) {
		t.Errorf("newer timeline on page: %v", err)
	}
	// 16 MiB segment number 0x100 sits at 1/0.
	h, _ = ParseSegmentHeader(mut(func(b []byte) { le.PutUint64(b[8:], 0x1_00000000) }))
	if err := h.CheckName("000000010000000100000000"); err != nil {
		t.Errorf("segment at 1/0: %v", err)
	}
	if err := h.CheckName("0000000100000001000001FF"); !errors.Is(err, ErrInvalidWALHeader) {
		t.Errorf("out of range name: %v", err)
	}
}

func TestWALMagicTable(t *testing.T) {
	want := map[int]uint16{13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}
	for major := 10; major <= 20; major++ {
		m, ok := WALMagic(major)
		if w, known := want[major]; ok != known || m != w {
			t.Errorf("WALMagic(%d) = %#x, %v", major, m, ok)
		}
		if ok {
			if back, ok := WALMagicMajor(m); !ok || back != major {
				t.Errorf("WALMagicMajor(%#x) = %d", m, back)
			}
		}
	}
	if _, ok := WALMagicMajor(0xD119); ok {
		t.Error("unknown magic accepted")
	}
}

func FuzzParseSegmentHeader(f *testing.F) {
	for _, major := range fixtureMajors {
		b := readFixture(f, major, "wal.head")
		f.Add(b[:WALLongPageHeaderSize])
		f.Add(b[DefaultWALBlockSize : DefaultWALBlockSize+WALShortPageHeaderSize])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParseWALPageHeader(b); err == nil && p.Info&^XLPAllFlags != 0 {
			t.Fatalf("undefined flags accepted: %+v", p)
		}
		h, err := ParseSegmentHeader(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidWALHeader) {
				t.Fatalf("error %v does not match ErrInvalidWALHeader", err)
			}
			return
		}
		if ValidateWALSegSize(uint64(h.SegSize)) != nil || h.Major < MinMajor || h.Major > MaxMajor {
			t.Fatalf("accepted %+v", h)
		}
		name := SegmentName(h.Timeline, h.PageAddr.Segment(h.SegSize), h.SegSize)
		if err := h.CheckName(name); err != nil {
			t.Fatalf("header does not match its own segment name %s: %v", name, err)
		}
	})
}
