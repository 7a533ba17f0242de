package pg

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateWALSegSize(t *testing.T) {
	for _, size := range []uint64{1 << 20, 2 << 20, 16 << 20, 64 << 20, 1 << 30} {
		if err := ValidateWALSegSize(size); err != nil {
			t.Errorf("%d: %v", size, err)
		}
	}
	for _, size := range []uint64{0, 1, 512 << 10, 3 << 20, 2 << 30, 1<<20 + 1} {
		if err := ValidateWALSegSize(size); !errors.Is(err, ErrInvalidWALSegSize) {
			t.Errorf("%d: err = %v", size, err)
		}
	}
}

func TestSegmentName(t *testing.T) {
	tests := []struct {
		tli     TimelineID
		seg     SegNo
		segSize uint32
		want    string
	}{
		{1, 1, 16 << 20, "000000010000000000000001"},
		{1, 0xFF, 16 << 20, "0000000100000000000000FF"},
		{1, 0x100, 16 << 20, "000000010000000100000000"},
		{0x2A, 0x16B3, 16 << 20, "0000002A00000016000000B3"},
		{1, 5, 1 << 30, "000000010000000100000001"},
		{1, 0x1000, 1 << 20, "000000010000000100000000"},
		{0xFFFFFFFF, 0xFFFFFFFF_FF, 16 << 20, "FFFFFFFFFFFFFFFF000000FF"},
	}
	for _, tt := range tests {
		got := SegmentName(tt.tli, tt.seg, tt.segSize)
		if got != tt.want {
			t.Errorf("SegmentName(%d, %#x, %d) = %s, want %s", tt.tli, tt.seg, tt.segSize, got, tt.want)
		}
		f, err := ParseWALFileName(got)
		if err != nil || f.Kind != WALSegment || f.Timeline != tt.tli {
			t.Fatalf("ParseWALFileName(%s) = %+v, %v", got, f, err)
		}
		if seg, err := f.SegNo(tt.segSize); err != nil || seg != tt.seg {
			t.Errorf("SegNo(%s) = %#x, %v; want %#x", got, seg, err, tt.seg)
		}
		if f.Name() != got || f.SegmentName() != got || f.LogDir() != got[:16] {
			t.Errorf("%s: Name %s SegmentName %s LogDir %s", got, f.Name(), f.SegmentName(), f.LogDir())
		}
	}
}

func TestParseWALFileName(t *testing.T) {
	tests := []struct {
		name string
		want WALFile
		ok   bool
	}{
		{"000000010000000000000001", WALFile{Kind: WALSegment, Timeline: 1, Log: 0, Seg: 1}, true},
		{"00000002000000A3000000FF.partial", WALFile{Kind: WALPartialSegment, Timeline: 2, Log: 0xA3, Seg: 0xFF}, true},
		{"000000010000000000000002.00000028.backup", WALFile{Kind: WALBackupHistory, Timeline: 1, Seg: 2, Offset: 0x28}, true},
		{"00000003.history", WALFile{Kind: WALTimelineHistory, Timeline: 3}, true},
		{"0000000A.history", WALFile{Kind: WALTimelineHistory, Timeline: 10}, true},
		{"00000000.history", WALFile{}, false},
		{"000000000000000000000001", WALFile{}, false},
		{"00000001000000000000000a", WALFile{}, false}, // lower case
		{"0000000a.history", WALFile{}, false},
		{"00000001000000000000001", WALFile{}, false},
		{"0000000100000000000000011", WALFile{}, false},
		{"000000010000000000000001.ready", WALFile{}, false},
		{"000000010000000000000001.done", WALFile{}, false},
		{"000000010000000000000001.0000028.backup", WALFile{}, false},
		{"000000010000000000000001.0000002G.backup", WALFile{}, false},
		{"000000010000000000000001.00000028.backupx", WALFile{}, false},
		{"000000010000000000000001.partial.gz", WALFile{}, false},
		{"archive_status", WALFile{}, false},
		{"", WALFile{}, false},
		{"1.history", WALFile{}, false},
	}
	for _, tt := range tests {
		got, err := ParseWALFileName(tt.name)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseWALFileName(%q) = %+v, %v; want %+v ok=%v", tt.name, got, err, tt.want, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrNotWALFile) {
				t.Errorf("%q: %v does not match ErrNotWALFile", tt.name, err)
			}
			continue
		}
		if got.Name() != tt.name {
			t.Errorf("Name() = %q, want %q", got.Name(), tt.name)
		}
	}
}

func TestWALFileDetails(t *testing.T) {
	h, _ := ParseWALFileName("00000003.history")
	if h.LogDir() != "" || h.SegmentName() != "" {
		t.Error("history file has a log dir or segment")
	}
	if _, err := h.SegNo(16 << 20); err == nil {
		t.Error("history file has a SegNo")
	}
	p, _ := ParseWALFileName("00000002000000A3000000FF.partial")
	if p.SegmentName() != "00000002000000A3000000FF" || p.LogDir() != "00000002000000A3" {
		t.Errorf("partial: %s %s", p.SegmentName(), p.LogDir())
	}
	// 000001FF is fine with 1 MiB segments, not with 16 MiB ones.
	f, _ := ParseWALFileName("0000000100000000000001FF")
	if _, err := f.SegNo(16 << 20); !errors.Is(err, ErrNotWALFile) {
		t.Errorf("out of range seg: %v", err)
	}
	if seg, err := f.SegNo(1 << 20); err != nil || seg != 0x1FF {
		t.Errorf("1 MiB: %v %v", seg, err)
	}

	// The fixture backup history file name comes from the label's start.
	const name = "000000010000000000000002.00000028.backup"
	if got := BackupHistoryFileName(1, 0x2000028, 16<<20); got != name {
		t.Errorf("BackupHistoryFileName = %s", got)
	}
	b, _ := ParseWALFileName(name)
	if start, err := b.StartLSN(16 << 20); err != nil || start != 0x2000028 {
		t.Errorf("StartLSN = %s, %v", start, err)
	}
	if _, err := p.StartLSN(16 << 20); err == nil {
		t.Error("StartLSN of a partial segment")
	}
	big, _ := ParseWALFileName("000000010000000000000002.FF000000.backup")
	if _, err := big.StartLSN(16 << 20); err == nil {
		t.Error("StartLSN with an offset beyond the segment")
	}
	if HistoryFileName(0x1F) != "0000001F.history" {
		t.Error("HistoryFileName")
	}
	for k := WALSegment; k <= WALTimelineHistory+1; k++ {
		if k.String() == "" {
			t.Error("empty kind string")
		}
	}
}

func FuzzParseWALFileName(f *testing.F) {
	for _, s := range []string{"000000010000000000000001", "00000002000000A3000000FF.partial",
		"000000010000000000000002.00000028.backup", "00000003.history", "junk"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		w, err := ParseWALFileName(name)
		if err != nil {
			return
		}
		if w.Name() != name {
			t.Fatalf("%q parsed to %+v which names itself %q", name, w, w.Name())
		}
		if w.Kind != WALTimelineHistory && !strings.HasPrefix(name, w.LogDir()) {
			t.Fatalf("LogDir %q is not a prefix of %q", w.LogDir(), name)
		}
		for _, size := range []uint32{1 << 20, 16 << 20, 1 << 30} {
			if seg, err := w.SegNo(size); err == nil {
				if got := SegmentName(w.Timeline, seg, size); got != w.SegmentName() {
					t.Fatalf("%q: segment %#x with size %d names %q", name, seg, size, got)
				}
			}
		}
	})
}
