package wal

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/storage/walarchive"
)

// ServeSpooled delivers segment name to dest from the spool that the
// background prefetcher keeps for opts.PGData, without opening the
// repository: no key file to fetch and decrypt, no TLS handshake, so a warm
// spool answers restore_command in the time it takes to read the file once.
// store is the repository's store as storage.Store.String() names it.
//
// It serves only a WAL segment whose meta names this restore, cluster and
// object, that the spool's cached listing still shows, and whose bytes
// match the CRC-32C recorded when the prefetcher verified the object's MAC.
// Anything else reports false, and the caller fetches the regular way (which
// also starts the prefetcher and handles history and partial files).
func ServeSpooled(opts FetchOptions, store, name, dest string) bool {
	if opts.NoSpool {
		return false
	}
	opts.fill()
	file, err := pg.ParseWALFileName(name)
	if err != nil || file.Kind != pg.WALSegment || file.Name() != name {
		return false
	}
	rid, err := restoreID(opts.PGData)
	if err != nil {
		return false
	}
	sp := &spool{dir: opts.SpoolDir, log: opts.Logger}
	var have spoolIdentity
	if readJSON(sp.path("identity.json"), &have) != nil || have.Format != spoolFormat || have.RepoID == "" ||
		have.Store != store || have.Cluster != opts.Cluster.SystemID || have.PGData != opts.PGData || have.Restore != rid {
		return false
	}
	sp.id = have
	sp.awaitDownload(name, time.Now().Add(inFlightWait))
	key, err := walarchive.Key(have.Cluster, name)
	if err != nil {
		return false
	}
	var m spoolMeta
	if readJSON(sp.path("seg", name+".meta"), &m) != nil || m.Sum == "" || m.Key != key || m.Restore != rid ||
		m.Record.Name != name || m.Record.SystemID != have.Cluster {
		return false
	}
	l := sp.listing(name[:16])
	if l == nil {
		return false
	}
	if obj, ok := l.Entries[name]; !ok || obj.Size != m.Object.Size || !obj.ModTime.Equal(m.Object.ModTime) {
		return false
	}
	if err := moveChecked(sp.path("seg", name), dest, m.Sum); err != nil {
		opts.Logger.Warn("not serving a spooled file; fetching it", "file", name, "err", err)
		return false
	}
	os.Remove(sp.path("seg", name+".meta"))
	sp.setState(name)
	return true
}

// inFlightWait bounds how long a call waits for the prefetcher to finish
// downloading its segment, and inFlightStale is how long a download may go
// without writing before it counts as abandoned (a killed prefetcher leaves
// its temporary file behind).
const (
	inFlightWait  = 3 * time.Second
	inFlightStale = time.Second
)

// awaitDownload waits, until deadline, while the prefetcher is still
// downloading name into the spool: a call that arrives mid-download then
// costs the rest of that download, not a second one of its own through the
// repository (about 100 ms more, and twice the work while replay waits).
func (s *spool) awaitDownload(name string, deadline time.Time) {
	for time.Now().Before(deadline) {
		if _, err := os.Stat(s.path("seg", name)); err == nil {
			return
		}
		tmps, _ := filepath.Glob(s.path("seg", "."+name+".tmp-*"))
		active := false
		for _, p := range tmps {
			if fi, err := os.Stat(p); err == nil && time.Since(fi.ModTime()) < inFlightStale {
				active = true
			}
		}
		if !active {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// moveChecked renames path to dest if its spoolSum is sum (hex), copying
// when the two are on different file systems.
func moveChecked(path, dest, sum string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	h := spoolSum()
	if _, err := io.Copy(h, src); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("spooled %s is damaged (CRC-32C %s, recorded %s)", path, got, sum)
	}
	err = os.Rename(path, dest)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return writeAtomic(dest, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	})
}
