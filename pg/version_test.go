package pg

import (
	"errors"
	"strings"
	"testing"
)

func TestMajorFromVersionNum(t *testing.T) {
	for _, tt := range []struct {
		num, want int
		ok        bool
	}{
		{130000, 13, true}, {140012, 14, true}, {150018, 15, true}, {160014, 16, true}, {170010, 17, true}, {180004, 18, true},
		{120020, 0, false}, {190000, 0, false}, {90624, 0, false}, {0, 0, false},
	} {
		got, err := MajorFromVersionNum(tt.num)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("MajorFromVersionNum(%d) = %d, %v", tt.num, got, err)
		}
		if err != nil && !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("%d: %v does not match ErrUnsupportedVersion", tt.num, err)
		}
	}
}

func TestParseVersionFile(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"16\n", 16, true}, {"13", 13, true}, {"18\r\n", 18, true},
		{"12\n", 0, false}, {"9.6\n", 0, false}, {"", 0, false}, {"+16\n", 0, false}, {"sixteen", 0, false},
	} {
		got, err := ParseVersionFile([]byte(tt.in))
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParseVersionFile(%q) = %d, %v", tt.in, got, err)
		}
	}
}

func TestVersionQuirks(t *testing.T) {
	for major := MinMajor; major <= MaxMajor; major++ {
		start, stop := BackupFunctionNames(major)
		if !strings.Contains(BackupStartSQL(major), start+"(") || !strings.Contains(BackupStopSQL(major), stop+"(") {
			t.Errorf("%d: SQL does not call %s/%s", major, start, stop)
		}
		if (major >= 15) != (start == "pg_backup_start") {
			t.Errorf("%d: start function %s", major, start)
		}
		if major < 15 && !strings.Contains(BackupStartSQL(major), "false)") {
			t.Errorf("%d: pre-15 start must ask for a non-exclusive backup: %s", major, BackupStartSQL(major))
		}
		if HasWALSummaries(major) != (major >= 17) || DataChecksumsByDefault(major) != (major >= 18) {
			t.Errorf("%d: feature flags", major)
		}
		if v, ok := ControlVersion(major); !ok || v == 0 {
			t.Errorf("%d: no control version", major)
		}
		if err := CheckMajor(major); err != nil {
			t.Error(err)
		}
	}
	if _, ok := ControlVersion(12); ok {
		t.Error("control version for 12")
	}
	if v, _ := ControlVersion(14); v != 1300 {
		t.Errorf("ControlVersion(14) = %d", v)
	}
}
