package pg

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// TargetKind is what a recovery target names.
type TargetKind int

// The recovery targets PostgreSQL knows. TargetEnd is no target: recovery
// replays all the archived WAL.
const (
	TargetEnd TargetKind = iota
	TargetImmediate
	TargetTime
	TargetLSN
	TargetXID
	TargetName
)

func (k TargetKind) String() string {
	switch k {
	case TargetEnd:
		return "end of the archive"
	case TargetImmediate:
		return "immediate"
	case TargetTime:
		return "time"
	case TargetLSN:
		return "lsn"
	case TargetXID:
		return "xid"
	case TargetName:
		return "name"
	}
	return "target(" + strconv.Itoa(int(k)) + ")"
}

// RecoveryTarget is where recovery stops and what it does there: the
// recovery_target_* settings of PostgreSQL.
type RecoveryTarget struct {
	Kind TargetKind
	Time time.Time
	LSN  LSN
	XID  uint64 // a transaction ID; a 64-bit one (epoch<<32 | xid) as txid_current returns is accepted
	Name string // a restore point made by pg_create_restore_point
	// Inclusive: stop just after the target (PostgreSQL's default) rather
	// than just before it. nil leaves PostgreSQL's default.
	Inclusive *bool
	// Action is promote, pause or shutdown; "" takes pause, PostgreSQL's
	// default, written out explicitly.
	Action string
	// Timeline is the timeline to recover along: 0 picks the newest
	// timeline in the archive that the snapshot leads to, and writes its
	// number rather than "latest".
	Timeline TimelineID
}

// Valid recovery_target_action values.
const (
	ActionPause    = "pause"
	ActionPromote  = "promote"
	ActionShutdown = "shutdown"
)

// ParseTargetTime parses a recovery target time. A time without a zone is
// local time of the machine running the restore; it is written to the
// recovery settings in UTC so that the server's timezone cannot shift it.
func ParseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	withZone := []string{
		time.RFC3339Nano,
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07",
		"2006-01-02 15:04:05.999999999 Z07:00",
		"2006-01-02 15:04:05.999999999 Z0700",
		"2006-01-02 15:04:05.999999999 MST",
	}
	for _, l := range withZone {
		if t, err := time.Parse(l, s); err == nil {
			return t, nil
		}
	}
	for _, l := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02"} {
		if t, err := time.ParseInLocation(l, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("target time %q: want a timestamp such as 2026-05-01 10:00:00+00 or 2026-05-01T10:00:00Z", s)
}

// Describe returns the target's value as the settings name it: a time in
// RFC 3339, an LSN, an xid, a quoted restore point name, or the kind.
func (t RecoveryTarget) Describe() string {
	switch t.Kind {
	case TargetTime:
		return t.Time.UTC().Format(time.RFC3339Nano)
	case TargetLSN:
		return t.LSN.String()
	case TargetXID:
		return strconv.FormatUint(t.XID, 10)
	case TargetName:
		return strconv.Quote(t.Name)
	}
	return t.Kind.String()
}
