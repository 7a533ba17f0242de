package wal

import (
	"crypto/rand"
	"path/filepath"
	"strings"
	"time"
)

// FetchCommand is the restore_command tidemark writes for the servers it
// restores, and what that command leaves behind: the spool beside the data
// directory and the prefetcher that fills it. The ready-directory protocol
// the fast path relies on lives in this package (ReadyDir, the prefetcher),
// so the command line is built here too.
type FetchCommand struct {
	// Args is the wal-fetch command line up to the file arguments: the
	// tidemark binary by absolute path, "wal-fetch", and the repository
	// settings (never secrets: S3 credentials come from the server's
	// environment, keys from the files named). It should pass --pgdata .
	// (PostgreSQL runs restore_command in the data directory).
	Args []string
}

// Line returns restore_command for the server of data directory pgdata.
//
// A shell fast path comes first: mv of the segment from the spool's ready
// directory, where the prefetcher links each segment it verified, named
// after a token new for each call. A segment prefetched ahead then reaches
// pg_wal in the time of a mv (about 2 ms) instead of a tidemark process's
// (12 ms and more, with recovery waiting), and the token keeps the files of
// any other restore out of it. The path is relative to the data directory,
// where PostgreSQL runs the command, as wal-fetch's default spool is.
func (f FetchCommand) Line(pgdata string) string {
	token := rand.Text()[:16]
	ready := ReadyDir(filepath.Join("..", filepath.Base(DefaultSpoolDir(pgdata))), token)
	q := make([]string, 0, len(f.Args))
	for _, a := range f.Args {
		q = append(q, confShellQuote(a))
	}
	return "mv -f " + confShellQuote(ready) + "/%f %p 2>/dev/null || " +
		strings.Join(q, " ") + " --spool-token " + token + " %f %p"
}

// SpoolDir returns where wal-fetch spools for the server of pgdata.
func (f FetchCommand) SpoolDir(pgdata string) string { return DefaultSpoolDir(pgdata) }

// StopPrefetcher ends the prefetcher a recovery of pgdata left running,
// once its server is down; it waits up to 30 seconds.
func (f FetchCommand) StopPrefetcher(pgdata string) {
	StopPrefetcher(DefaultSpoolDir(pgdata), 30*time.Second)
}

// confShellQuote quotes s for the shell, then doubles its percent signs:
// PostgreSQL replaces %f, %p, %r and %% in restore_command, and a
// percent-encoded URL must reach the shell as it is.
func confShellQuote(s string) string { return strings.ReplaceAll(ShellQuote(s), "%", "%%") }

// ShellQuote quotes s for a POSIX shell, leaving plain words as they are.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_./:=@+,-", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
