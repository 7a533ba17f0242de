package walarchive

import (
	"context"
	"io"
	"sync"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// Failover reads the WAL archive of whichever repository a repo.Failover
// has active: the first, and the second once the first is unreachable.
// The two share the WAL MAC key, so a file read from either is checked the
// same way. It reads only; archiving writes to both (wal.Pusher).
type Failover struct {
	f    *repo.Failover
	opts Options

	mu    sync.Mutex
	archs map[*repo.Repo]*Archive
}

// NewFailover returns the WAL archive reader of f.
func NewFailover(f *repo.Failover, opts Options) *Failover {
	return &Failover{f: f, opts: opts, archs: map[*repo.Repo]*Archive{}}
}

func (a *Failover) of(r *repo.Repo) *Archive {
	a.mu.Lock()
	defer a.mu.Unlock()
	arch, ok := a.archs[r]
	if !ok {
		arch = FromRepo(r, a.opts)
		a.archs[r] = arch
	}
	return arch
}

// Active returns the archive reads go to now.
func (a *Failover) Active() *Archive { return a.of(a.f.Active()) }

// List lists a cluster's archive (see Archive.List).
func (a *Failover) List(ctx context.Context, cluster uint64) (*Listing, error) {
	var l *Listing
	err := a.f.Do(ctx, func(r *repo.Repo) (err error) {
		l, err = a.of(r).List(ctx, cluster)
		return err
	})
	return l, err
}

// ListFrom lists one timeline from a segment on (see
// Archive.ListFrom).
func (a *Failover) ListFrom(ctx context.Context, cluster uint64, tli pg.TimelineID, from pg.SegNo) (*Listing, error) {
	var l *Listing
	err := a.f.Do(ctx, func(r *repo.Repo) (err error) {
		l, err = a.of(r).ListFrom(ctx, cluster, tli, from)
		return err
	})
	return l, err
}

// ListDir lists one directory of a cluster's archive (see Archive.ListDir).
func (a *Failover) ListDir(ctx context.Context, cluster uint64, dir string) ([]DirEntry, error) {
	var out []DirEntry
	err := a.f.Do(ctx, func(r *repo.Repo) (err error) {
		out, err = a.of(r).ListDir(ctx, cluster, dir)
		return err
	})
	return out, err
}

// History reads a timeline's history (see Archive.History).
func (a *Failover) History(ctx context.Context, cluster uint64, tli pg.TimelineID) (pg.History, error) {
	var h pg.History
	err := a.f.Do(ctx, func(r *repo.Repo) (err error) {
		h, err = a.of(r).History(ctx, cluster, tli)
		return err
	})
	return h, err
}

// ReadFile reads one archived file (see Archive.ReadFile).
func (a *Failover) ReadFile(ctx context.Context, cluster uint64, name string) ([]byte, Meta, error) {
	var b []byte
	var m Meta
	err := a.f.Do(ctx, func(r *repo.Repo) (err error) {
		b, m, err = a.of(r).ReadFile(ctx, cluster, name)
		return err
	})
	return b, m, err
}

// ReadChain reads a chain of pieces (see Archive.ReadChain). It reads
// again from the second repository only while nothing has reached w: bytes
// already passed on cannot be taken back, so a failure after them stays the
// first repository's error.
func (a *Failover) ReadChain(ctx context.Context, cluster uint64, chain []Piece, w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	var n int64
	var first error
	err := a.f.Do(ctx, func(r *repo.Repo) (err error) {
		if cw.n > 0 {
			return first
		}
		n, err = a.of(r).ReadChain(ctx, cluster, chain, cw)
		first = err
		return err
	})
	return n, err
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
