package pg

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// BackupLabel is the content of a backup_label file, or of a backup history
// file (*.backup), which is the same text plus the STOP lines.
//
// Raw keeps the bytes it was parsed from: tidemark stores and restores
// backup_label byte for byte, and Raw, not Encode, is what a restore writes.
type BackupLabel struct {
	StartLSN      LSN    // START WAL LOCATION
	StartWALFile  string // the "(file ...)" part of START WAL LOCATION
	StopLSN       LSN    // STOP WAL LOCATION (backup history files only)
	StopWALFile   string
	CheckpointLSN LSN    // CHECKPOINT LOCATION: the backup's redo checkpoint record
	Method        string // BACKUP METHOD: "streamed", or "pg_start_backup" for a pre-15 exclusive backup
	From          string // BACKUP FROM: "primary" or "standby"
	// StartTime and StopTime are kept as text: PostgreSQL writes them in the
	// server's log_timezone with a zone abbreviation that Go cannot map
	// reliably back to an offset.
	StartTime     string
	Label         string
	StartTimeline TimelineID // START TIMELINE (PostgreSQL 11+)
	StopTime      string
	StopTimeline  TimelineID
	// Set only for an incremental backup taken by PostgreSQL 17+.
	IncrementalFromLSN LSN
	IncrementalFromTLI TimelineID
	// Other lines, in order, as "KEY: value" text without the newline, so a
	// field added by a future version is kept rather than lost.
	Other []string

	Raw []byte
}

// ErrInvalidBackupLabel is returned (wrapped) for a backup_label that
// PostgreSQL would refuse.
var ErrInvalidBackupLabel = errors.New("invalid backup_label")

// ParseBackupLabel parses a backup_label or backup history file. START WAL
// LOCATION and CHECKPOINT LOCATION are required, as by PostgreSQL
// (read_backup_label); every other line is optional.
func ParseBackupLabel(b []byte) (*BackupLabel, error) {
	l := &BackupLabel{Raw: bytes.Clone(b)}
	var haveStart, haveCheckpoint bool
	seen := map[string]bool{}
	text := string(b)
	for lineNo := 1; text != ""; lineNo++ {
		var line string
		line, text, _ = strings.Cut(text, "\n")
		if line == "" {
			continue
		}
		key, value, found := strings.Cut(line, ": ")
		if !found {
			return nil, fmt.Errorf("%w: line %d %q is not \"KEY: value\"", ErrInvalidBackupLabel, lineNo, line)
		}
		if seen[key] {
			return nil, fmt.Errorf("%w: line %d repeats %s", ErrInvalidBackupLabel, lineNo, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "START WAL LOCATION":
			l.StartLSN, l.StartWALFile, err = parseLocationWithFile(value)
			haveStart = true
		case "STOP WAL LOCATION":
			l.StopLSN, l.StopWALFile, err = parseLocationWithFile(value)
		case "CHECKPOINT LOCATION":
			l.CheckpointLSN, err = ParseLSN(value)
			haveCheckpoint = true
		case "BACKUP METHOD":
			l.Method = value
		case "BACKUP FROM":
			l.From = value
		case "START TIME":
			l.StartTime = value
		case "STOP TIME":
			l.StopTime = value
		case "LABEL":
			l.Label = value
		case "START TIMELINE":
			l.StartTimeline, err = parseTimeline(value)
		case "STOP TIMELINE":
			l.StopTimeline, err = parseTimeline(value)
		case "INCREMENTAL FROM LSN":
			l.IncrementalFromLSN, err = ParseLSN(value)
		case "INCREMENTAL FROM TLI":
			l.IncrementalFromTLI, err = parseTimeline(value)
		default:
			l.Other = append(l.Other, line)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: line %d (%s): %v", ErrInvalidBackupLabel, lineNo, key, err)
		}
	}
	if !haveStart || !haveCheckpoint {
		return nil, fmt.Errorf("%w: START WAL LOCATION and CHECKPOINT LOCATION are required", ErrInvalidBackupLabel)
	}
	if (l.IncrementalFromLSN != 0) != (l.IncrementalFromTLI != 0) {
		return nil, fmt.Errorf("%w: INCREMENTAL FROM LSN and INCREMENTAL FROM TLI come together", ErrInvalidBackupLabel)
	}
	return l, nil
}

// parseLocationWithFile parses "0/2000028 (file 000000010000000000000002)".
func parseLocationWithFile(v string) (LSN, string, error) {
	lsnText, rest, found := strings.Cut(v, " (file ")
	if !found || !strings.HasSuffix(rest, ")") {
		return 0, "", fmt.Errorf("%q is not \"<lsn> (file <segment>)\"", v)
	}
	lsn, err := ParseLSN(lsnText)
	if err != nil {
		return 0, "", err
	}
	file := strings.TrimSuffix(rest, ")")
	if f, err := ParseWALFileName(file); err != nil || f.Kind != WALSegment {
		return 0, "", fmt.Errorf("%q is not a WAL segment name", file)
	}
	return lsn, file, nil
}

func parseTimeline(v string) (TimelineID, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 0 || v[0] == '+' {
		return 0, fmt.Errorf("timeline %q is not a positive number", v)
	}
	return TimelineID(n), nil
}

// Encode writes the label in PostgreSQL's format and line order
// (build_backup_content), omitting fields that are not set. It is for
// synthesising labels (tests, tools); a restore writes Raw.
func (l *BackupLabel) Encode() []byte {
	var b strings.Builder
	line := func(key, value string) {
		if value != "" {
			b.WriteString(key + ": " + value + "\n")
		}
	}
	tli := func(t TimelineID) string {
		if t == 0 {
			return ""
		}
		return strconv.FormatUint(uint64(t), 10)
	}
	line("START WAL LOCATION", l.StartLSN.String()+" (file "+l.StartWALFile+")")
	if l.StopLSN != 0 || l.StopWALFile != "" {
		line("STOP WAL LOCATION", l.StopLSN.String()+" (file "+l.StopWALFile+")")
	}
	line("CHECKPOINT LOCATION", l.CheckpointLSN.String())
	line("BACKUP METHOD", l.Method)
	line("BACKUP FROM", l.From)
	line("START TIME", l.StartTime)
	line("LABEL", l.Label)
	line("START TIMELINE", tli(l.StartTimeline))
	line("STOP TIME", l.StopTime)
	line("STOP TIMELINE", tli(l.StopTimeline))
	if l.IncrementalFromLSN != 0 {
		line("INCREMENTAL FROM LSN", l.IncrementalFromLSN.String())
		line("INCREMENTAL FROM TLI", tli(l.IncrementalFromTLI))
	}
	for _, o := range l.Other {
		b.WriteString(o + "\n")
	}
	return []byte(b.String())
}
