package wal

import (
	"os"
	"time"
)

// FallbackMark remembers, across the wal-fetch calls of one recovery, that
// the first repository was found unreachable: each call is a process of
// its own, and without the mark every one would wait out the retries on
// the first repository before it falls back to the second. While the mark
// is recent, calls go to the second at once; once it is older, the next
// call tries the first again (and renews the mark if it is still down).
type FallbackMark struct{ path string }

// FallbackMarkFor is the mark of the recovery whose spool is spoolDir:
// a file beside the spool, which is tied to the first repository and
// emptied when it changes.
func FallbackMarkFor(spoolDir string) FallbackMark {
	return FallbackMark{path: spoolDir + ".fallback"}
}

// Recent reports whether the first repository was found unreachable less
// than within ago.
func (m FallbackMark) Recent(within time.Duration) bool {
	fi, err := os.Stat(m.path)
	return err == nil && time.Since(fi.ModTime()) < within
}

// Set records that the first repository is unreachable now. It is best
// effort: without the mark, calls only fall back more slowly.
func (m FallbackMark) Set() {
	if f, err := os.Create(m.path); err == nil {
		f.Close()
	}
}

// Clear removes the mark: the first repository answered.
func (m FallbackMark) Clear() { os.Remove(m.path) }
