package main

import (
	"context"
	"errors"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/backup"
	"github.com/tidemarkdb/tidemark/replicate"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/restore"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/verify"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

// Exit codes. They are part of the interface (README, "Exit codes"): scripts
// and systemd units act on them, so a code never changes meaning.
const (
	exitOK          = 0
	exitFailure     = 1 // not otherwise classified; for wal-fetch: segment not in the archive
	exitUsage       = 2 // bad flags, config file or arguments
	exitRepository  = 3 // no repository, one already there, or an unsupported format version
	exitAccess      = 4 // no identity matches the repository's keys
	exitLocked      = 5 // another command holds the lease (a second backup of one cluster)
	exitIntegrity   = 6 // corrupt or missing object, WAL gap, page checksum failure made fatal
	exitStorage     = 7 // object store unreachable or failing after retries; disk full
	exitRefused     = 8 // a precondition refused: target not empty, server running, no space, target out of range
	exitInterrupted = 9 // SIGINT or SIGTERM
)

// walFetchFatalBase is added to an exit code by wal-fetch for every failure
// other than "not in the archive": PostgreSQL treats an exit status above 125
// from restore_command as fatal and stops recovery, instead of taking it for
// the end of the archive and promoting at the wrong point.
const walFetchFatalBase = 128

// classifier maps an error to an exit code, or returns 0 when it does not
// know it.
type classifier func(error) int

// exitClassifiers are consulted in order; the first non-zero answer wins, so
// specific errors (a corrupt object) come before general ones (storage).
var exitClassifiers = []classifier{
	func(err error) int {
		var ue *usageError
		var ce cli.ExitCoder // urfave/cli's own, for an unknown command
		if errors.As(err, &ue) || errors.As(err, &ce) {
			return exitUsage
		}
		return 0
	},
	func(err error) int {
		if errors.Is(err, context.Canceled) {
			return exitInterrupted
		}
		return 0
	},
	receiveExitClassifier,
	walExitClassifier,
	// What the commands found, before the storage errors they may wrap: a
	// backup refused because its WAL never arrived is an integrity
	// failure even when the last error underneath was a timeout.
	func(err error) int {
		switch {
		case errors.Is(err, backup.ErrRefused), errors.Is(err, restore.ErrRefused):
			return exitRefused
		case errors.Is(err, backup.ErrChecksum), errors.Is(err, backup.ErrWALNotArchived),
			errors.Is(err, restore.ErrWALMissing), errors.Is(err, verify.ErrProblems),
			errors.Is(err, drill.ErrFailed), errors.Is(err, replicate.ErrWALMissing):
			return exitIntegrity
		}
		return 0
	},
	func(err error) int {
		var locked *repo.LockedError
		switch {
		case errors.Is(err, repo.ErrNoIdentity):
			return exitAccess
		case errors.Is(err, repo.ErrNotRepository), errors.Is(err, repo.ErrRepositoryExists), errors.Is(err, repo.ErrSecretMismatch),
			errors.Is(err, repo.ErrUnsupportedVersion):
			return exitRepository
		case errors.As(err, &locked):
			return exitLocked
		case errors.Is(err, repo.ErrCorrupt), errors.Is(err, repo.ErrBlobNotFound):
			return exitIntegrity
		}
		return 0
	},
	func(err error) int {
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return exitIntegrity
		case storage.IsUnavailable(err), errors.Is(err, storage.ErrPermanent):
			return exitStorage
		}
		return 0
	},
}

// exitCode returns the documented exit code for err.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	for _, c := range exitClassifiers {
		if code := c(err); code != 0 {
			return code
		}
	}
	return exitFailure
}
