package restore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tidemarkdb/tidemark/internal/directio"
	"github.com/tidemarkdb/tidemark/internal/osuser"
	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/index"
	"golang.org/x/sys/unix"
)

// markerName is written into PGDATA while a restore runs and removed just
// before pg_control is written: it tells the next run that the directory
// holds an unfinished restore (which --delta completes), not a cluster.
const markerName = ".tidemark-restore-incomplete"

// dest is where (part of) a blob goes: n bytes from blobOff to file offset
// fileOff. whole marks a content chunk, which must be exactly n bytes long.
// xor marks the blob of a delta extent: its bytes are XORed onto the base
// pages that the file holds there by then; base marks the write of those
// base pages.
type dest struct {
	file    int32
	whole   bool
	xor     bool
	base    bool
	fileOff int64
	blobOff int64
	n       int64
}

// writer lays a plan out on disk: its directories and links first, then
// its files a batch at a time (plan.eachBatch).
type writer struct {
	standby  bool // write standby.signal, not recovery.signal
	r        Repository
	p        *plan
	files    []entry // the batch being written; dest.file indexes it
	log      *slog.Logger
	owner    *osuser.Owner
	parallel int
	major    int

	mu sync.Mutex
	// dests are written in a first phase and xors in a second, once every
	// base that a delta is XORed onto is on disk. fetch moves the other
	// destinations of a delta blob into the second phase too, so that it
	// is fetched once.
	dests, xors map[blob.ID][]dest
	// pending counts the bytes still to be written to each file, XOR
	// passes included; the write that brings it to zero hands the file to
	// a syncer, so that flushing to disk overlaps fetching instead of all
	// coming at the end.
	pending []atomic.Int64
	settled []atomic.Bool
	syncq   chan int32
	// direct: large runs of relation pages are written with O_DIRECT
	// (Options.DirectIO); cleared for the rest of the run when the file
	// system refuses it.
	direct     atomic.Bool
	openDirect func(p string) (directFile, error)
	// groupDeltaBytes bounds the delta pages heldDeltas holds at once.
	groupDeltaBytes int64
	// pieceWindows is the windows one piece of checkPieces reads.
	pieceWindows uint32
	// compareBufs holds compare's read buffers (*[]byte, a slot each):
	// a fresh slot per file compared cleared a gigabyte of memory for a
	// cluster's thousand small files, a quarter of a delta restore's CPU.
	compareBufs sync.Pool
	// runs holds readPages' parsed patch-runs blobs (*filemap.PatchRuns).
	runs sync.Pool

	// Time spent in each step of the batches, for the log: comparing
	// (delta), fetching and writing, settling what fetching did not.
	compareTime, fetchTime, settleTime time.Duration

	fetched, fetchedBlobs, written, skipped, removed atomic.Int64
	progress                                         *progress.Counter
	// delta counts what a delta restore's comparison decided, page by
	// page, so that its log says why it fetched what it fetched.
	delta deltaStats

	// Delta restore: the directory being cleaned up (cleanVisit) and its
	// entries on disk not seen in the snapshot yet, sorted.
	cleaning *listing
	existing []string
}

// deltaStats counts, in pages, what a delta restore's comparison of
// relation files kept and what it asked for: kept whole by a window sum,
// kept by a held slot (only patches fetched), kept by the slot its deltas
// XOR back to (heldDeltas), kept by a blob's ID, and
// wanted as deltas, as plain pages cut from a blob (a slot split by
// patches, or a patch), or as whole blobs that differ.
type deltaStats struct {
	keptSum, keptSlot, keptDelta   atomic.Int64
	keptBlob                       atomic.Int64
	wantDelta, wantPart, wantWhole atomic.Int64
	wantZero                       atomic.Int64
}

// pages returns the counters.
func (d *deltaStats) pages() *DeltaPages {
	return &DeltaPages{KeptBySum: d.keptSum.Load(), KeptBySlot: d.keptSlot.Load(), KeptByDeltas: d.keptDelta.Load(),
		KeptByBlob: d.keptBlob.Load(), FetchedDelta: d.wantDelta.Load(), FetchedPart: d.wantPart.Load(),
		FetchedWhole: d.wantWhole.Load(), Zeroed: d.wantZero.Load()}
}

// logAttrs returns the counters as log attributes.
func (d *deltaStats) logAttrs() []any {
	p := d.pages()
	return []any{"kept_pages_by_sum", p.KeptBySum, "kept_pages_by_slot", p.KeptBySlot, "kept_pages_by_deltas", p.KeptByDeltas, "kept_pages_by_blob", p.KeptByBlob,
		"fetched_delta_pages", p.FetchedDelta, "fetched_part_pages", p.FetchedPart, "fetched_whole_pages", p.FetchedWhole, "zeroed_pages", p.Zeroed}
}

// batch writes one batch of files: fresh ones created sparse at their final
// length, or existing ones compared (delta); then what they need is
// fetched and written, and the files are synced.
func (w *writer) batch(ctx context.Context, files []entry, delta bool) error {
	w.files = files
	w.dests, w.xors = map[blob.ID][]dest{}, map[blob.ID][]dest{}
	w.pending = make([]atomic.Int64, len(files))
	w.settled = make([]atomic.Bool, len(files))
	if delta {
		start := time.Now()
		hs, err := w.checkPieces(ctx, files)
		if err == nil {
			err = w.each(ctx, len(files), func(i int) error { return w.compare(ctx, int32(i), &files[i], hs[i]) })
		}
		w.compareTime += time.Since(start)
		if err != nil {
			return err
		}
	} else {
		for i := range files {
			if err := w.createFile(&files[i]); err != nil {
				return err
			}
			w.wantAll(int32(i), &files[i])
		}
	}
	start := time.Now()
	if err := w.fetch(ctx); err != nil {
		return err
	}
	w.fetchTime += time.Since(start)
	start = time.Now()
	err := w.each(ctx, len(files), func(i int) error {
		if w.settled[i].Load() {
			return nil
		}
		return w.settleFile(int32(i))
	})
	w.settleTime += time.Since(start)
	w.files, w.dests, w.xors, w.pending, w.settled = nil, nil, nil, nil, nil
	return err
}

func (w *writer) addDest(id blob.ID, d dest) {
	w.pending[d.file].Add(d.n)
	w.mu.Lock()
	if d.xor {
		w.xors[id] = append(w.xors[id], d)
	} else {
		w.dests[id] = append(w.dests[id], d)
	}
	w.mu.Unlock()
}

