package pg

import (
	"slices"
	"testing"
)

func TestClassifyBackupPath(t *testing.T) {
	tests := []struct {
		path  string
		isDir bool
		want  BackupAction
	}{
		{"PG_VERSION", false, BackupInclude},
		{"postgresql.conf", false, BackupInclude},
		{"postgresql.auto.conf", false, BackupInclude},
		{"postgresql.auto.conf.tmp", false, BackupSkip},
		{"current_logfiles.tmp", false, BackupSkip},
		{"postmaster.pid", false, BackupSkip},
		{"postmaster.opts", false, BackupSkip},
		{"backup_label", false, BackupSkip},
		{"backup_label.old", false, BackupInclude},
		{"tablespace_map", false, BackupSkip},
		{"backup_manifest", false, BackupSkip},
		{"recovery.signal", false, BackupSkip},
		{"standby.signal", false, BackupSkip},
		{"global", true, BackupInclude},
		{"global/pg_control", false, BackupInclude},
		{"global/pg_internal.init", false, BackupSkip},
		{"global/pg_internal.init.12345", false, BackupSkip},
		{"base", true, BackupInclude},
		{"base/5/16384", false, BackupInclude},
		{"base/5/pg_internal.init", false, BackupSkip},
		{"base/5/t3_16390", false, BackupSkip},
		{"base/5/t3_16390_fsm", false, BackupSkip},
		{"base/pgsql_tmp", true, BackupSkip},
		{"base/pgsql_tmp/pgsql_tmp1234.0", false, BackupSkip},
		{"pg_tblspc/16400/PG_16_202307071/pgsql_tmp", true, BackupSkip},
		{"pg_tblspc/16400/PG_16_202307071/16401/t7_16500.1", false, BackupSkip},
		{"pg_tblspc/16400/PG_16_202307071/16401/16500", false, BackupInclude},
		{"pg_wal", true, BackupInclude},
		{"pg_wal/000000010000000000000001", false, BackupSkip},
		{"pg_wal/00000002.history", false, BackupSkip},
		{"pg_wal/archive_status", true, BackupEmptyDir},
		{"pg_wal/summaries", true, BackupEmptyDir},
		{"pg_wal/xlogtemp.123", false, BackupSkip},
		{"pg_replslot", true, BackupEmptyDir},
		{"pg_dynshmem", true, BackupEmptyDir},
		{"pg_notify", true, BackupEmptyDir},
		{"pg_serial", true, BackupEmptyDir},
		{"pg_snapshots", true, BackupEmptyDir},
		{"pg_stat_tmp", true, BackupEmptyDir},
		{"pg_subtrans", true, BackupEmptyDir},
		{"pg_replslot", false, BackupInclude}, // a file of that name is not the directory
		{"pg_xact", true, BackupInclude},
		{"pg_xact/0000", false, BackupInclude},
		{"pg_multixact", true, BackupInclude},
		{"pg_stat", true, BackupInclude},
		{"pg_logical/snapshots", true, BackupInclude},
		{"log", true, BackupInclude},
		{"conf.d/backup_label", false, BackupInclude}, // only the top-level file is PostgreSQL's
	}
	for _, tt := range tests {
		if got := ClassifyBackupPath(tt.path, tt.isDir); got != tt.want {
			t.Errorf("ClassifyBackupPath(%q, dir=%v) = %v, want %v", tt.path, tt.isDir, got, tt.want)
		}
	}
	for a := BackupInclude; a <= BackupSkip+1; a++ {
		if a.String() == "" {
			t.Error("empty action name")
		}
	}
}

func TestUnloggedRelations(t *testing.T) {
	names := []string{
		"PG_VERSION", "pg_filenode.map", "112", "113",
		"16384", "16384_fsm", "16384_vm", "16384.1", "16384_init", // unlogged table
		"16390", "16390_init", // unlogged index
		"16400", "16400_fsm", // logged
		"t3_16500", "t3_16500_init", // temp: never an unlogged relation
	}
	unlogged := UnloggedRelations(names)
	if len(unlogged) != 2 || !unlogged[16384] || !unlogged[16390] {
		t.Fatalf("UnloggedRelations = %v", unlogged)
	}
	var kept []string
	for _, n := range names {
		if !SkipUnlogged(n, unlogged) {
			kept = append(kept, n)
		}
	}
	want := []string{"PG_VERSION", "pg_filenode.map", "112", "113", "16384_init", "16390_init", "16400", "16400_fsm", "t3_16500", "t3_16500_init"}
	if !slices.Equal(kept, want) {
		t.Errorf("kept %v, want %v", kept, want)
	}
	if UnloggedRelations([]string{"1", "2_fsm"}) != nil || SkipUnlogged("16384", nil) {
		t.Error("no init forks should mean no unlogged relations")
	}
}

func TestExclusionLists(t *testing.T) {
	// The lists are fresh copies: a caller cannot change them for others.
	BackupEmptiedDirs()[0] = "changed"
	BackupExcludedFiles()[0] = "changed"
	if BackupEmptiedDirs()[0] == "changed" || BackupExcludedFiles()[0] == "changed" {
		t.Error("exclusion lists are shared")
	}
	for _, d := range BackupEmptiedDirs() {
		if d != "pg_wal" && ClassifyBackupPath(d, true) != BackupEmptyDir {
			t.Errorf("%s is listed but not classified as emptied", d)
		}
	}
	for _, f := range BackupExcludedFiles() {
		if ClassifyBackupPath(f, false) != BackupSkip {
			t.Errorf("%s is listed but not skipped", f)
		}
	}
	d16, d17 := RequiredEmptyDirs(16), RequiredEmptyDirs(17)
	if slices.Contains(d16, "pg_wal/summaries") || !slices.Contains(d17, "pg_wal/summaries") ||
		!slices.Contains(d16, "pg_wal/archive_status") || !slices.Contains(d16, "pg_replslot") {
		t.Errorf("RequiredEmptyDirs: 16 %v, 17 %v", d16, d17)
	}
}
