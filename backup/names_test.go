package backup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// TestDirNamesSpill: a directory of more names than a batch is listed
// through sorted runs in the spill directory and read back complete, in
// order, with its unlogged relations and PG_VERSION found; when the runs
// cannot be written (the spill directory is missing), the same names come
// from memory.
func TestDirNamesSpill(t *testing.T) {
	dir := t.TempDir()
	want := []string{"PG_VERSION", "pg_filenode.map"}
	for i := range 2500 {
		want = append(want, strconv.Itoa(16384+i*7))
	}
	want = append(want, "20000_init", "20000", "20000_fsm")
	for _, n := range want {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	for _, tc := range []struct {
		name, spill string
		batch       int
		runs        bool
	}{
		{"spilled", t.TempDir(), 300, true},
		{"spill dir missing", filepath.Join(t.TempDir(), "gone"), 300, false},
		{"one batch", t.TempDir(), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dn, err := readDirNames(dir, tc.spill, tc.batch)
			if err != nil {
				t.Fatal(err)
			}
			defer dn.close()
			if got := len(dn.run) > 0; got != tc.runs {
				t.Fatalf("%d runs, %d in memory", len(dn.run), len(dn.mem))
			}
			if tc.runs && len(dn.mem) != 0 {
				t.Fatalf("%d names held in memory beside the runs", len(dn.mem))
			}
			var got []string
			if err := dn.each(func(n string) bool { got = append(got, n); return true }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) || dn.n != len(want) {
				t.Fatalf("%d names (n %d), want %d in order", len(got), dn.n, len(want))
			}
			all, err := dn.strings()
			if err != nil || !slices.Equal(all, want) {
				t.Fatalf("strings: %d names, %v", len(all), err)
			}
			if !dn.pgVersion || !dn.unlogged[20000] || len(dn.unlogged) != 1 {
				t.Fatalf("PG_VERSION %v, unlogged %v", dn.pgVersion, dn.unlogged)
			}
		})
	}
	if _, err := readDirNames(filepath.Join(dir, "nope"), t.TempDir(), 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing directory: %v", err)
	}
}
