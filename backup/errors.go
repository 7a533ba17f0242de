package backup

import (
	"errors"
	"fmt"

	"github.com/tidemarkdb/tidemark/repo"
)

// Sentinel errors, matched with errors.Is; the typed errors below match them.
var (
	// ErrRefused: a precondition of the backup does not hold (archiving
	// off, a data directory of another cluster, an unsupported version).
	ErrRefused = errors.New("backup refused")
	// ErrChecksum: pages failed their checksum and FailOnChecksumError was
	// set.
	ErrChecksum = errors.New("page checksum failure")
	// ErrWALNotArchived: the WAL between the backup's start and stop could
	// not be confirmed in the repository, so the snapshot was not committed.
	ErrWALNotArchived = errors.New("WAL needed by the backup is not archived")
)

// RefusedError says which precondition failed and what to do.
type RefusedError struct {
	What string // the setting or input at fault
	Err  error
	Hint string // what to do
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("backup refused: %s: %v", e.What, e.Err)
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

func (e *RefusedError) Unwrap() []error { return []error{ErrRefused, e.Err} }

// ChecksumFailureError lists the pages that failed their checksum (after a
// re-read) when such failures are fatal.
type ChecksumFailureError struct {
	Errors []repo.ChecksumError
}

func (e *ChecksumFailureError) Error() string {
	first := e.Errors[0]
	return fmt.Sprintf("%d page(s) failed their checksum, first %s block %d (stored %#04x, computed %#04x); no snapshot was committed: "+
		"check the storage under the data directory, then run without --fail-on-checksum-error to keep a backup that records them",
		len(e.Errors), first.File, first.Block, first.Found, first.Expected)
}

func (e *ChecksumFailureError) Is(target error) bool { return target == ErrChecksum }

// WALError says that the WAL a backup needs could not be confirmed.
type WALError struct {
	Err error
}

func (e *WALError) Error() string {
	return fmt.Sprintf("the WAL from the backup's start to its stop is not confirmed in the repository, so no snapshot was committed: %v; "+
		"check archive_command (tidemark wal-push %%p) and the server log, then run tidemark backup again", e.Err)
}

func (e *WALError) Unwrap() []error { return []error{ErrWALNotArchived, e.Err} }

// errSummaryMismatch stops a capture whose WAL summaries disagreed with a
// sampled page; the backup then reads page LSNs instead.
var errSummaryMismatch = errors.New("WAL summary disagrees with a page LSN")