// wantExtent records a non-zero extent of file i as to be fetched: its
// blob, or for a delta its base and then its blob XORed on top; baseHeld
// says the file holds the base pages there already.
func (w *writer) wantExtent(i int32, x filemap.Extent, bs int64, baseHeld bool) {
	off, n := int64(x.Page)*bs, int64(x.Count)*bs
	if !x.IsDelta() {
		w.addDest(x.Blob, dest{file: i, fileOff: off, blobOff: int64(x.BlobPage) * bs, n: n})
		return
	}
	if !baseHeld {
		w.addDest(x.Base, dest{file: i, base: true, fileOff: off, blobOff: int64(x.BasePage) * bs, n: n})
	}
	w.addDest(x.Blob, dest{file: i, xor: true, fileOff: off, blobOff: int64(x.BlobPage) * bs, n: n})
}

// isControl reports whether a file entry is pg_control, which is written
// last by finish.
func isControl(e *entry) bool { return e.root == 0 && e.rel == controlPath }

// layoutFresh creates every directory and link of the plan in empty roots
// (files come in batches).
func (w *writer) layoutFresh() error {
	for i := range w.p.roots {
		if err := w.mkdirAll(w.p.roots[i]); err != nil {
			return err
		}
	}
	if err := writeMarker(w.p.roots[0]); err != nil {
		return err
	}
	for i := range w.p.dirs {
		p := w.p.path(&w.p.dirs[i])
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("create directory %s: %w", p, err)
		}
	}
	for i := range w.p.links {
		l := &w.p.links[i]
		if err := os.Symlink(l.node.Target, w.p.path(l)); err != nil {
			return fmt.Errorf("create symbolic link %s: %w", w.p.path(l), err)
		}
	}
	return nil
}

