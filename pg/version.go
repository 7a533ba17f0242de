package pg

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// The PostgreSQL major versions tidemark supports: the one place that
// decides it (every command that meets a server or a data directory checks
// CheckMajor). Each is tested (internal/testenv runs all of them).
const (
	MinMajor = 13
	MaxMajor = 18
)

// SupportedVersions says which versions tidemark supports, for messages.
func SupportedVersions() string { return fmt.Sprintf("PostgreSQL %d to %d", MinMajor, MaxMajor) }

// DefaultRelSegSize is RELSEG_SIZE of a default build: blocks per relation
// segment file (1 GiB of 8 KiB pages).
const DefaultRelSegSize = 131072

// ErrUnsupportedVersion is returned (wrapped) for a PostgreSQL version
// outside MinMajor..MaxMajor.
var ErrUnsupportedVersion = errors.New("unsupported PostgreSQL version")

// MajorFromVersionNum turns server_version_num (e.g. 150018) into the major
// version (15). Since PostgreSQL 10 the major is the number divided by
// 10000.
func MajorFromVersionNum(num int) (int, error) {
	if num < 100000 {
		return 0, fmt.Errorf("%w: server_version_num %d is older than PostgreSQL 10", ErrUnsupportedVersion, num)
	}
	major := num / 10000
	if err := CheckMajor(major); err != nil {
		return 0, err
	}
	return major, nil
}

// CheckMajor returns an error for a major version tidemark does not support.
func CheckMajor(major int) error {
	if major < MinMajor || major > MaxMajor {
		return fmt.Errorf("%w %d: tidemark supports %s", ErrUnsupportedVersion, major, SupportedVersions())
	}
	return nil
}

// ParseVersionFile parses a PG_VERSION file ("16\n"), found at the top of
// PGDATA and in every database directory. It is the cheapest reliable way to
// learn a data directory's major version without a server.
func ParseVersionFile(b []byte) (int, error) {
	s := string(bytes.TrimSpace(b))
	major, err := strconv.Atoi(s)
	if err != nil || major < 10 || s[0] == '+' {
		return 0, fmt.Errorf("%w: PG_VERSION says %q", ErrUnsupportedVersion, s)
	}
	if err := CheckMajor(major); err != nil {
		return 0, err
	}
	return major, nil
}

// walMagics maps each supported major to XLOG_PAGE_MAGIC
// (src/include/access/xlog_internal.h). 15-18 were checked against real WAL
// (testdata/pg*/wal.head), 13 and 14 against the sources.
var walMagics = [...]struct {
	major int
	magic uint16
}{
	{13, 0xD106},
	{14, 0xD10D},
	{15, 0xD110},
	{16, 0xD113},
	{17, 0xD116},
	{18, 0xD118},
}

// WALMagic returns XLOG_PAGE_MAGIC of a major version.
func WALMagic(major int) (uint16, bool) {
	for _, m := range walMagics {
		if m.major == major {
			return m.magic, true
		}
	}
	return 0, false
}

// WALMagicMajor returns the major version whose WAL carries magic. Each
// major has its own magic, so WAL alone tells which server wrote it.
func WALMagicMajor(magic uint16) (int, bool) {
	for _, m := range walMagics {
		if m.magic == magic {
			return m.major, true
		}
	}
	return 0, false
}

// ControlVersion returns PG_CONTROL_VERSION of a major version.
func ControlVersion(major int) (uint32, bool) {
	switch {
	case major >= 13 && major <= 16:
		return ControlVersion13, true
	case major == 17:
		return ControlVersion17, true
	case major == 18:
		return ControlVersion18, true
	}
	return 0, false
}

// BackupStartSQL returns the statement that starts a non-exclusive base
// backup on a major version, with $1 the label (text) and $2 whether to
// checkpoint at full speed (bool). PostgreSQL 15 renamed the functions and
// removed exclusive backups; before 15 the third argument false asks for the
// non-exclusive kind, which ends with the session that started it.
func BackupStartSQL(major int) string {
	if major >= 15 {
		return "SELECT pg_backup_start($1, $2)"
	}
	return "SELECT pg_start_backup($1, $2, false)"
}

// BackupStopSQL returns the statement that ends the backup BackupStartSQL
// began, in the same session, with $1 whether to wait for the WAL to be
// archived (bool). Both forms return the columns lsn, labelfile and
// spcmapfile; labelfile is the backup_label to store byte for byte.
func BackupStopSQL(major int) string {
	if major >= 15 {
		return "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop($1)"
	}
	return "SELECT lsn, labelfile, spcmapfile FROM pg_stop_backup(false, $1)"
}

// BackupFunctionNames returns the names of the backup start and stop
// functions of a major version, for messages and permission grants.
func BackupFunctionNames(major int) (start, stop string) {
	if major >= 15 {
		return "pg_backup_start", "pg_backup_stop"
	}
	return "pg_start_backup", "pg_stop_backup"
}

// HasWALSummaries reports whether the server can summarize WAL
// (summarize_wal, pg_wal/summaries, pg_wal_summary_contents) and take
// incremental backups: PostgreSQL 17 and later.
func HasWALSummaries(major int) bool { return major >= 17 }

// DataChecksumsByDefault reports whether initdb enables data checksums
// unless told otherwise (--no-data-checksums): PostgreSQL 18 and later.
func DataChecksumsByDefault(major int) bool { return major >= 18 }
