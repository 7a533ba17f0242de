package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// ErrFileChanged: the file was renamed, removed or replaced while it was
// read (PostgreSQL recycles a segment only after it was archived).
var ErrFileChanged = errors.New("file changed while it was read")

// Pusher archives files of one cluster's pg_wal. It is safe for concurrent
// use; each Push holds a few chunks of its file in memory, not all of it.
type Pusher struct {
	arch    *walarchive.Archive
	cluster walarchive.ClusterInfo
	log     *slog.Logger
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
	return p.PushAhead(ctx, path, nil)
}

// PushAhead is Push for a segment of which pieces were compressed while
// PostgreSQL wrote it (see walarchive.PutFromAhead).
func (p *Pusher) PushAhead(ctx context.Context, path string, ahead *walarchive.Ahead) (PushResult, error) {
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
	sr, err := openStable(path, limit)
	if err != nil {
		return res, err
	}
	defer sr.f.Close()
	put, err := p.arch.PutFromAhead(ctx, p.cluster, name, sr, sr.size, ahead)
	res.PutResult = put
	res.Elapsed = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("archive %s: %w", name, err)
	}
	res.file = sr.id
	p.log.Debug("archived", "file", name, "key", put.Key, "created", put.Created,
		"bytes", put.Size, "stored", put.Stored, "ahead", put.Ahead, "elapsed", res.Elapsed)
	return res, nil
}

// fileID identifies a file's bytes well enough to tell a re-request for the
// same file from a new file under the same name.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    int64 // UnixNano
}

// stableReader reads a file and, at its end, checks that the path still
// names the file it read: PostgreSQL renames a segment to recycle it before
// writing new WAL into it, so bytes read from a file still under its name
// are that file's. It reports io.EOF only after that check passed, and the
// archive uploads nothing before it has seen io.EOF.
type stableReader struct {
	f      *os.File
	path   string
	before os.FileInfo
	size   int64
	left   int64
	id     fileID // set once the check passed
	end    error  // the verdict at the end, once reached
}

func openStable(path string, limit int64) (*stableReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	before, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !before.Mode().IsRegular() {
		f.Close()
		return nil, &walarchive.InvalidFileError{Name: path, Err: errors.New("not a regular file")}
	}
	if before.Size() > limit {
		f.Close()
		return nil, &walarchive.InvalidFileError{Name: path, Err: fmt.Errorf("%d bytes, more than %d", before.Size(), limit)}
	}
	return &stableReader{f: f, path: path, before: before, size: before.Size(), left: before.Size()}, nil
}

func (r *stableReader) Read(p []byte) (int, error) {
	if r.left > 0 {
		if int64(len(p)) > r.left {
			p = p[:r.left]
		}
		n, err := r.f.Read(p)
		r.left -= int64(n)
		switch {
		case err == io.EOF && r.left > 0:
			return n, fmt.Errorf("read %s: %w (it shrank)", r.path, ErrFileChanged)
		case err != nil && err != io.EOF:
			return n, fmt.Errorf("read %s: %w", r.path, err)
		}
		return n, nil
	}
	if r.end == nil {
		r.end = r.check()
	}
	return 0, r.end
}

// check is the verdict once size bytes were read: io.EOF if the file is
// still the one that was opened, unchanged.
func (r *stableReader) check() error {
	// Nothing beyond the size we saw: the file did not grow.
	var one [1]byte
	if k, _ := r.f.Read(one[:]); k != 0 {
		return fmt.Errorf("read %s: %w (it grew)", r.path, ErrFileChanged)
	}
	after, err := os.Stat(r.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read %s: %w (it is gone)", r.path, ErrFileChanged)
		}
		return fmt.Errorf("read %s: %w", r.path, err)
	}
	if !os.SameFile(r.before, after) || after.Size() != r.before.Size() || !after.ModTime().Equal(r.before.ModTime()) {
		return fmt.Errorf("read %s: %w", r.path, ErrFileChanged)
	}
	r.id = idOf(after)
	return io.EOF
}