// mkdirAll creates a root directory and any missing parents, giving the
// parents it creates to the owner too so that the server can reach the root.
func (w *writer) mkdirAll(p string) error {
	var created []string
	for d := p; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(p, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if w.owner != nil {
		for _, d := range created {
			if err := os.Chown(d, w.owner.UID, w.owner.GID); err != nil {
				return fmt.Errorf("chown %s: %w", d, err)
			}
		}
	}
	return nil
}

// createFile makes an empty file of the entry's final length: the pages
// nobody writes stay holes.
func (w *writer) createFile(e *entry) error {
	p := w.p.path(e)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if err := f.Truncate(e.size()); err != nil {
		f.Close()
		return fmt.Errorf("size %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	return nil
}

// wantAll records every non-zero piece of a file as to be fetched.
func (w *writer) wantAll(i int32, e *entry) {
	if m := e.fmap; m != nil {
		for _, x := range m.Extents {
			if !x.Blob.IsZero() {
				w.wantExtent(i, x, int64(m.BlockSize), false)
			}
		}
		return
	}
	for c, id := range e.node.Content {
		off := int64(c) * filemap.ChunkSize
		w.addDest(id, dest{file: i, whole: true, fileOff: off, n: min(filemap.ChunkSize, e.node.Size-off)})
	}
}

// fetch reads every recorded blob once per phase, planned by pack, and
// writes each of its destinations with pwrite: first the plain blobs and
// the bases of deltas, then the deltas' blobs onto those bases. ReadBlobs
// verifies every blob's keyed ID and bounds the bytes in flight.
func (w *writer) fetch(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w.syncq = make(chan int32, len(w.files))
	var wg sync.WaitGroup
	for range max(1, w.parallel/2) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range w.syncq {
				if err := w.settleFile(i); err != nil {
					cancel(err)
				}
			}
		}()
	}
	w.joinPhases()
	// ReadBlobs returns only once every callback has: the bases are all
	// written when the second phase starts.
	err := w.fetchPhase(ctx, w.dests)
	if err == nil {
		err = w.fetchPhase(ctx, w.xors)
	}
	close(w.syncq)
	wg.Wait()
	if err == nil {
		err = context.Cause(ctx)
	}
	return err
}

// joinPhases moves the plain destinations of each delta blob (a patch
// holds the changed pages of a window, some as deltas, some whole) into
// the second phase, beside its XORs: a restore after three incrementals
// fetched 809 MiB of its 4.7 GiB twice. Order only matters between a
// delta's base and its XOR, and the extents of a map never overlap, so a
// plain page may be written in either phase. A blob that is also the base
// of a delta stays in both (bases are slots and deltas patches, so none
// is in a repository tidemark wrote).
func (w *writer) joinPhases() {
	for id, xs := range w.xors {
		ds, ok := w.dests[id]
		if !ok || slices.ContainsFunc(ds, func(d dest) bool { return d.base }) {
			continue
		}
		w.xors[id] = append(ds, xs...)
		delete(w.dests, id)
	}
}

// fetchPhase reads the blobs of dests and writes each destination.
func (w *writer) fetchPhase(ctx context.Context, dests map[blob.ID][]dest) error {
	if len(dests) == 0 {
		return nil
	}
	ids := make([]blob.ID, 0, len(dests))
	for id := range dests {
		ids = append(ids, id)
	}
	err := w.readPages(ctx, ids, func(id blob.ID, b *blobPages) error {
		// A patch's pages all go to one file, often one extent each:
		// one open per file and blob, not per extent.
		var of openFile
		for _, d := range dests[id] {
			if err := w.put(id, b, d, &of); err != nil {
				of.close()
				return err
			}
		}
		return of.close()
	})
	// The blob alone does not tell the operator what the loss affects.
	var nf *repo.BlobNotFoundError
	if errors.As(err, &nf) && len(dests[nf.ID]) > 0 {
		return fmt.Errorf("%s: %w", w.p.path(&w.files[dests[nf.ID][0].file]), err)
	}
	var be *blobError
	if errors.As(err, &be) && len(dests[be.id]) > 0 {
		return fmt.Errorf("%s: %w", w.p.path(&w.files[dests[be.id][0].file]), err)
	}
	return err
}

// blobPages is a fetched blob as a restore lays it out: its plaintext, or
// for a patch-runs blob its runs, from which the pages a destination
// needs are read or XORed without expanding the rest.
type blobPages struct {
	data []byte
	runs *filemap.PatchRuns // set for a patch-runs blob
}

// size is the bytes the blob lays out.
func (b *blobPages) size() int64 {
	if b.runs != nil {
		return int64(b.runs.Pages()) * int64(b.runs.BlockSize())
	}
	return int64(len(b.data))
}

// bytes returns the blob's bytes [off, off+n): a slice of its plaintext,
// or its runs' pages read into buf. off and n are whole pages for runs.
func (b *blobPages) bytes(buf []byte, off, n int64) []byte {
	if b.runs == nil {
		return b.data[off : off+n]
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	b.runs.Read(buf, int(off/int64(b.runs.BlockSize())))
	return buf
}

// clone returns a copy of the blob's bytes [off, off+n).
func (b *blobPages) clone(off, n int64) []byte {
	if b.runs == nil {
		return bytes.Clone(b.data[off : off+n])
	}
	return b.bytes(nil, off, n)
}

// xor XORs the blob's bytes [off, off+len(dst)) onto dst.
func (b *blobPages) xor(dst []byte, off int64) {
	if b.runs == nil {
		subtle.XORBytes(dst, dst, b.data[off:off+int64(len(dst))])
		return
	}
	b.runs.XOR(dst, int(off/int64(b.runs.BlockSize())))
}

// blobError is an error about one blob, which the caller may place in
// the files it was for.
type blobError struct {
	id  blob.ID
	err error
}

func (e *blobError) Error() string { return e.err.Error() }
func (e *blobError) Unwrap() error { return e.err }

// readPages reads blobs whose bytes a restore lays out as pages (slots,
// patches, file chunks) with ReadBlobs, and hands fn each as blobPages,
// which fn must not keep. It counts what it fetched.
func (w *writer) readPages(ctx context.Context, ids []blob.ID, fn func(id blob.ID, b *blobPages) error) error {
	return w.r.ReadBlobs(ctx, ids, func(id blob.ID, data []byte) error {
		w.fetched.Add(int64(len(data)))
		w.fetchedBlobs.Add(1)
		loc, err := w.r.Lookup(ctx, id)
		if err != nil {
			return err
		}
		if loc.Kind != blob.KindPatchRuns {
			return fn(id, &blobPages{data: data})
		}
		pr, ok := w.runs.Get().(*filemap.PatchRuns)
		if !ok {
			pr = new(filemap.PatchRuns)
		}
		defer w.runs.Put(pr)
		if err := pr.Parse(data); err != nil {
			return &blobError{id, &repo.CorruptError{Key: "blob " + id.String(), Err: err}}
		}
		return fn(id, &blobPages{runs: pr})
	})
}

// openFile is the file the last put wrote, kept open for the next put to
// the same file: through the page cache (f) and with O_DIRECT (d), each
// opened when first needed. An open per 1 MiB slot cost a full restore
// half a second of CPU.
type openFile struct {
	idx  int32
	path string
	f    *os.File
	d    directFile
	buf  []byte // the pages an XOR reads back, reused
	page []byte // pages read from a patch's runs, reused
}

// directFile is a file opened for O_DIRECT writes.
type directFile interface {
	io.WriterAt
	io.Closer
}

// get returns file idx (path p) open for reading and writing, since an XOR
// reads back what it overwrites.
func (o *openFile) get(idx int32, p string) (*os.File, error) {
	if err := o.switchTo(idx, p); err != nil {
		return nil, err
	}
	if o.f == nil {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		o.f = f
	}
	return o.f, nil
}

// writeDirect writes b at off of file idx (path p) through its O_DIRECT
// descriptor, opened with open on first use. An EINVAL from open or write
// means the file system refuses direct I/O.
func (o *openFile) writeDirect(idx int32, p string, b []byte, off int64, open func(string) (directFile, error)) error {
	if err := o.switchTo(idx, p); err != nil {
		return err
	}
	if o.d == nil {
		d, err := open(p)
		if err != nil {
			return fmt.Errorf("open %s for direct I/O: %w", p, err)
		}
		o.d = d
	}
	if _, err := o.d.WriteAt(b, off); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// switchTo closes what is open unless it is file idx, and makes idx the
// current file.
func (o *openFile) switchTo(idx int32, p string) error {
	if o.idx == idx && o.path == p {
		return nil
	}
	if err := o.close(); err != nil {
		return err
	}
	o.idx, o.path = idx, p
	return nil
}

func (o *openFile) close() error {
	var errs []error
	if o.f != nil {
		errs = append(errs, o.f.Close())
		o.f = nil
	}
	if o.d != nil {
		errs = append(errs, o.d.Close())
		o.d = nil
	}
	path := o.path
	o.path = ""
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// xorAt XORs b onto the bytes at off of file idx (path p).
func (o *openFile) xorAt(idx int32, p string, b *blobPages, blobOff, n, off int64) error {
	f, err := o.get(idx, p)
	if err != nil {
		return err
	}
	if int64(cap(o.buf)) < n {
		o.buf = make([]byte, n)
	}
	cur := o.buf[:n]
	// The file has its full length since the layout: a short read (EOF)
	// means something else truncated it, and is an error too.
	if _, err := f.ReadAt(cur, off); err != nil {
		return fmt.Errorf("read back %s at %d to apply a delta: %w", p, off, err)
	}
	b.xor(cur, blobOff)
	if _, err := f.WriteAt(cur, off); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

func (w *writer) put(id blob.ID, bp *blobPages, d dest, of *openFile) error {
	e := &w.files[d.file]
	p := w.p.path(e)
	if (d.whole && bp.size() != d.n) || d.blobOff+d.n > bp.size() {
		what := "blob"
		if d.xor {
			what = "delta blob"
		}
		return fmt.Errorf("%s: %s %s has %d bytes, the snapshot's map needs %d from %d: %w", p, what, id, bp.size(), d.n, d.blobOff, filemap.ErrInvalid)
	}
	if d.xor {
		// Through the page cache, never O_DIRECT: the read-back of the
		// base and the write of the result touch the same pages, and
		// deltas are small.
		if err := of.xorAt(d.file, p, bp, d.blobOff, d.n, d.fileOff); err != nil {
			return err
		}
		w.done(d)
		return nil
	}
	b := bp.bytes(of.page, d.blobOff, d.n)
	if bp.runs != nil {
		of.page = b[:0]
	}
	written := false
	// The base under a delta goes through the page cache: the XOR pass
	// reads it back, which after O_DIRECT means from disk, page run by
	// page run. The rest of the file may go direct, since a map's extents
	// never overlap: no page written direct is read back. (Writing all of
	// every file that has a delta through the cache grew the cache by the
	// whole of the benchmark's two big tables: five restores after three
	// incrementals took 5.4-10.6 s, against 4.7-6.9 s this way.)
	if !d.whole && !d.base && w.direct.Load() && directio.Aligned(b, d.fileOff) {
		err := of.writeDirect(d.file, p, b, d.fileOff, w.openDirect)
		switch {
		case err == nil:
			written = true
		case errors.Is(err, syscall.EINVAL):
			// tmpfs, some FUSE and older ZFS refuse O_DIRECT: write
			// through the page cache from now on.
			if w.direct.Swap(false) {
				w.log.Info("restore: the file system refuses direct I/O; writing through the page cache", "file", p)
			}
		default:
			return err
		}
	}
	if !written {
		f, err := of.get(d.file, p)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(b, d.fileOff); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	w.done(d)
	return nil
}

// done counts a written destination, and hands its file to a syncer when
// it was the last.
func (w *writer) done(d dest) {
	w.written.Add(d.n)
	if !d.base { // a delta's base and its XOR are one extent
		w.progress.Add(d.n)
	}
	if w.pending[d.file].Add(-d.n) == 0 {
		w.syncq <- d.file
	}
}

// openDirect opens the existing file p for O_DIRECT writes.
func openDirect(p string) (directFile, error) {
	return os.OpenFile(p, os.O_WRONLY|syscall.O_DIRECT, 0)
}

// each runs fn for every index below n on w.parallel goroutines and returns
// the first error.
func (w *writer) each(ctx context.Context, n int, fn func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, w.parallel) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}

// settle gives every restored entry its mode, owner and recorded mtime and
// makes it durable: files first, then directories children before parents.
func (w *writer) settle() error {
	if err := w.syncRoots(); err != nil {
		return err
	}
	dirMode := fs.FileMode(w.p.dirMode())
	for i := range w.p.links {
		p := w.p.path(&w.p.links[i])
		if w.owner != nil {
			if err := os.Lchown(p, w.owner.UID, w.owner.GID); err != nil {
				return fmt.Errorf("chown %s: %w", p, err)
			}
		}
	}
	for i := len(w.p.dirs) - 1; i >= 0; i-- {
		if err := syncPath(w.p.path(&w.p.dirs[i]), dirMode|fs.ModeDir, w.owner); err != nil {
			return err
		}
	}
	for i := len(w.p.roots) - 1; i >= 0; i-- {
		if err := syncPath(w.p.roots[i], dirMode|fs.ModeDir, w.owner); err != nil {
			return err
		}
	}
	return nil
}

// syncEach: files of at least this many bytes are fsynced one by one as
// they are completed, overlapping the flush with the fetch of others;
// smaller ones are made durable together by one syncfs per file system at
// the end (syncRoots). A million one-page files, one fsync each, took most
// of a restore's time (a fsync costs milliseconds on a busy disk).
const syncEach = 1 << 20

// settleFile gives a restored file its mode, owner and recorded mtime and,
// when it is big (syncEach), fsyncs it.
func (w *writer) settleFile(i int32) error {
	e := &w.files[i]
	p := w.p.path(e)
	mt := time.Unix(0, e.node.ModTime)
	if err := os.Chtimes(p, mt, mt); err != nil {
		return fmt.Errorf("set mtime of %s: %w", p, err)
	}
	if err := setMeta(p, fs.FileMode(w.p.fileMode()), w.owner, e.node.Size >= syncEach); err != nil {
		return err
	}
	w.settled[i].Store(true)
	return nil
}

// syncPath sets the mode and owner of a file or directory and fsyncs it.
func syncPath(p string, mode fs.FileMode, owner *osuser.Owner) error {
	return setMeta(p, mode, owner, true)
}

// setMeta sets the mode and owner of a file or directory, and fsyncs it
// when sync is set.
func setMeta(p string, mode fs.FileMode, owner *osuser.Owner, sync bool) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	if err := f.Chmod(mode.Perm()); err != nil {
		return fmt.Errorf("chmod %s: %w", p, err)
	}
	if owner != nil {
		if err := f.Chown(owner.UID, owner.GID); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	if sync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", p, err)
		}
	}
	return nil
}

// syncRoots makes everything written under the roots durable: one syncfs
// of each file system they are on (the small files settleFile did not
// fsync, and the directories).
func (w *writer) syncRoots() error {
	for _, root := range w.p.roots {
		f, err := os.Open(root)
		if err != nil {
			return fmt.Errorf("open %s: %w", root, err)
		}
		err = unix.Syncfs(int(f.Fd()))
		f.Close()
		if err != nil {
			return fmt.Errorf("syncfs %s: %w", root, err)
		}
	}
	return nil
}

// writeDurable writes a whole small file and fsyncs it.
func writeDurable(p string, data []byte, mode fs.FileMode, owner *osuser.Owner) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && owner != nil {
		err = f.Chown(owner.UID, owner.GID)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

func syncDir(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	return nil
}

func writeMarker(pgdata string) error {
	p := filepath.Join(pgdata, markerName)
	if err := writeDurable(p, []byte("tidemark restore in progress: rerun tidemark restore --delta to finish it\n"), 0o600, nil); err != nil {
		return err
	}
	return syncDir(pgdata)
}

// writeControl writes pg_control last: to a temporary name, fsynced, then
// renamed, so that the directory never holds a partial one. Before it, the
// marker goes: from here on the directory is a complete restore.
func (w *writer) writeControl() error {
	pgdata := w.p.roots[0]
	global := filepath.Join(pgdata, "global")
	if err := os.Remove(filepath.Join(pgdata, markerName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", markerName, err)
	}
	if err := syncDir(pgdata); err != nil {
		return err
	}
	tmp := filepath.Join(global, "pg_control.tidemark-tmp")
	if err := writeDurable(tmp, w.p.control, fs.FileMode(w.p.fileMode()), w.owner); err != nil {
		return err
	}
	if n := w.p.ctlNode; n != nil {
		mt := time.Unix(0, n.ModTime)
		if err := os.Chtimes(tmp, mt, mt); err != nil {
			return fmt.Errorf("set mtime of %s: %w", tmp, err)
		}
	}
	if err := os.Rename(tmp, filepath.Join(global, "pg_control")); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	if err := syncDir(global); err != nil {
		return err
	}
	return syncDir(pgdata)
}

// --- delta ---------------------------------------------------------------

// layoutDelta makes an existing directory match the plan's shape: entries
// the snapshot lacks are removed (in a tablespace location, only inside this
// cluster's own directories, since other major versions may share it),
// entries of the wrong type are replaced, missing ones created. Then every
// file is compared with the snapshot, in parallel, and only what differs is
// recorded for fetching.
func (w *writer) layoutDelta(ctx context.Context) error {
	for i := range w.p.roots {
		if err := w.mkdirAll(w.p.roots[i]); err != nil {
			return err
		}
	}
	for _, d := range w.p.dirs {
		if err := ensureDir(w.p.path(&d)); err != nil {
			return err
		}
	}
	for i := range w.p.links {
		l := &w.p.links[i]
		p := w.p.path(l)
		if t, err := os.Readlink(p); err == nil && t == l.node.Target {
			continue
		}
		os.Remove(p)
		if err := os.Symlink(l.node.Target, p); err != nil {
			return fmt.Errorf("create symbolic link %s: %w", p, err)
		}
	}
	return ctx.Err()
}

// cleanVisit sees the snapshot's entries of a directory in name order
// (plan.eachBatch) and removes, as they pass, what lies on disk between
// them: names the snapshot does not have, and entries of another type.
func (w *writer) cleanVisit(l *listing, n *filemap.Node) error {
	if w.cleaning != l {
		if err := w.cleanStart(l); err != nil {
			return err
		}
	}
	for len(w.existing) > 0 && w.existing[0] < n.Name {
		if err := w.cleanRemove(l, w.existing[0], false); err != nil {
			return err
		}
		w.existing = w.existing[1:]
	}
	if len(w.existing) > 0 && w.existing[0] == n.Name {
		w.existing = w.existing[1:]
		p := filepath.Join(w.p.listingPath(l), n.Name)
		if st, err := os.Lstat(p); err == nil && !sameType(st.Mode(), n.Type) {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("remove %s: %w", p, err)
			}
			w.removed.Add(1)
			if n.Type == filemap.TypeDir {
				// Directories were made before the files: again.
				if err := ensureDir(p); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// cleanEnd removes what lies on disk after the snapshot's last entry of a
// directory.
func (w *writer) cleanEnd(l *listing) error {
	if w.cleaning != l {
		if err := w.cleanStart(l); err != nil {
			return err
		}
	}
	for _, name := range w.existing {
		if err := w.cleanRemove(l, name, false); err != nil {
			return err
		}
	}
	w.cleaning, w.existing = nil, nil
	return nil
}

// cleanStart reads what a directory holds on disk.
func (w *writer) cleanStart(l *listing) error {
	p := w.p.listingPath(l)
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", p, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("read directory %s: %w", p, err)
	}
	slices.Sort(names)
	w.cleaning, w.existing = l, names
	return nil
}

// cleanRemove removes an entry the snapshot does not have, but the restore
// marker and, in a tablespace location, what belongs to other clusters.
func (w *writer) cleanRemove(l *listing, name string, _ bool) error {
	switch {
	case l.root == 0 && l.rel == "" && name == markerName:
		return nil
	case l.root > 0 && l.rel == "":
		return nil // another cluster's directory in a shared tablespace
	}
	p := filepath.Join(w.p.listingPath(l), name)
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	w.removed.Add(1)
	return nil
}

func ensureDir(p string) error {
	st, err := os.Lstat(p)
	if err == nil && st.IsDir() {
		return nil
	}
	if err == nil {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	if err := os.Mkdir(p, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", p, err)
	}
	return nil
}

func sameType(m fs.FileMode, t filemap.NodeType) bool {
	switch t {
	case filemap.TypeDir:
		return m.IsDir()
	case filemap.TypeSymlink:
		return m&fs.ModeSymlink != 0
	case filemap.TypeFile:
		return m.IsRegular()
	}
	return false
}

// compareBuf returns a read buffer of a slot for compare, from the pool.
func (w *writer) compareBuf() *[]byte {
	if b, ok := w.compareBufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, blob.SlotSize)
	return &b
}

// rangeReader returns how the comparison reads the existing file f (path
// p, have bytes long): read returns n bytes at off in *bp's buffer (grown
// as needed), or nil for a range that passes the end of the file; done
// closes what it opened.
func (w *writer) rangeReader(f *os.File, p string, have int64, bp *[]byte) (read func(off, n int64) ([]byte, error), done func()) {
	mode := directio.Cached
	if w.direct.Load() {
		mode = directio.CacheFirst
	}
	cr := directio.NewReader(f, p, mode)
	read = func(off, n int64) ([]byte, error) {
		if off+n > have {
			return nil, nil
		}
		if int64(cap(*bp)) < n {
			*bp = make([]byte, 0, n)
		}
		b := (*bp)[:n]
		if _, err := cr.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		return b, nil
	}
	return read, func() { cr.Close() }
}

// compare checks one existing file against the snapshot: relation pages by
// the keyed ID of each whole blob they should equal (a slot or a patch),
// other files by size and mtime and then by chunk. Deltas are never equal
// to their blob: they are fetched unless a window sum says otherwise, their
// base too unless the file holds it. It records what differs, then sets the
// file's length and punches holes where zero pages belong. h holds what
// checkPieces found of a relation file (windows proven by their sums,
// whole blobs checked), for every relation file.
func (w *writer) compare(ctx context.Context, i int32, e *entry, h *proven) error {
	p := w.p.path(e)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if err := w.createFile(e); err != nil {
			return err
		}
		w.wantAll(i, e)
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	have := st.Size()
	var punch [][2]int64
	bp := w.compareBuf()
	defer w.compareBufs.Put(bp)
	read, done := w.rangeReader(f, p, have, bp)
	defer done()
	same := true
	if m := e.fmap; m != nil {
		bs := int64(m.BlockSize)
		windows := h.windows
		held, slots, err := w.heldSlots(ctx, m, have, windows, read)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if held, err = w.heldDeltas(ctx, m, have, windows, slots, held, read); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		sp := m.SlotPages()
		var parts []filemap.Extent
		for _, win := range windows {
			if win {
				w.delta.keptSum.Add(int64(sp))
			}
		}
		for xi, whole := range m.Extents {
			if err := ctx.Err(); err != nil {
				return err
			}
			if held[xi] {
				continue
			}
			parts = outsideWindows(parts[:0], whole, windows, sp)
			for _, x := range parts {
				off, n := int64(x.Page)*bs, int64(x.Count)*bs
				if x.IsDelta() {
					same = false
					w.delta.wantDelta.Add(int64(x.Count))
					w.wantDelta(i, x, bs, sp, slots)
					continue
				}
				if x.Blob.IsZero() {
					zero, err := zeroRange(f, p, off, min(n, max(0, have-off)), *bp)
					if err != nil {
						return err
					}
					if !zero {
						punch = append(punch, [2]int64{off, n})
						same = false
						w.delta.wantZero.Add(int64(x.Count))
					}
					continue
				}
				loc, err := w.r.Lookup(ctx, x.Blob)
				if err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				if x.BlobPage == 0 && isWholeBlob(loc, n) {
					// The first pass checked whole extents only.
					equal, checked := h.blobs[xi]
					if !checked || x.Page != whole.Page || x.Count != whole.Count {
						b, err := read(off, n)
						if err != nil {
							return err
						}
						equal = b != nil && w.r.BlobID(loc.Kind, b) == x.Blob
					}
					if equal {
						w.delta.keptBlob.Add(int64(x.Count))
						continue
					}
					w.delta.wantWhole.Add(int64(x.Count))
				} else {
					w.delta.wantPart.Add(int64(x.Count))
				}
				same = false
				w.addDest(x.Blob, dest{file: i, fileOff: off, blobOff: int64(x.BlobPage) * bs, n: n})
			}
		}
	} else if have != e.node.Size || st.ModTime().UnixNano() != e.node.ModTime {
		for c, id := range e.node.Content {
			off := int64(c) * filemap.ChunkSize
			n := min(filemap.ChunkSize, e.node.Size-off)
			b, err := read(off, n)
			if err != nil {
				return err
			}
			if b != nil && w.r.BlobID(blob.KindFile, b) == id {
				continue
			}
			same = false
			w.addDest(id, dest{file: i, whole: true, fileOff: off, n: n})
		}
		if have != e.node.Size {
			same = false
		}
	}
	if have != e.size() {
		if err := f.Truncate(e.size()); err != nil {
			return fmt.Errorf("size %s: %w", p, err)
		}
	}
	for _, r := range punch {
		if err := punchHole(f, r[0], r[1]); err != nil {
			return fmt.Errorf("zero %s at %d: %w", p, r[0], err)
		}
	}
	if same {
		w.skipped.Add(1)
	}
	return nil
}

// wantDelta records a delta extent of file i, window by window: where
// heldSlots found the file to hold the window's slot and that slot is the
// base at the same offset, only the XOR pass is needed.
func (w *writer) wantDelta(i int32, x filemap.Extent, bs int64, slotPages uint32, slots map[uint32]blob.ID) {
	end := x.Page + x.Count
	for p := x.Page; p < end; {
		wstart := p / slotPages * slotPages
		y := x.Slice(p, min(slotPages-(p-wstart), end-p))
		w.wantExtent(i, y, bs, slots[wstart/slotPages] == y.Base && y.BasePage == y.Page-wstart)
		p += y.Count
	}
}

// proven is what the delta restore's first pass (checkPieces) found an
// existing relation file to hold already: the windows equal to their sum,
// and, for extents that are a whole blob outside those windows, whether
// the file's bytes are that blob (the extent's index, present once
// checked).
type proven struct {
	mu      sync.Mutex
	windows map[uint32]bool
	blobs   map[int]bool
}

// isWholeBlob reports whether n bytes of a file, from the first page of the
// blob at loc, are the blob's whole plaintext, so that hashing them as
// that kind proves them. A patch-runs blob's plaintext is its runs, not
// its pages: never.
func isWholeBlob(loc index.Location, n int64) bool {
	return loc.Kind != blob.KindPatchRuns && n == int64(loc.RawLength)
}

// defaultPieceWindows is the windows (64 MiB) one piece of the first pass
// reads.
// A file compared whole by one worker left the other core idle while
// the biggest segment of a batch (1 GiB) was hashed alone: in pieces, the
// workers hash side by side. Pieces are large enough that a cold copy's
// reads stay sequential runs.
const defaultPieceWindows = 64

// piece is windows [from, to) of file.
type piece struct {
	file     int32
	from, to uint32
}

// checkPieces reads the relation files of a batch that exist already, in
// pieces on every worker, and hashes what can be proven whole: each
// window with a sum, and each extent that is a whole blob in a window
// without one. compare then decides with those answers and reads only the
// rest (the windows whose sums differ).
func (w *writer) checkPieces(ctx context.Context, files []entry) ([]*proven, error) {
	hs := make([]*proven, len(files))
	var pieces []piece
	for i := range files {
		m := files[i].fmap
		if m == nil {
			continue
		}
		hs[i] = &proven{windows: map[uint32]bool{}, blobs: map[int]bool{}}
		for from, n := uint32(0), m.Windows(); from < n; from += w.pieceWindows {
			pieces = append(pieces, piece{file: int32(i), from: from, to: min(from+w.pieceWindows, n)})
		}
	}
	err := w.each(ctx, len(pieces), func(k int) error {
		pc := pieces[k]
		return w.checkPiece(ctx, &files[pc.file], pc, hs[pc.file])
	})
	return hs, err
}

// checkPiece checks one piece of an existing file (checkPieces). A file it
// cannot open (missing: compare creates it) or that is not a regular file
// is left to compare, which reports what is wrong with it; so is an extent
// that crosses the piece's end.
func (w *writer) checkPiece(ctx context.Context, e *entry, pc piece, h *proven) error {
	p := w.p.path(e)
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil
	}
	bp := w.compareBuf()
	defer w.compareBufs.Put(bp)
	read, done := w.rangeReader(f, p, st.Size(), bp)
	defer done()
	m := e.fmap
	bs := int64(m.BlockSize)
	sp := m.SlotPages()
	windows := map[uint32]bool{}
	for win := pc.from; win < pc.to; win++ {
		id, ok := m.Sum(win)
		if !ok {
			continue
		}
		p0 := win * sp
		p1 := min(p0+sp, m.Pages)
		b, err := read(int64(p0)*bs, int64(p1-p0)*bs)
		if err != nil {
			return err
		}
		if b != nil && w.r.BlobID(blob.KindSlot, b) == id {
			windows[win] = true
		}
	}
	blobs := map[int]bool{}
	start, end := pc.from*sp, min(pc.to*sp, m.Pages)
	first, _ := slices.BinarySearchFunc(m.Extents, start, func(x filemap.Extent, page uint32) int { return cmp.Compare(x.Page, page) })
	for xi := first; xi < len(m.Extents) && m.Extents[xi].Page < end; xi++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		x := m.Extents[xi]
		if x.Page+x.Count > end || x.IsDelta() || x.Blob.IsZero() || x.BlobPage != 0 || inWindows(x, windows, sp) {
			continue
		}
		loc, err := w.r.Lookup(ctx, x.Blob)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		off, n := int64(x.Page)*bs, int64(x.Count)*bs
		if !isWholeBlob(loc, n) {
			continue
		}
		b, err := read(off, n)
		if err != nil {
			return err
		}
		if b != nil {
			blobs[xi] = w.r.BlobID(loc.Kind, b) == x.Blob
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	maps.Copy(h.windows, windows)
	maps.Copy(h.blobs, blobs)
	return nil
}

// inWindows reports whether any page of x lies in one of the windows.
func inWindows(x filemap.Extent, windows map[uint32]bool, slotPages uint32) bool {
	for win := x.Page / slotPages; win <= (x.Page+x.Count-1)/slotPages; win++ {
		if windows[win] {
			return true
		}
	}
	return false
}

// outsideWindows appends to dst the parts of x that lie outside the held
// windows (x itself when none is held).
func outsideWindows(dst []filemap.Extent, x filemap.Extent, held map[uint32]bool, slotPages uint32) []filemap.Extent {
	if len(held) == 0 {
		return append(dst, x)
	}
	end := x.Page + x.Count
	for p := x.Page; p < end; {
		wend := min((p/slotPages+1)*slotPages, end)
		if !held[p/slotPages] {
			part := x.Slice(p, wend-p)
			if n := len(dst); n > 0 && dst[n-1].Page+dst[n-1].Count == p {
				dst[n-1].Count += part.Count
			} else {
				dst = append(dst, part)
			}
		}
		p = wend
	}
	return dst
}

// heldSlots finds the extents whose pages the existing file already holds
// although no extent covers its whole blob: a slot that a later backup
// split with patches or deltas. When the existing slot-sized window hashes
// to that slot's ID, the file still has the slot's pages (a stale copy from
// before the patches): only the patches need fetching, and of the deltas
// on that slot only their XOR pass. It returns the held extents and the
// slot that each such window holds. Windows in heldWin (matched whole by
// their sums) are not read again.
func (w *writer) heldSlots(ctx context.Context, m *filemap.Map, have int64, heldWin map[uint32]bool, read func(off, n int64) ([]byte, error)) (map[int]bool, map[uint32]blob.ID, error) {
	bs := int64(m.BlockSize)
	slotPages := m.SlotPages()
	var held map[int]bool
	var slots map[uint32]blob.ID
	for first, win := range mapWindows(m) {
		wstart := win[0].Page / slotPages * slotPages
		wend := min(wstart+slotPages, m.Pages)
		// One plain extent is the whole slot or not cut from one; one
		// delta may still be XORed onto the slot the file holds.
		if (len(win) < 2 && !win[0].IsDelta()) || heldWin[wstart/slotPages] || win[len(win)-1].Page+win[len(win)-1].Count > wend || int64(wend)*bs > have {
			continue
		}
		slot, slotLen, err := w.windowSlot(ctx, win, wstart)
		if err != nil {
			return nil, nil, err
		}
		if slot.IsZero() || int64(slotLen) != int64(wend-wstart)*bs {
			continue
		}
		b, err := read(int64(wstart)*bs, int64(slotLen))
		if err != nil {
			return nil, nil, err
		}
		if b == nil || w.r.BlobID(blob.KindSlot, b) != slot {
			continue
		}
		if slots == nil {
			held, slots = map[int]bool{}, map[uint32]blob.ID{}
		}
		slots[wstart/slotPages] = slot
		for i := range win {
			// A delta's pages are not its blob's, whatever blob that is.
			if win[i].Blob == slot && !win[i].IsDelta() {
				held[first+i] = true
				w.delta.keptSlot.Add(int64(win[i].Count))
			}
		}
	}
	return held, slots, nil
}

// heldDeltas finds the windows that the existing file holds already as
// the snapshot has them, where a backup split the window's slot with
// deltas: every page is the slot's own or a delta on the slot's page at
// the same offset. XORing the deltas' patch pages onto what the file holds
// then gives back the slot, whose ID proves every page of the window; only
// the patch blobs are read (small: a page that changed a little XORs to
// almost nothing), not the slot. Without this, a delta restore over a
// copy that differs in 1% of its pages fetched and rewrote every such
// window, a third of the pages of a database after three incrementals.
// It adds the extents of the windows it proves to held (which it returns,
// made when nil); windows held already (by a sum, or as a stale slot) are
// not read again.
func (w *writer) heldDeltas(ctx context.Context, m *filemap.Map, have int64, heldWin map[uint32]bool, slots map[uint32]blob.ID, held map[int]bool,
	read func(off, n int64) ([]byte, error)) (map[int]bool, error) {
	wins, err := w.deltaWindows(ctx, m, have, heldWin, slots)
	if err != nil || len(wins) == 0 {
		return held, err
	}
	bs := int64(m.BlockSize)
	// Windows go in groups whose patches are read with one ReadBlobs
	// call, a GET per run of neighbouring blobs: a call per patch, or per
	// few, cost MinIO more CPU than the slots it spared. A group holds
	// only the delta pages its windows need, at most maxGroupDeltaBytes.
	for g := 0; g < len(wins); {
		need := map[blob.ID][]filemap.Extent{}
		var ids []blob.ID
		var needBytes int64
		e := g
		for ; e < len(wins) && (e == g || needBytes < w.groupDeltaBytes); e++ {
			for _, x := range m.Extents[wins[e].first : wins[e].first+wins[e].count] {
				if !x.IsDelta() {
					continue
				}
				if _, ok := need[x.Blob]; !ok {
					ids = append(ids, x.Blob)
				}
				need[x.Blob] = append(need[x.Blob], x)
				needBytes += int64(x.Count) * bs
			}
		}
		// pages[extent's blob and page] = its delta pages, copied out of
		// the patch (ReadBlobs reuses its buffers).
		type at struct {
			id   blob.ID
			page uint32
		}
		pages := make(map[at][]byte, len(ids))
		var mu sync.Mutex
		err := w.readPages(ctx, ids, func(id blob.ID, b *blobPages) error {
			mu.Lock()
			defer mu.Unlock()
			for _, x := range need[id] {
				from, n := int64(x.BlobPage)*bs, int64(x.Count)*bs
				if from+n <= b.size() { // short: left to the fetch, which says so
					pages[at{id, x.BlobPage}] = b.clone(from, n)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("patches of page deltas: %w", err)
		}
		for _, dw := range wins[g:e] {
			win := m.Extents[dw.first : dw.first+dw.count]
			b, err := read(int64(dw.start)*bs, int64(dw.pages)*bs)
			if err != nil {
				return nil, err
			}
			ok := b != nil
			for _, x := range win {
				if !ok || !x.IsDelta() {
					continue
				}
				pb, have := pages[at{x.Blob, x.BlobPage}]
				if !have {
					ok = false
					continue
				}
				off := int64(x.Page-dw.start) * bs
				subtle.XORBytes(b[off:off+int64(len(pb))], b[off:off+int64(len(pb))], pb)
			}
			if !ok || w.r.BlobID(blob.KindSlot, b) != dw.slot {
				continue
			}
			if held == nil {
				held = map[int]bool{}
			}
			for i := range win {
				held[dw.first+i] = true
			}
			w.delta.keptDelta.Add(int64(dw.pages))
		}
		g = e
	}
	return held, nil
}

// maxGroupDeltaBytes bounds the delta pages heldDeltas holds at once for
// one file (the window that passes it closes the group).
const maxGroupDeltaBytes = 4 << 20

// deltaWindow is a window heldDeltas may prove: extents [first,
// first+count) of the map, pages [start, start+pages), all the slot's own
// pages or deltas on them.
type deltaWindow struct {
	first, count int
	start, pages uint32
	slot         blob.ID
}

// deltaWindows lists the windows of m that heldDeltas may prove: within
// the existing file, with no sum, not held already, made of slot's own
// pages and deltas on them at their own offsets, with at least one delta.
func (w *writer) deltaWindows(ctx context.Context, m *filemap.Map, have int64, heldWin map[uint32]bool, slots map[uint32]blob.ID) ([]deltaWindow, error) {
	bs := int64(m.BlockSize)
	slotPages := m.SlotPages()
	var out []deltaWindow
	for first, win := range mapWindows(m) {
		wstart := win[0].Page / slotPages * slotPages
		wend := min(wstart+slotPages, m.Pages)
		w0 := wstart / slotPages
		if _, ok := m.Sum(w0); ok || heldWin[w0] || !slots[w0].IsZero() || int64(wend)*bs > have ||
			win[len(win)-1].Page+win[len(win)-1].Count > wend || !slices.ContainsFunc(win, func(x filemap.Extent) bool { return x.IsDelta() }) {
			continue
		}
		slot, slotLen, err := w.windowSlot(ctx, win, wstart)
		if err != nil {
			return nil, err
		}
		if slot.IsZero() || int64(slotLen) != int64(wend-wstart)*bs || !onSlot(win, slot, wstart) {
			continue
		}
		out = append(out, deltaWindow{first: first, count: len(win), start: wstart, pages: wend - wstart, slot: slot})
	}
	return out, nil
}

// mapWindows yields the extents of m window by window: the index of the
// first and the extents that begin in the window the first begins in (so
// none begins before it; the last may reach past it, which callers check).
func mapWindows(m *filemap.Map) iter.Seq2[int, []filemap.Extent] {
	return func(yield func(int, []filemap.Extent) bool) {
		slotPages := m.SlotPages()
		ext := m.Extents
		for j := 0; j < len(ext); {
			wend := min(ext[j].Page/slotPages*slotPages+slotPages, m.Pages)
			k := j
			for k < len(ext) && ext[k].Page < wend {
				k++
			}
			if !yield(j, ext[j:k]) {
				return
			}
			j = k
		}
	}
}

// onSlot reports whether every extent of a window starting at page wstart
// is the slot's own pages or deltas on them, at the pages' own offsets.
func onSlot(win []filemap.Extent, slot blob.ID, wstart uint32) bool {
	for _, x := range win {
		switch {
		case x.IsDelta():
			if x.Base != slot || x.BasePage != x.Page-wstart {
				return false
			}
		case x.Blob != slot || x.BlobPage != x.Page-wstart:
			return false
		}
	}
	return true
}

// windowSlot returns the slot blob that the extents of the window starting
// at page wstart are cut from, and its length: the one KindSlot blob that
// its plain extents point into at their own offsets, or, when they point
// into none, the first delta base that is such a slot. Plain extents that
// point into two slots, or into one at another offset, have none.
func (w *writer) windowSlot(ctx context.Context, win []filemap.Extent, wstart uint32) (blob.ID, uint32, error) {
	var slot blob.ID
	var slotLen uint32
	for _, x := range win {
		if x.Blob.IsZero() || x.IsDelta() {
			continue
		}
		loc, err := w.r.Lookup(ctx, x.Blob)
		if err != nil {
			return blob.ID{}, 0, err
		}
		if loc.Kind != blob.KindSlot {
			continue
		}
		if (!slot.IsZero() && x.Blob != slot) || x.BlobPage != x.Page-wstart {
			return blob.ID{}, 0, nil
		}
		slot, slotLen = x.Blob, loc.RawLength
	}
	if !slot.IsZero() {
		return slot, slotLen, nil
	}
	for _, x := range win {
		if !x.IsDelta() || x.BasePage != x.Page-wstart {
			continue
		}
		loc, err := w.r.Lookup(ctx, x.Base)
		if err != nil {
			return blob.ID{}, 0, fmt.Errorf("base of the delta at page %d: %w", x.Page, err)
		}
		if loc.Kind == blob.KindSlot {
			return x.Base, loc.RawLength, nil
		}
	}
	return blob.ID{}, 0, nil
}

// zeroRange reports whether n bytes at off are all zero.
func zeroRange(f *os.File, p string, off, n int64, buf []byte) (bool, error) {
	buf = buf[:cap(buf)]
	for n > 0 {
		step := min(n, int64(len(buf)))
		if _, err := f.ReadAt(buf[:step], off); err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("read %s: %w", p, err)
		}
		for _, c := range buf[:step] {
			if c != 0 {
				return false, nil
			}
		}
		off += step
		n -= step
	}
	return true, nil
}

// punchHole turns a range into a hole (zeros that take no space), or
// writes zeros where the file system cannot punch.
func punchHole(f *os.File, off, n int64) error {
	const punchHole, keepSize = 0x02, 0x01 // FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE
	if err := syscall.Fallocate(int(f.Fd()), punchHole|keepSize, off, n); err == nil {
		return nil
	}
	zero := make([]byte, min(n, blob.SlotSize))
	for n > 0 {
		step := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:step], off); err != nil {
			return err
		}
		off += step
		n -= step
	}
	return nil
}
