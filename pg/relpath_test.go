package pg

import (
	"testing"
)

func TestParseRelPath(t *testing.T) {
	tests := []struct {
		path string
		want RelFile
		ok   bool
	}{
		{"base/5/16384", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16384}, true},
		{"base/5/16384_fsm", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16384, Fork: ForkFSM}, true},
		{"base/5/16384_vm", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16384, Fork: ForkVM}, true},
		{"base/5/16384_init", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16384, Fork: ForkInit}, true},
		{"base/5/16384.12", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16384, Segment: 12}, true},
		{"base/5/16384_fsm.1", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16384, Fork: ForkFSM, Segment: 1}, true},
		{"global/1262", RelFile{Tablespace: GlobalTablespaceOID, RelNumber: 1262}, true},
		{"global/1262_vm", RelFile{Tablespace: GlobalTablespaceOID, RelNumber: 1262, Fork: ForkVM}, true},
		{"pg_tblspc/16400/PG_16_202307071/16401/16402.3", RelFile{Tablespace: 16400, TablespaceDir: "PG_16_202307071", Database: 16401, RelNumber: 16402, Segment: 3}, true},
		{"base/5/t3_16390", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16390, Temp: true, Backend: 3}, true},
		{"base/5/t0_16390_fsm.2", RelFile{Tablespace: DefaultTablespaceOID, Database: 5, RelNumber: 16390, Fork: ForkFSM, Segment: 2, Temp: true, Backend: 0}, true},
		{"pg_tblspc/16400/PG_18_202506291/16401/t12_16500", RelFile{Tablespace: 16400, TablespaceDir: "PG_18_202506291", Database: 16401, RelNumber: 16500, Temp: true, Backend: 12}, true},
		{"base/4294967295/4294967295", RelFile{Tablespace: DefaultTablespaceOID, Database: 4294967295, RelNumber: 4294967295}, true},

		{"base/5/4294967296", RelFile{}, false},
		{"base/5/PG_VERSION", RelFile{}, false},
		{"base/5/pg_filenode.map", RelFile{}, false},
		{"base/5/pg_internal.init", RelFile{}, false},
		{"global/pg_control", RelFile{}, false},
		{"global/t3_1262", RelFile{}, false},
		{"base/5/016384", RelFile{}, false},
		{"base/5/0", RelFile{}, false},
		{"base/5/16384.0", RelFile{}, false},
		{"base/5/16384.01", RelFile{}, false},
		{"base/5/16384_main", RelFile{}, false},
		{"base/5/16384_fsm_vm", RelFile{}, false},
		{"base/5/16384.", RelFile{}, false},
		{"base/5/16384.1.2", RelFile{}, false},
		{"base/5/t_16384", RelFile{}, false},
		{"base/5/t3_", RelFile{}, false},
		{"base/5/", RelFile{}, false},
		{"base/x/16384", RelFile{}, false},
		{"base/0/16384", RelFile{}, false},
		{"base/5/pgsql_tmp/pgsql_tmp123.0", RelFile{}, false},
		{"base/5/6/16384", RelFile{}, false},
		{"pg_tblspc/16400/16401/16402", RelFile{}, false},
		{"pg_tblspc/16400/PG_16/16401/16402", RelFile{}, false},
		{"pg_wal/000000010000000000000001", RelFile{}, false},
		{"16384", RelFile{}, false},
		{"/base/5/16384", RelFile{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseRelPath(tt.path)
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseRelPath(%q) = %+v, %v; want %+v, %v", tt.path, got, ok, tt.want, tt.ok)
			continue
		}
		if ok && got.Path() != tt.path {
			t.Errorf("Path() = %q, want %q", got.Path(), tt.path)
		}
	}
}

func TestTablespaceNames(t *testing.T) {
	if got := TablespaceDir(16, 202307071); got != "PG_16_202307071" {
		t.Errorf("TablespaceDir = %s", got)
	}
	if m, c, ok := ParseTablespaceDir("PG_18_202506291"); !ok || m != 18 || c != 202506291 {
		t.Errorf("ParseTablespaceDir = %d %d %v", m, c, ok)
	}
	for _, bad := range []string{"PG_16", "PG__1", "PG_x_1", "pg_16_1", "PG_16_202307071_x", "PG_0_1"} {
		if _, _, ok := ParseTablespaceDir(bad); ok {
			t.Errorf("ParseTablespaceDir(%q) accepted", bad)
		}
	}
	if oid, ok := ParseTablespaceLink("pg_tblspc/16400"); !ok || oid != 16400 {
		t.Errorf("ParseTablespaceLink = %d %v", oid, ok)
	}
	for _, bad := range []string{"pg_tblspc/", "pg_tblspc/x", "pg_tblspc/1/2", "base/1"} {
		if _, ok := ParseTablespaceLink(bad); ok {
			t.Errorf("ParseTablespaceLink(%q) accepted", bad)
		}
	}
	for f := ForkMain; f <= ForkInit+1; f++ {
		if f.String() == "" {
			t.Error("empty fork name")
		}
	}
}

func FuzzParseRelPath(f *testing.F) {
	for _, s := range []string{"base/5/16384", "global/1262_vm", "pg_tblspc/16400/PG_16_202307071/16401/16402.3",
		"base/5/t3_16390_fsm.2", "base/5/PG_VERSION"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r, ok := ParseRelPath(path)
		if !ok {
			return
		}
		// One spelling per relation file: parsing is exactly invertible.
		if r.Path() != path {
			t.Fatalf("%q parsed to %+v, which is %q", path, r, r.Path())
		}
		ClassifyBackupPath(path, false)
	})
}
