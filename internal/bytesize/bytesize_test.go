package bytesize

import "testing"

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 20 << 20: "20.0 MiB", 5 << 29: "2.5 GiB", 3 << 40: "3.0 TiB",
	} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	for s, want := range map[string]int64{
		"0": 0, "512": 512, "512B": 512, "1k": 1 << 10, "1K": 1 << 10, "1kB": 1 << 10, "1KB": 1 << 10, "1KiB": 1 << 10,
		"100MB": 100 << 20, "100MiB": 100 << 20, "100M": 100 << 20, "200 MiB": 200 << 20, "1.5G": 3 << 29,
		"2GB": 2 << 30, "1T": 1 << 40, " 64MiB ": 64 << 20,
		// PostgreSQL's current_setting forms (wal_segment_size).
		"16MB": 16 << 20, "8kB": 8192, "1GB": 1 << 30, "4096": 4096,
	} {
		if got, err := Parse(s); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "MiB", "-1", "1 XB", "ten", "NaN", "9999999999T", "1e30"} {
		if got, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", s, got)
		}
	}
}
