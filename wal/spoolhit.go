package wal

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
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
	if !IsSegment(name) {
		return false
	}
	sp, ok := spoolOf(opts, store)
	if !ok {
		return false
	}
	sp.awaitDownload(name, time.Now().Add(inFlightWait))
	key, err := walarchive.Key(sp.id.Cluster, name)
	if err != nil {
		return false
	}
	var m spoolMeta
	if readJSON(sp.path("seg", name+".meta"), &m) != nil || m.Sum == "" || m.Key != key || m.Restore != sp.id.Restore ||
		m.Record.Name != name || m.Record.SystemID != sp.id.Cluster {
		return false
	}
	l := sp.listing(name[:16])
	if l == nil {
		return false
	}
	if obj, ok := l.Entries[name]; !ok || obj.Size != m.Object.Size || !obj.ModTime.Equal(m.Object.ModTime) {
		return false
	}
	sp.unlinkReady(name)
	if err := serveChecked(sp.path("seg", name), dest, m.Sum); err != nil {
		opts.Logger.Warn("not serving a spooled file; fetching it", "file", name, "err", err)
		return false
	}
	sp.setState(name)
	return true
}

// spoolOf returns the spool of opts if it belongs to this restore of
// opts.PGData, from store.
func spoolOf(opts FetchOptions, store string) (*spool, bool) {
	if opts.SpoolToken != "" && !ValidToken(opts.SpoolToken) {
		return nil, false
	}
	rid, err := restoreID(opts.PGData)
	if err != nil {
		return nil, false
	}
	sp := &spool{dir: opts.SpoolDir, token: opts.SpoolToken, log: opts.Logger}
	var have spoolIdentity
	if readJSON(sp.path("identity.json"), &have) != nil || have.Format != spoolFormat || have.RepoID == "" ||
		have.Store != store || have.Cluster != opts.Cluster.SystemID || have.PGData != opts.PGData || have.Restore != rid {
		return nil, false
	}
	sp.id = have
	return sp, true
}

// SpoolSaysMissing reports whether the spool's listing shows that the
// archive lacks name, a segment or a history file: the answer a Fetcher
// gives from a listing younger than opts.ListMaxAge, without opening the
// repository. Recovery asks for such files at its start and end (the
// segment after the archive's last, the history file of the next
// timeline); the prefetcher keeps those listings young while it runs.
func SpoolSaysMissing(opts FetchOptions, store, name string) bool {
	if opts.NoSpool {
		return false
	}
	opts.fill()
	file, err := pg.ParseWALFileName(name)
	if err != nil || file.Name() != name || (file.Kind != pg.WALSegment && file.Kind != pg.WALTimelineHistory) {
		return false
	}
	if file.Kind == pg.WALSegment {
		if _, err := file.SegNo(opts.Cluster.SegSize); err != nil {
			return false
		}
	}
	sp, ok := spoolOf(opts, store)
	if !ok {
		return false
	}
	l := sp.listing(dirOf(file))
	if l == nil {
		return false
	}
	if age := time.Since(l.Listed); age < 0 || age >= opts.ListMaxAge {
		return false
	}
	_, have := l.Entries[name]
	_, partial := l.Entries[name+".partial"]
	// wal-receive's pieces of the segment: the regular path decides.
	streamed := file.Kind == pg.WALSegment && len(pieceEntries(l, name)) > 0
	return !have && !(opts.Partial && partial) && !streamed
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

// serveChecked puts path at dest if its spoolSum is sum (hex).
func serveChecked(path, dest, sum string) error {
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
	return linkInto(path, src, dest)
}

// linkInto puts the spooled file path (open as src) at dest as a second
// link, not a rename: the spool keeps the segment recovery asked for last,
// because recovery asks for it again when it ends (to read its last
// record once more) and a miss then costs a download. Across file systems
// it copies.
func linkInto(path string, src *os.File, dest string) error {
	tmp := filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+".tidemark-"+strconv.Itoa(os.Getpid())+".tmp")
	os.Remove(tmp)
	err := os.Link(path, tmp)
	if err == nil {
		if err = os.Rename(tmp, dest); err != nil {
			os.Remove(tmp)
		}
		return err
	}
	if !errors.Is(err, syscall.EXDEV) {
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
