package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/storage/walarchive"
)

// ErrFileChanged: the file was renamed, removed or replaced while it was
// read (PostgreSQL recycles a segment only after it was archived).
var ErrFileChanged = errors.New("file changed while it was read")

// Pusher archives files of one cluster's pg_wal. It is safe for concurrent
// use; each Push holds one file in memory.
type Pusher struct {
	arch    *walarchive.Archive
	cluster walarchive.ClusterInfo
	log     *slog.Logger
	bufs    sync.Pool // *[]byte of a segment's size
}

// NewPusher returns a Pusher for the cluster ci describes (ReadCluster).
func NewPusher(arch *walarchive.Archive, ci walarchive.ClusterInfo, log *slog.Logger) *Pusher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pusher{arch: arch, cluster: ci, log: log}
}

// Cluster returns the cluster the Pusher archives for.
func (p *Pusher) Cluster() walarchive.ClusterInfo { return p.cluster }

// PushResult says what Push did.
type PushResult struct {
	walarchive.PutResult
	Name    string
	Elapsed time.Duration
	// file identifies the file that was archived, so that the agent can
	// tell whether a later request is about the same bytes.
	file fileID
}

// Push archives the file at path (a WAL segment, .partial, .backup or
// .history file, named as PostgreSQL names it). It returns nil only once the
// object is durable or an identical one was already archived. The file is
// checked against the cluster before anything is uploaded (see
// walarchive.CheckFile), and must not change while it is read.
func (p *Pusher) Push(ctx context.Context, path string) (PushResult, error) {
	start := time.Now()
	name := filepath.Base(path)
	res := PushResult{Name: name}
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return res, &walarchive.InvalidFileError{Name: path, Err: err}
	}
	limit := int64(p.cluster.SegSize)
	if f.Kind == pg.WALTimelineHistory || f.Kind == pg.WALBackupHistory {
		limit = 16 << 20 // text files; far larger would not be PostgreSQL's
	}
	bp := p.buffer(int(limit))
	defer p.bufs.Put(bp)
	data, id, err := readStable(path, (*bp)[:0], limit)
	if err != nil {
		return res, err
	}
	res.file = id
	put, err := p.arch.Put(ctx, p.cluster, name, data)
	res.PutResult = put
	res.Elapsed = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("archive %s: %w", name, err)
	}
	p.log.Debug("archived", "file", name, "key", put.Key, "created", put.Created,
		"bytes", put.Size, "stored", put.Stored, "elapsed", res.Elapsed)
	return res, nil
}

func (p *Pusher) buffer(n int) *[]byte {
	if bp, ok := p.bufs.Get().(*[]byte); ok && cap(*bp) >= n {
		return bp
	}
	b := make([]byte, 0, n)
	return &b
}

// fileID identifies a file's bytes well enough to tell a re-request for the
// same file from a new file under the same name.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    int64 // UnixNano
}

// readStable reads the whole file at path into buf (at most limit bytes) and
// checks afterwards that path still names the file it read: PostgreSQL
// renames a segment to recycle it before writing new WAL into it, so bytes
// read from a file still under its name are that file's.
func readStable(path string, buf []byte, limit int64) ([]byte, fileID, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, fileID{}, fmt.Errorf("read %s: %w", path, err)
	}
	if !before.Mode().IsRegular() {
		return nil, fileID{}, &walarchive.InvalidFileError{Name: path, Err: errors.New("not a regular file")}
	}
	if before.Size() > limit {
		return nil, fileID{}, &walarchive.InvalidFileError{Name: path, Err: fmt.Errorf("%d bytes, more than %d", before.Size(), limit)}
	}
	n := int(before.Size())
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fileID{}, fmt.Errorf("read %s: %w", path, err)
	}
	// Nothing beyond the size we saw: the file did not grow.
	var one [1]byte
	if k, _ := f.Read(one[:]); k != 0 {
		return nil, fileID{}, fmt.Errorf("read %s: %w (it grew)", path, ErrFileChanged)
	}
	after, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fileID{}, fmt.Errorf("read %s: %w (it is gone)", path, ErrFileChanged)
		}
		return nil, fileID{}, fmt.Errorf("read %s: %w", path, err)
	}
	if !os.SameFile(before, after) || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		return nil, fileID{}, fmt.Errorf("read %s: %w", path, ErrFileChanged)
	}
	return buf, idOf(after), nil
}
