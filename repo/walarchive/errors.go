package walarchive

import (
	"errors"
	"fmt"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
)

// Sentinel errors, matched with errors.Is. The typed errors below match them
// and carry the subject for the message.
var (
	// ErrConflict: a different file is already archived under the name.
	ErrConflict = errors.New("a different file is already archived under this name")
	// ErrCorrupt: an archived object failed a check. The typed error also
	// matches repo.ErrCorrupt.
	ErrCorrupt = errors.New("corrupt WAL archive object")
	// ErrNotArchived: the archive authoritatively does not have the file.
	// The typed error also matches storage.ErrNotFound.
	ErrNotArchived = errors.New("not in the WAL archive")
	// ErrForeign: a file or archive belongs to another cluster, or the
	// cluster's WAL segment size differs from the archive's.
	ErrForeign = errors.New("WAL of another cluster")
	// ErrInvalidFile: a file to archive is not what its name says.
	ErrInvalidFile = errors.New("invalid WAL file")
)

// ConflictError says that a different file is archived under Name. The
// archived object is never replaced: two clusters or two histories are
// writing to one archive, or a file in pg_wal was damaged.
type ConflictError struct {
	Key  string
	Name string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("a different %s is already archived at %s; it is never overwritten: "+
		"check that no other cluster or restored copy archives to this repository with the same system identifier "+
		"(compare pg_controldata), and that %s in pg_wal is intact", e.Name, e.Key, e.Name)
}

func (e *ConflictError) Unwrap() error { return ErrConflict }

// CorruptError names an archived object that failed a check.
type CorruptError struct {
	Key    string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("corrupt WAL archive object %s: %s; it is not used: restore it from a copy of the bucket, "+
		"or remove it so that the file can be archived again from pg_wal if PostgreSQL still has it", e.Key, e.Reason)
}

func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, repo.ErrCorrupt} }

func corruptf(key, format string, args ...any) error {
	return &CorruptError{Key: key, Reason: fmt.Sprintf(format, args...)}
}

// NotArchivedError says that the archive does not have Name.
type NotArchivedError struct {
	Key  string
	Name string
}

func (e *NotArchivedError) Error() string {
	return fmt.Sprintf("%s is not in the WAL archive (no object %s)", e.Name, e.Key)
}

func (e *NotArchivedError) Unwrap() []error { return []error{ErrNotArchived, storage.ErrNotFound} }

// ForeignError says that a file, or the archive it would join, belongs to
// another cluster than the one it is archived for.
type ForeignError struct {
	Name   string // file or object
	Reason string
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("refusing %s: %s; two clusters never share one WAL archive: "+
		"check the data directory and repository that archive_command and restore_command use", e.Name, e.Reason)
}

func (e *ForeignError) Unwrap() error { return ErrForeign }

// InvalidFileError says that a file to archive is not what its name says.
type InvalidFileError struct {
	Name string
	Err  error
}

func (e *InvalidFileError) Error() string {
	return fmt.Sprintf("refusing to archive %s: %v", e.Name, e.Err)
}

func (e *InvalidFileError) Unwrap() []error { return []error{ErrInvalidFile, e.Err} }
