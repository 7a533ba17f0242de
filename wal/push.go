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
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// ErrFileChanged: the file was renamed, removed or replaced while it was
// read (PostgreSQL recycles a segment only after it was archived).
var ErrFileChanged = errors.New("file changed while it was read")

// Pusher archives files of one cluster's pg_wal. It is safe for concurrent
// use; each Push holds a few chunks of its file in memory, not all of it.
//
// It archives into one repository, or into two (WithSecond): then a file
// is pushed to both in parallel and a push succeeds only once both have
// it, so that PostgreSQL keeps the file and calls archive_command again
// while either lacks it.
type Pusher struct {
	targets []*target
	cluster walarchive.ClusterInfo
	log     *slog.Logger
}

// target is one repository's archive. The second repository's is opened
// the first time it is needed, and again after a failure: it may be
// unreachable when the agent starts.
type target struct {
	store string // for messages
	open  func(ctx context.Context) (*walarchive.Archive, error)

	mu   sync.Mutex
	arch *walarchive.Archive
}

func (t *target) archive(ctx context.Context) (*walarchive.Archive, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.arch != nil {
		return t.arch, nil
	}
	a, err := t.open(ctx)
	if err != nil {
		return nil, err
	}
	t.arch = a
	return a, nil
}

// NewPusher returns a Pusher for the cluster ci describes (ReadCluster).
func NewPusher(arch *walarchive.Archive, ci walarchive.ClusterInfo, log *slog.Logger) *Pusher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pusher{targets: []*target{{store: arch.Store().String(), arch: arch}}, cluster: ci, log: log}
}

// WithSecond makes the Pusher archive into a second repository too, whose
// archive open returns (it is called until it succeeds; store names it in
// messages). The second repository shares the first one's WAL MAC key
// (repo.Repo.CheckSharedSecret), so that frames compressed ahead serve both.
func (p *Pusher) WithSecond(store string, open func(ctx context.Context) (*walarchive.Archive, error)) *Pusher {
	p.targets = append(p.targets, &target{store: store, open: open})
	return p
}

// Cluster returns the cluster the Pusher archives for.
func (p *Pusher) Cluster() walarchive.ClusterInfo { return p.cluster }

// Stores names the repositories the Pusher archives into, first one first.
func (p *Pusher) Stores() []string {
	out := make([]string, len(p.targets))
	for i, t := range p.targets {
		out[i] = t.store
	}
	return out
}

// PushResult says what Push did.
type PushResult struct {
	walarchive.PutResult // in the first repository that was pushed to
	Name                 string
	Elapsed              time.Duration
	// Targets is what happened in each repository (Stores order): its
	// result, or why it failed; Skipped when it already had the file.
	Targets []TargetResult
	// file identifies the file that was archived, so that the agent can
	// tell whether a later request is about the same bytes.
	file fileID
}

// TargetResult is the outcome of a push in one repository.
type TargetResult struct {
	walarchive.PutResult
	Store   string
	Skipped bool
	Err     error
}

// Push archives the file at path (a WAL segment, .partial, .backup or
// .history file, named as PostgreSQL names it). It returns nil only once the
// object is durable or an identical one was already archived, in every
// repository. The file is checked against the cluster before anything is
// uploaded (see walarchive.CheckFile), and must not change while it is read.
func (p *Pusher) Push(ctx context.Context, path string) (PushResult, error) {
	return p.PushAhead(ctx, path, nil)
}

// PushAhead is Push for a segment of which pieces were compressed while
// PostgreSQL wrote it (see walarchive.PutFromAhead).
func (p *Pusher) PushAhead(ctx context.Context, path string, ahead *walarchive.Ahead) (PushResult, error) {
	return p.PushAheadTo(ctx, path, ahead, nil)
}

// PushAheadTo is PushAhead into the repositories skip does not set (nil:
// all), for an agent that retries only where an earlier push failed. The
// pushes run in parallel, each reading the file itself; an error names
// the repository that failed.
func (p *Pusher) PushAheadTo(ctx context.Context, path string, ahead *walarchive.Ahead, skip []bool) (PushResult, error) {
	start := time.Now()
	name := filepath.Base(path)
	res := PushResult{Name: name, Targets: make([]TargetResult, len(p.targets))}
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return res, &walarchive.InvalidFileError{Name: path, Err: err}
	}
	limit := int64(p.cluster.SegSize)
	if f.Kind == pg.WALTimelineHistory || f.Kind == pg.WALBackupHistory {
		limit = 16 << 20 // text files; far larger would not be PostgreSQL's
	}
	ids := make([]fileID, len(p.targets))
	var wg sync.WaitGroup
	for i, t := range p.targets {
		tr := &res.Targets[i]
		tr.Store = t.store
		if i < len(skip) && skip[i] {
			tr.Skipped = true
			continue
		}
		wg.Go(func() {
			tr.PutResult, ids[i], tr.Err = p.pushOne(ctx, t, path, name, limit, ahead)
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	var errs []error
	first := true
	for i, tr := range res.Targets {
		switch {
		case tr.Skipped:
			continue
		case tr.Err != nil:
			err := fmt.Errorf("archive %s: %w", name, tr.Err)
			if len(p.targets) > 1 {
				err = fmt.Errorf("archive %s in %s: %w", name, tr.Store, tr.Err)
			}
			errs = append(errs, err)
			continue
		}
		if first {
			res.PutResult, res.file, first = tr.PutResult, ids[i], false
		}
		p.log.Debug("archived", "file", name, "store", tr.Store, "key", tr.Key, "created", tr.Created,
			"bytes", tr.Size, "stored", tr.Stored, "ahead", tr.Ahead, "elapsed", res.Elapsed)
	}
	if len(errs) > 0 {
		return res, errors.Join(errs...)
	}
	return res, nil
}

func (p *Pusher) pushOne(ctx context.Context, t *target, path, name string, limit int64, ahead *walarchive.Ahead) (walarchive.PutResult, fileID, error) {
	arch, err := t.archive(ctx)
	if err != nil {
		return walarchive.PutResult{}, fileID{}, err
	}
	sr, err := openStable(path, limit)
	if err != nil {
		return walarchive.PutResult{}, fileID{}, err
	}
	defer sr.f.Close()
	put, err := arch.PutFromAhead(ctx, p.cluster, name, sr, sr.size, ahead)
	return put, sr.id, err
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
