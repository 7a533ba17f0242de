package pg

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want LSN
		ok   bool
	}{
		{"16/B374D848", 0x16_B374D848, true},
		{"0/0", 0, true},
		{"0/1", 1, true},
		{"FFFFFFFF/FFFFFFFF", MaxLSN, true},
		{"16/b374d848", 0x16_B374D848, true},
		{"0/0149F0A8", 0x149F0A8, true}, // zero padded, as PostgreSQL 19 prints
		{"00000000/00000000", 0, true},
		{"", 0, false},
		{"16", 0, false},
		{"16/", 0, false},
		{"/1", 0, false},
		{"1/2/3", 0, false},
		{"100000000/0", 0, false},
		{"0/100000000", 0, false},
		{"G/0", 0, false},
		{"+1/0", 0, false},
		{"-1/0", 0, false},
		{"0x1/0", 0, false},
		{" 1/0", 0, false},
		{"1/0 ", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidLSN) {
			t.Errorf("ParseLSN(%q): error %v does not match ErrInvalidLSN", tt.in, err)
		}
	}
}

func TestLSNString(t *testing.T) {
	for _, tt := range []struct {
		lsn  LSN
		want string
	}{
		{0, "0/0"},
		{0x16_B374D848, "16/B374D848"},
		{0x149F0A8, "0/149F0A8"},
		{MaxLSN, "FFFFFFFF/FFFFFFFF"},
		{0xA_0000000A, "A/A"},
	} {
		if got := tt.lsn.String(); got != tt.want {
			t.Errorf("%#x.String() = %q, want %q", uint64(tt.lsn), got, tt.want)
		}
		back, err := ParseLSN(tt.want)
		if err != nil || back != tt.lsn {
			t.Errorf("round trip of %q: %v %v", tt.want, back, err)
		}
	}
}

func TestLSNJSON(t *testing.T) {
	type doc struct {
		Start LSN `json:"start"`
	}
	b, err := json.Marshal(doc{Start: 0x16_B374D848})
	if err != nil || string(b) != `{"start":"16/B374D848"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	var d doc
	if err := json.Unmarshal(b, &d); err != nil || d.Start != 0x16_B374D848 {
		t.Fatalf("Unmarshal = %v, %v", d, err)
	}
	if err := json.Unmarshal([]byte(`{"start":"nope"}`), &d); err == nil {
		t.Error("Unmarshal accepted a bad LSN")
	}
}

func TestLSNArithmetic(t *testing.T) {
	const seg16 = 16 << 20
	l := LSN(0x16_B374D848)
	if got := l.Segment(seg16); got != 0x16B3 {
		t.Errorf("Segment = %#x", got)
	}
	if got := l.SegmentOffset(seg16); got != 0x74D848 {
		t.Errorf("SegmentOffset = %#x", got)
	}
	if got := SegNo(0x16B3).Start(seg16); got != 0x16_B3000000 {
		t.Errorf("Start = %s", got)
	}
	// A boundary belongs to the next segment, but an end position at a
	// boundary is in the previous one.
	b := LSN(0x3000000)
	if b.Segment(seg16) != 3 || b.PrevSegment(seg16) != 2 || LSN(0x3000001).PrevSegment(seg16) != 3 || LSN(0).PrevSegment(seg16) != 0 {
		t.Error("boundary segment arithmetic is wrong")
	}
	if got := LSN(0x1_00000000).Segment(1 << 30); got != 4 {
		t.Errorf("1 GiB segments: Segment = %d", got)
	}
	if LSN(0x1234).PageStart(8192) != 0 || LSN(0x2001).PageStart(8192) != 0x2000 {
		t.Error("PageStart")
	}
	if l.Add(8) != l+8 || (MaxLSN-2).Add(5) != MaxLSN {
		t.Error("Add does not saturate")
	}
	if LSN(10).Sub(4) != 6 || LSN(4).Sub(10) != -6 || MaxLSN.Sub(0) != 1<<63-1 || LSN(0).Sub(MaxLSN) != -1<<63 {
		t.Error("Sub")
	}
	if InvalidLSN.IsValid() || !l.IsValid() {
		t.Error("IsValid")
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"16/B374D848", "0/0", "FFFFFFFF/FFFFFFFF", "0/0149F0A8", "x/y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			return
		}
		back, err := ParseLSN(l.String())
		if err != nil || back != l {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, l, l.String(), back, err)
		}
	})
}
