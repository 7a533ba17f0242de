package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/pack"
)

// blobStore is what a capture needs of the repository: *repo.Repo.
type blobStore interface {
	ReadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
	ReadBlobs(ctx context.Context, ids []blob.ID, fn func(id blob.ID, data []byte) error) error
	ReadBlobRun(ctx context.Context, ids []blob.ID, maxBytes int64) (*repo.BlobRun, error)
	Lookup(ctx context.Context, id blob.ID) (index.Location, error)
	BlobID(k blob.Kind, data []byte) blob.ID
}

// blobWriter is what a capture needs of the run's *repo.Writer.
type blobWriter interface {
	Add(ctx context.Context, k blob.Kind, data []byte) (blob.ID, error)
}

// reuseMargin: a file is reused unread only if its recorded mtime lies
// this far before the reference snapshot's start. Any write after that
// snapshot read the file moves the mtime past its start, even with coarse
// file system timestamps and a little clock slew, so equal metadata then
// proves equal content.
const reuseMargin = 10 * time.Second

// reference is the snapshot a capture compares with: the parent of an
// incremental, or for a full backup the snapshot whose blob ages it carries
// forward.
type reference struct {
	snap  *repo.Snapshot
	start pg.LSN
	// reuseBefore: files whose mtime is before it may be reused unread.
	reuseBefore int64
}

// capture is one pass over PGDATA and the tablespaces that stores every
// file and returns the snapshot's roots. It runs between pg_backup_start
// and pg_backup_stop.
type capture struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	// addCtx is what Writer.Add gets: not cancelled when the capture fails,
	// so that the writer stays usable and Close can index what was
	// uploaded for the next run to reuse.
	addCtx context.Context

	store  blobStore
	w      blobWriter
	log    *slog.Logger
	opts   *Options
	pgdata string

	major      int
	blockSize  int
	relSegSize uint32
	catVersion uint32
	checksums  bool
	start      pg.LSN // this backup's start (redo) LSN
	now        int64  // Unix seconds: Written of blobs stored now
	day        int64  // days since the epoch: picks the age-rebase share

	method string     // MethodFull, MethodBlockSummaries, MethodSummaries, MethodLSNScan
	ref    *reference // nil: nothing to compare with
	sum    *summary   // with summaries only

	jobs    chan item
	items   sync.WaitGroup
	limiter *rateLimiter

	emptyTree blob.ID
	control   *dirSlot // global/pg_control, read last
	spcs      []tablespaceRoot

	stats    counters
	mu       sync.Mutex
	failure  error
	csErrs   []repo.ChecksumError
	csCount  int
	reused   map[pack.ID]index.Pack
	mismatch string // the first summary disagreement, for the warning
}

type tablespaceRoot struct {
	oid    uint32
	target string
}

// counters are updated by workers and read by progress reports.
type counters struct {
	files, relFiles, reusedFiles        atomic.Int64
	logical, done, read, directRead     atomic.Int64
	patched, rebased, sampled, verified atomic.Int64
	deltaPages, baseRead                atomic.Int64
	summed, unsummed                    atomic.Int64
}

// dirSlot is where a finished child goes: entry idx of directory d.
type dirSlot struct {
	d   *dir
	idx int
	abs string
}

// summaries reports whether pages are found changed by summaries (of
// either kind) rather than by reading them.
func (c *capture) summaries() bool {
	return c.method == MethodSummaries || c.method == MethodBlockSummaries
}

// fail records the first error and stops the capture.
func (c *capture) fail(err error) {
	c.mu.Lock()
	if c.failure == nil {
		c.failure = err
	}
	c.mu.Unlock()
	c.cancel(err)
}

func (c *capture) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failure
}

// add stores a blob and notes where a deduplicated one lives, so that the
// packs a run reuses can be re-checked before its snapshot refers to them.
func (c *capture) add(k blob.Kind, data []byte) (blob.ID, error) {
	id, err := c.w.Add(c.addCtx, k, data)
	if err != nil {
		return id, fmt.Errorf("store %s blob: %w", k, err)
	}
	if id.IsZero() {
		return id, nil
	}
	// A blob this run stored is pending, not yet in the index; one found
	// there was stored before and is reused.
	if loc, err := c.store.Lookup(c.addCtx, id); err == nil {
		c.mu.Lock()
		if c.reused == nil {
			c.reused = make(map[pack.ID]index.Pack)
		}
		c.reused[loc.Pack.ID] = loc.Pack
		c.mu.Unlock()
	} else if !errors.Is(err, repo.ErrBlobNotFound) {
		return id, err
	}
	return id, nil
}

