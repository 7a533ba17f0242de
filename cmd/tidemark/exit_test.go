package main

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tidemarkdb/tidemark/backup"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/restore"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/verify"
	"github.com/tidemarkdb/tidemark/verify/drill"
	"github.com/tidemarkdb/tidemark/wal"
)

// TestExitCodes pins the documented exit code of each kind of failure, as
// the commands return them (wrapped with context).
func TestExitCodes(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("some command: %w", err) }
	timeout := &storage.Error{Op: "get", Key: "wal/x", Err: errors.New("i/o timeout"), Transient: true}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"plain", errors.New("boom"), exitFailure},
		{"usage", usageErrorf("--parallel 0"), exitUsage},
		{"interrupted", context.Canceled, exitInterrupted},
		{"no identity", repo.ErrNoIdentity, exitAccess},
		{"no repository", repo.ErrNotRepository, exitRepository},
		{"locked", &lease.LockedError{}, exitLocked},
		{"corrupt pack", repo.ErrCorrupt, exitIntegrity},
		{"missing object", storage.ErrNotFound, exitIntegrity},
		{"storage down", timeout, exitStorage},
		{"wal conflict", &walarchive.ConflictError{Key: "k", Name: "n"}, exitRefused},
		{"wal corrupt", &walarchive.CorruptError{Key: "k"}, exitIntegrity},
		{"wal foreign", walarchive.ErrForeign, exitRefused},
		{"backup refused", &backup.RefusedError{What: "archive_mode", Err: errors.New("off")}, exitRefused},
		{"backup checksum", &backup.ChecksumFailureError{Errors: []repo.ChecksumError{{}}}, exitIntegrity},
		{"backup WAL timeout", &backup.WALError{Err: timeout}, exitIntegrity},
		{"restore refused", &restore.RefusedError{Msg: "not empty"}, exitRefused},
		{"restore WAL missing", &restore.WALMissingError{Segment: "s"}, exitIntegrity},
		{"verify problems", &verify.ProblemsError{Report: &verify.Report{}}, exitIntegrity},
		{"drill failed", &drill.FailedError{Report: &drill.Report{}}, exitIntegrity},
		{"receive: another cluster", &wal.ReceiveRefusedError{Msg: "m", Kind: walarchive.ErrForeign}, exitRefused},
		{"receive: history differs", &wal.ReceiveRefusedError{Msg: "m", Kind: walarchive.ErrConflict}, exitRefused},
		{"receive: no slot", &wal.ReceiveRefusedError{Msg: "m"}, exitRefused},
		{"receive: WAL removed", fmt.Errorf("start: %w", wal.ErrWALRemoved), exitIntegrity},
		{"receive: directory held", fmt.Errorf("lock: %w", wal.ErrReceiverRunning), exitLocked},
	} {
		err := tc.err
		if err != nil {
			err = wrap(err)
		}
		if got := exitCode(err); got != tc.want {
			t.Errorf("%s: exit code %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := fetchFatal(wrap(&walarchive.CorruptError{Key: "k"})); got != walFetchFatalBase+exitIntegrity {
		t.Errorf("wal-fetch of a corrupt segment: exit %d, want %d", got, walFetchFatalBase+exitIntegrity)
	}
}
