package pg

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestBackupLabelFixtures(t *testing.T) {
	for _, major := range fixtureMajors {
		raw := readFixture(t, major, "backup_label")
		l, err := ParseBackupLabel(raw)
		if err != nil {
			t.Fatalf("pg%d: %v", major, err)
		}
		if !bytes.Equal(l.Raw, raw) {
			t.Errorf("pg%d: Raw is not the input", major)
		}
		raw[0] = 'X' // Raw is a copy, not an alias of the caller's buffer
		if l.Raw[0] != 'S' {
			t.Errorf("pg%d: Raw aliases the input", major)
		}
		if l.StartLSN != 0x2000028 || l.StartWALFile != "000000010000000000000002" || !l.CheckpointLSN.IsValid() ||
			l.Method != "streamed" || l.From != "primary" || l.Label != "tidemark fixture" || l.StartTimeline != 1 ||
			!strings.HasSuffix(l.StartTime, " UTC") || l.StopLSN != 0 || len(l.Other) != 0 {
			t.Errorf("pg%d: %+v", major, l)
		}
		if got := l.Encode(); !bytes.Equal(got, readFixture(t, major, "backup_label")) {
			t.Errorf("pg%d: Encode = %q", major, got)
		}
		// The start file is the start LSN's segment.
		if SegmentName(l.StartTimeline, l.StartLSN.Segment(DefaultWALSegSize), DefaultWALSegSize) != l.StartWALFile {
			t.Errorf("pg%d: start file %s does not hold %s", major, l.StartWALFile, l.StartLSN)
		}

		// The backup history file: the label plus the STOP lines, named
		// after the start.
		name := BackupHistoryFileName(l.StartTimeline, l.StartLSN, DefaultWALSegSize)
		hraw := readFixture(t, major, name)
		h, err := ParseBackupLabel(hraw)
		if err != nil {
			t.Fatalf("pg%d %s: %v", major, name, err)
		}
		if h.StartLSN != l.StartLSN || h.CheckpointLSN != l.CheckpointLSN || h.StopLSN <= h.StartLSN ||
			h.StopWALFile != "000000010000000000000002" || h.StopTimeline != 1 || h.StopTime == "" {
			t.Errorf("pg%d %s: %+v", major, name, h)
		}
		if got := h.Encode(); !bytes.Equal(got, hraw) {
			t.Errorf("pg%d %s: Encode = %q, file %q", major, name, got, hraw)
		}
	}
}

func TestBackupLabelIncremental(t *testing.T) {
	const in = "START WAL LOCATION: 0/6000028 (file 000000020000000000000006)\n" +
		"CHECKPOINT LOCATION: 0/6000080\n" +
		"BACKUP METHOD: streamed\n" +
		"BACKUP FROM: standby\n" +
		"START TIME: 2025-01-02 03:04:05 CET\n" +
		"LABEL: pg_basebackup base backup\n" +
		"START TIMELINE: 2\n" +
		"INCREMENTAL FROM LSN: 0/4000028\n" +
		"INCREMENTAL FROM TLI: 1\n" +
		"SOME FUTURE FIELD: 42\n"
	l, err := ParseBackupLabel([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if l.IncrementalFromLSN != 0x4000028 || l.IncrementalFromTLI != 1 || l.From != "standby" || l.StartTimeline != 2 ||
		len(l.Other) != 1 || l.Other[0] != "SOME FUTURE FIELD: 42" {
		t.Errorf("%+v", l)
	}
	if got := string(l.Encode()); got != in {
		t.Errorf("Encode = %q", got)
	}
	// Zero-padded LSNs, as newer servers print them, parse too.
	l, err = ParseBackupLabel([]byte("START WAL LOCATION: 0/06000028 (file 000000020000000000000006)\nCHECKPOINT LOCATION: 0/06000080\n"))
	if err != nil || l.StartLSN != 0x6000028 {
		t.Errorf("padded: %+v %v", l, err)
	}
}

func TestBackupLabelErrors(t *testing.T) {
	const start = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
	const ckpt = "CHECKPOINT LOCATION: 0/2000060\n"
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "required"},
		{"no checkpoint", start, "required"},
		{"no start", ckpt, "required"},
		{"not key value", start + ckpt + "garbage\n", "line 3"},
		{"bad start lsn", "START WAL LOCATION: 0/ZZ (file 000000010000000000000002)\n" + ckpt, "line 1"},
		{"no file", "START WAL LOCATION: 0/2000028\n" + ckpt, "(file <segment>)"},
		{"bad file", "START WAL LOCATION: 0/2000028 (file 00000001000000000000002)\n" + ckpt, "not a WAL segment name"},
		{"history file as file", "START WAL LOCATION: 0/2000028 (file 00000001.history)\n" + ckpt, "not a WAL segment name"},
		{"bad timeline", start + ckpt + "START TIMELINE: one\n", "not a positive number"},
		{"zero timeline", start + ckpt + "START TIMELINE: 0\n", "not a positive number"},
		{"repeated", start + ckpt + ckpt, "repeats CHECKPOINT LOCATION"},
		{"half incremental", start + ckpt + "INCREMENTAL FROM LSN: 0/1\n", "come together"},
	}
	for _, tt := range tests {
		_, err := ParseBackupLabel([]byte(tt.in))
		if !errors.Is(err, ErrInvalidBackupLabel) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	// A label may be empty and may contain ": ".
	l, err := ParseBackupLabel([]byte(start + ckpt + "LABEL: a: b\n"))
	if err != nil || l.Label != "a: b" {
		t.Errorf("label with colon: %+v %v", l, err)
	}
}

func FuzzParseBackupLabel(f *testing.F) {
	for _, major := range fixtureMajors {
		f.Add(readFixture(f, major, "backup_label"))
	}
	f.Add(readFixture(f, 18, "000000010000000000000002.00000028.backup"))
	f.Add([]byte("START WAL LOCATION: 0/1 (file 000000010000000000000000)\nCHECKPOINT LOCATION: 0/2\nINCREMENTAL FROM LSN: 0/1\nINCREMENTAL FROM TLI: 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseBackupLabel(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidBackupLabel) {
				t.Fatalf("error %v does not match ErrInvalidBackupLabel", err)
			}
			return
		}
		if !bytes.Equal(l.Raw, b) {
			t.Fatal("Raw differs from the input")
		}
		again, err := ParseBackupLabel(l.Encode())
		if err != nil {
			t.Fatalf("Encode output %q does not parse: %v", l.Encode(), err)
		}
		if again.StartLSN != l.StartLSN || again.CheckpointLSN != l.CheckpointLSN || again.StartWALFile != l.StartWALFile ||
			again.IncrementalFromLSN != l.IncrementalFromLSN || again.StopLSN != l.StopLSN {
			t.Fatalf("round trip changed fields: %+v vs %+v", l, again)
		}
	})
}