// addChecksumError records a page that failed its checksum twice. The
// snapshot keeps at most maxChecksumErrors of them (and the count).
func (c *capture) addChecksumError(e repo.ChecksumError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.csCount++
	if len(c.csErrs) < maxChecksumErrors {
		c.csErrs = append(c.csErrs, e)
	}
	c.log.Warn("page checksum failure", "file", e.File, "block", e.Block, "stored", e.Found, "computed", e.Expected)
}

const maxChecksumErrors = 10000

// summaryMismatch stops a capture that trusted WAL summaries once a sampled
// page contradicts them.
func (c *capture) summaryMismatch(rel string, page uint32, lsn pg.LSN) {
	c.mu.Lock()
	if c.mismatch == "" {
		c.mismatch = fmt.Sprintf("%s page %d has LSN %s, after the parent's start %s, but no WAL summary lists it", rel, page, lsn, c.ref.start)
	}
	c.mu.Unlock()
	c.fail(errSummaryMismatch)
}

// roots is the outcome of a capture.
type roots struct {
	ids         []blob.ID
	tablespaces []repo.Tablespace
}

// run walks everything, reads pg_control last and returns the roots.
func (c *capture) run() (*roots, error) {
	var err error
	if c.emptyTree, err = c.addTree(&filemap.Tree{}); err != nil {
		return nil, err
	}
	c.jobs = make(chan item, 2*c.opts.Parallel)
	var workers sync.WaitGroup
	for range c.opts.Parallel {
		workers.Add(1)
		go func() {
			defer workers.Done()
			c.worker()
		}()
	}
	out := &roots{}
	var rootIDs []*blob.ID
	newRoot := func(abs, rel string, ownDir string, prev blob.ID) {
		id := new(blob.ID)
		rootIDs = append(rootIDs, id)
		d := &dir{c: c, abs: abs, rel: rel, done: func(t blob.ID) { *id = t }}
		c.walkRoot(d, prev, ownDir)
	}
	newRoot(c.pgdata, "", "", c.refRoot(0))
	spcDir := pg.TablespaceDir(c.major, c.catVersion)
	for _, ts := range c.spcs {
		if c.ctx.Err() != nil {
			break
		}
		out.tablespaces = append(out.tablespaces, repo.Tablespace{OID: ts.oid, Path: ts.target})
		newRoot(ts.target, fmt.Sprintf("pg_tblspc/%d", ts.oid), spcDir, c.refTablespace(ts.oid))
	}
	// Every other file is read before pg_control (DESIGN.md 3).
	c.items.Wait()
	if err := c.err(); err == nil {
		c.readControl()
	}
	close(c.jobs)
	workers.Wait()
	if err := c.err(); err != nil {
		return nil, err
	}
	if c.ctx.Err() != nil {
		return nil, context.Cause(c.ctx)
	}
	for _, id := range rootIDs {
		if id.IsZero() {
			return nil, errors.New("capture ended with an unfinished directory tree")
		}
		out.ids = append(out.ids, *id)
	}
	return out, nil
}

// refRoot returns the reference snapshot's root tree i, or the zero ID.
func (c *capture) refRoot(i int) blob.ID {
	if c.ref == nil || i >= len(c.ref.snap.Roots) {
		return blob.ID{}
	}
	return c.ref.snap.Roots[i]
}

// refTablespace returns the reference snapshot's tree of tablespace oid.
func (c *capture) refTablespace(oid uint32) blob.ID {
	if c.ref == nil {
		return blob.ID{}
	}
	for i, ts := range c.ref.snap.Tablespaces {
		if ts.OID == oid {
			return c.refRoot(i + 1)
		}
	}
	return blob.ID{}
}

func (c *capture) addTree(t *filemap.Tree) (blob.ID, error) {
	b, err := filemap.EncodeTree(t)
	if err != nil {
		return blob.ID{}, fmt.Errorf("encode tree: %w", err)
	}
	return c.add(blob.KindTree, b)
}

// loadTree reads a tree of the reference snapshot.
func (c *capture) loadTree(id blob.ID) (*filemap.Tree, error) {
	if id.IsZero() {
		return nil, nil
	}
	b, err := c.store.ReadBlob(c.ctx, id, nil)
	if err != nil {
		return nil, fmt.Errorf("read tree %s of snapshot %s: %w", id, c.ref.snap.ID, err)
	}
	t, err := filemap.DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("read tree %s of snapshot %s: %w", id, c.ref.snap.ID, err)
	}
	return t, nil
}
