package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/pack"
)

// minSavingDivisor: a compressed blob is stored compressed only if it saves
// at least 1/minSavingDivisor of the raw size; otherwise the decompression on
// every read is not worth it and it is stored raw.
const minSavingDivisor = 16

// WriterStats counts what a Writer did.
type WriterStats struct {
	Blobs       int64 // Add calls
	NewBlobs    int64 // blobs stored (not deduplicated, not zero)
	ZeroSlots   int64 // all-zero slots (never stored)
	RawBytes    int64 // plaintext bytes of all Add calls
	NewRawBytes int64 // plaintext bytes of stored blobs
	StoredBytes int64 // bytes of stored blobs after compression
	Packs       int64 // packs uploaded
	PackBytes   int64 // bytes of pack objects uploaded
	Deltas      int64 // index deltas written
}

// Writer adds blobs to the repository and commits snapshots. Add is safe for
// concurrent use; a Writer is used by one run (a backup or a WAL push).
//
// Blobs are compressed in the calling goroutine (so callers parallelise by
// calling Add from several goroutines), appended to an open pack per class
// and encrypted as they arrive; full packs are uploaded in the background
// with a bound on the bytes held in memory (Options.PackMemory). Uploaded
// packs are listed in index deltas periodically and on Flush.
type Writer struct {
	r    *Repo
	name string
	// packSize is the plaintext a pack is filled to (Repo.packTarget).
	packSize int64
	// idx is the index this writer deduplicates against and adds its own
	// deltas to; the Repo may swap its index (reload, compaction) meanwhile.
	idx *index.Index

	ctx    context.Context // uploads run under it; Abort cancels it
	cancel context.CancelFunc
	budget *budget
	// queue feeds the uploaders. Senders hold queueMu.RLock; stop closes it
	// under queueMu.Lock and sets it to nil.
	queueMu sync.RWMutex
	queue   chan *openPack
	done    sync.WaitGroup // upload workers

	classMu [2]sync.Mutex // per class: guards open[class]
	open    [2]*openPack

	mu        sync.Mutex // guards the fields below
	cond      *sync.Cond // signalled when inflight drops
	inflight  int        // packs finalised but not yet uploaded (or failed)
	pending   map[blob.ID]struct{}
	uploaded  []uploadedPack
	sinceIdx  int
	sinceBlob int // blobs in uploaded
	lastIdx   time.Time
	err       error // sticky: the first failure ends the writer
	closed    bool
	stats     WriterStats
	deltaKeys []string

	deltaMu  sync.Mutex // serialises delta writes
	commitMu sync.Mutex // one Commit at a time
}

type openPack struct {
	class    blob.Class
	buf      *packBuf
	enc      io.WriteCloser
	info     agestream.Info
	b        *pack.Builder
	entries  []pack.Entry
	plain    int64
	id       pack.ID
	reserved int64
}

type uploadedPack struct {
	p       index.Pack
	entries []pack.Entry
}

// packBuf is the ciphertext buffer of a pack. Its capacity is reserved from
// the writer's budget before it grows (see ensure), so the age stream writer
// never reallocates it in the common case.
type packBuf struct{ b []byte }

// NewWriter starts a writer. name identifies the run in logs. The index is
// loaded first (deduplication needs it), without the packs garbage
// collection has quarantined: the writer stores its own copy of a blob found
// only there. Take the lease that garbage collection waits for (the
// backup's) before calling it. Call Close (or Commit, then Close) when done,
// or Abort.
func (r *Repo) NewWriter(ctx context.Context, name string) (*Writer, error) {
	if err := r.excludeQuarantined(ctx); err != nil {
		return nil, fmt.Errorf("start writer: %w", err)
	}
	idx, err := r.index(ctx)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	packSize := r.packTarget()
	maxPacks := int(max(2, r.opts.PackMemory/packSize))
	w := &Writer{r: r, name: name, idx: idx, ctx: wctx, cancel: cancel, packSize: packSize,
		budget:  newBudget(r.opts.PackMemory, 2),
		queue:   make(chan *openPack, maxPacks+2),
		pending: make(map[blob.ID]struct{}),
		lastIdx: r.opts.Now()}
	w.cond = sync.NewCond(&w.mu)
	for range r.opts.UploadConcurrency {
		w.done.Add(1)
		go w.uploader(w.queue)
	}
	return w, nil
}

// Stats returns counters of the writer's work so far.
func (w *Writer) Stats() WriterStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

func (w *Writer) fail(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		w.r.log.Error("writer failed", "writer", w.name, "err", err)
	}
	w.cond.Broadcast()
	return w.err
}

func (w *Writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return ErrWriterClosed
	}
	return nil
}

// Has reports whether the writer would deduplicate the blob: it is in the
// index the writer started with (without quarantined packs), or this run
// added it. The zero sentinel always is. A copy between repositories asks
// it to read from the source only what the target lacks.
func (w *Writer) Has(id blob.ID) bool {
	if id.IsZero() {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.pending[id]; ok {
		return true
	}
	return w.idx.Has(id)
}

// Add stores a blob of kind k unless the repository (or this run) already
// has it, and returns its ID. An all-zero slot returns blob.ZeroID and is
// not stored. data is not retained.
func (w *Writer) Add(ctx context.Context, k blob.Kind, data []byte) (blob.ID, error) {
	if !k.Valid() {
		return blob.ID{}, fmt.Errorf("add blob: unknown kind %s", k)
	}
	if len(data) > pack.MaxBlobSize {
		return blob.ID{}, fmt.Errorf("add %s blob of %d bytes: over the limit of %d", k, len(data), pack.MaxBlobSize)
	}
	if err := ctx.Err(); err != nil {
		return blob.ID{}, err
	}
	if blob.IsZeroSlot(k, data) {
		w.mu.Lock()
		w.stats.Blobs++
		w.stats.ZeroSlots++
		w.stats.RawBytes += int64(len(data))
		w.mu.Unlock()
		return blob.ZeroID, w.failed()
	}
	id := w.r.hasher.Sum(k, data)
	w.mu.Lock()
	if err := w.errLocked(); err != nil {
		w.mu.Unlock()
		return id, err
	}
	w.stats.Blobs++
	w.stats.RawBytes += int64(len(data))
	_, dup := w.pending[id]
	if !dup {
		dup = w.idx.Has(id)
	}
	if dup {
		w.mu.Unlock()
		return id, nil
	}
	w.pending[id] = struct{}{}
	w.mu.Unlock()

	stored, comp := w.r.compress(data)
	err := w.append(ctx, id, k, comp, len(data), stored)
	putCompressBuf(stored, data)
	if err != nil {
		return id, w.fail(err)
	}
	w.mu.Lock()
	w.stats.NewBlobs++
	w.stats.NewRawBytes += int64(len(data))
	w.stats.StoredBytes += int64(len(stored))
	w.mu.Unlock()
	return id, nil
}

func (w *Writer) errLocked() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return ErrWriterClosed
	}
	return nil
}

var compressBufs = sync.Pool{New: func() any { return new([]byte) }}

// compress returns the stored form of data. The result is either data
// itself or a pooled buffer (return it with putCompressBuf).
func (r *Repo) compress(data []byte) ([]byte, blob.Compression) {
	if len(data) == 0 {
		return data, blob.Raw
	}
	bp := compressBufs.Get().(*[]byte)
	out := r.zenc.EncodeAll(data, (*bp)[:0])
	if len(out) > len(data)-len(data)/minSavingDivisor {
		*bp = out
		compressBufs.Put(bp)
		return data, blob.Raw
	}
	return out, blob.Zstd
}

func putCompressBuf(stored, data []byte) {
	if len(stored) > 0 && len(data) > 0 && &stored[0] == &data[0] {
		return
	}
	b := stored[:0]
	compressBufs.Put(&b)
}

// targetCap is the ciphertext capacity of a full pack: header, the target
// plaintext plus one more slot-sized blob and a dense trailer, and tags.
func (w *Writer) targetCap() int64 { return packCap(w.packSize) }

func packCap(target int64) int64 {
	plain := target + blob.SlotSize + target/64
	return 16<<10 + agestream.CiphertextSize(plain)
}

// metaPackRoom is what PackMemory keeps for the open meta pack (file maps,
// small files) beside two data packs.
const metaPackRoom = 4 << 20

// packTarget is the plaintext a Writer fills its packs to: the
// repository's pack size, or less when PackMemory would not hold two data
// packs (one filling while the other uploads) and a meta pack, but never
// less than MinPackSize. Readers take packs of any size up to
// pack.MaxSize, so the repository's pack size is a target, not a format
// rule.
func (r *Repo) packTarget() int64 {
	t := r.cfg.PackSize
	per := (r.opts.PackMemory - metaPackRoom) / 2
	for t > MinPackSize && packCap(t) > per {
		t -= max(t/32, 64<<10)
	}
	return max(t, MinPackSize)
}

// ensure makes room in p's buffer for extra more plaintext bytes, reserving
// the growth from the budget first.
func (w *Writer) ensure(ctx context.Context, p *openPack, extra int64) error {
	need := p.info.PayloadOffset + agestream.CiphertextSize(p.plain+extra) + agestream.EncChunkSize
	if need <= int64(cap(p.buf.b)) {
		return nil
	}
	newCap := max(need, min(2*int64(cap(p.buf.b)), w.targetCap()))
	if err := w.budget.acquire(ctx, newCap-p.reserved); err != nil {
		return err
	}
	nb := make([]byte, len(p.buf.b), newCap)
	copy(nb, p.buf.b)
	p.buf.b = nb
	p.reserved = newCap
	return nil
}

func (w *Writer) newPack(ctx context.Context, class blob.Class) (*openPack, error) {
	p := &openPack{class: class, buf: &packBuf{}}
	// Only data packs reuse buffers (all of the full size, see packDone):
	// a meta pack, small now that packs end at packBlobs, would hold a
	// full-size buffer for a few hundred KiB, and a data pack handed a
	// meta pack's small buffer would regrow it, leaving garbage of every
	// size for the collector.
	var b []byte
	if class == blob.ClassData {
		b = w.budget.getBuffer()
	}
	if b != nil {
		p.buf.b, p.reserved = b, int64(cap(b))
	} else {
		// Data packs fill up: start at full size. Meta packs are often small:
		// start small and grow.
		initial := int64(1 << 20)
		if class == blob.ClassData {
			initial = w.targetCap()
		}
		if err := w.budget.acquire(ctx, initial); err != nil {
			return nil, err
		}
		p.buf.b, p.reserved = make([]byte, 0, initial), initial
	}
	info, err := agestream.Header(&p.buf.b, w.r.recipients...)
	if err != nil {
		w.budget.release(p.reserved)
		return nil, fmt.Errorf("start pack: %w", err)
	}
	enc := agestream.NewAppendWriter(&p.buf.b, info.PayloadKey)
	p.enc, p.info = enc, info
	p.b = pack.NewBuilder(enc)
	return p, nil
}

func (w *Writer) append(ctx context.Context, id blob.ID, k blob.Kind, comp blob.Compression, rawLen int, stored []byte) error {
	class := k.Class()
	w.classMu[class].Lock()
	defer w.classMu[class].Unlock()
	p := w.open[class]
	if p == nil {
		var err error
		if p, err = w.newPack(ctx, class); err != nil {
			return err
		}
		w.open[class] = p
	}
	if err := w.ensure(ctx, p, int64(len(stored))); err != nil {
		return err
	}
	if err := p.b.Add(id, k, comp, rawLen, stored); err != nil {
		return err
	}
	p.plain += int64(len(stored))
	if p.b.Size() >= w.packSize || p.b.Len() >= packBlobs {
		return w.finishLocked(ctx, class)
	}
	return nil
}

// finishLocked closes the open pack of class and queues it for upload. The
// caller holds classMu[class].
func (w *Writer) finishLocked(ctx context.Context, class blob.Class) error {
	p := w.open[class]
	if p == nil || p.b.Len() == 0 {
		return nil
	}
	w.open[class] = nil
	trailer := int64(p.b.Len()*pack.EntrySize + pack.FooterSize)
	if err := w.ensure(ctx, p, trailer); err != nil {
		w.budget.release(p.reserved)
		return err
	}
	entries, plain, err := p.b.Finish()
	if err == nil {
		err = p.enc.Close()
	}
	if err != nil {
		w.budget.release(p.reserved)
		return fmt.Errorf("finish pack: %w", err)
	}
	p.entries, p.plain = entries, plain
	p.id = pack.Sum(p.buf.b)
	if over := int64(cap(p.buf.b)) - p.reserved; over > 0 {
		// Appends outgrew the estimate (cannot happen with correct
		// arithmetic in ensure); account for it rather than hide it.
		w.budget.acquire(context.WithoutCancel(ctx), over)
		p.reserved += over
	}
	w.queueMu.RLock()
	defer w.queueMu.RUnlock()
	if w.queue == nil {
		w.budget.release(p.reserved)
		return ErrWriterClosed
	}
	w.budget.finish(p.reserved)
	w.mu.Lock()
	w.inflight++
	w.mu.Unlock()
	select {
	case w.queue <- p:
		return nil
	case <-w.ctx.Done():
		w.packDone(p, w.ctx.Err())
		return w.ctx.Err()
	}
}

func (w *Writer) uploader(queue <-chan *openPack) {
	defer w.done.Done()
	for p := range queue {
		// After a failure or Abort, queued packs are dropped, not uploaded.
		err := w.failed()
		if err == nil {
			err = w.upload(p)
		}
		w.packDone(p, err)
	}
}

func (w *Writer) upload(p *openPack) error {
	key := pack.Key(p.class, p.id)
	if err := w.r.putBytes(w.ctx, key, p.buf.b, false); err != nil {
		return fmt.Errorf("upload pack %s: %w", key, err)
	}
	w.r.log.Debug("pack uploaded", "writer", w.name, "pack", key, "blobs", len(p.entries), "bytes", len(p.buf.b))
	return nil
}

// packDone records the outcome of a pack upload and releases its buffer.
func (w *Writer) packDone(p *openPack, err error) {
	size := int64(len(p.buf.b))
	up := uploadedPack{p: index.Pack{ID: p.id, Class: p.class, PayloadKey: p.info.PayloadKey,
		PayloadOffset: uint32(p.info.PayloadOffset), PlainSize: uint32(p.plain)}, entries: p.entries}
	w.budget.putBuffer(p.buf.b, p.reserved, p.class == blob.ClassData && int64(cap(p.buf.b)) >= w.targetCap())
	p.buf.b = nil
	w.mu.Lock()
	w.inflight--
	if err != nil {
		if w.err == nil {
			w.err = err
		}
	} else {
		w.uploaded = append(w.uploaded, up)
		w.sinceIdx++
		w.sinceBlob += len(up.entries)
		w.stats.Packs++
		w.stats.PackBytes += size
	}
	// Also after deltaBlobs blobs: packs of small blobs (a million small
	// files) would otherwise keep hundreds of thousands of them pending.
	due := err == nil && (w.sinceIdx >= w.r.opts.IndexEveryPacks || w.sinceBlob >= deltaBlobs ||
		w.r.opts.Now().Sub(w.lastIdx) >= w.r.opts.IndexEvery)
	w.cond.Broadcast()
	w.mu.Unlock()
	if due {
		// A failed periodic delta is not fatal: its packs stay listed in
		// w.uploaded and the next delta (at the latest on Flush) retries.
		if err := w.writeDelta(w.ctx); err != nil {
			w.r.log.Warn("index delta failed; will retry", "writer", w.name, "err", err)
		}
	}
}

// deltaBlobs is the number of blobs uploaded after which a Writer writes an
// index delta whatever the number of packs (IndexEveryPacks). Until then
// each blob is held twice (the pending set and the uploaded packs' entries,
// about 150 bytes together): 32k blobs are about 5 MiB.
const deltaBlobs = 1 << 15

// packBlobs is the number of blobs after which a pack is finished whatever
// its size. A meta pack of a million small files' page maps (about 100
// bytes each) would otherwise take 170,000 of them before it fills, all
// held in the pending set and the pack's entries until it is uploaded and
// indexed: memory growing with the number of files.
const packBlobs = 1 << 13

// writeDelta writes an index delta listing the packs uploaded since the last
// one, then makes them visible in the repository's index.
func (w *Writer) writeDelta(ctx context.Context) error {
	w.deltaMu.Lock()
	defer w.deltaMu.Unlock()
	w.mu.Lock()
	ups := w.uploaded
	w.uploaded = nil
	w.sinceIdx, w.sinceBlob = 0, 0
	w.lastIdx = w.r.opts.Now()
	w.mu.Unlock()
	if len(ups) == 0 {
		return nil
	}
	f := &index.File{}
	for i, up := range ups {
		f.Packs = append(f.Packs, up.p)
		for _, e := range up.entries {
			f.Blobs = append(f.Blobs, index.Entry{ID: e.ID, Pack: uint32(i), Offset: e.Offset, Length: e.Length,
				RawLength: e.RawLength, Kind: e.Kind, Compression: e.Compression})
		}
	}
	key, err := w.r.writeIndexFile(ctx, deltaPrefix, f)
	if err != nil {
		w.mu.Lock()
		w.uploaded = append(ups, w.uploaded...)
		for _, up := range ups {
			w.sinceBlob += len(up.entries)
		}
		w.mu.Unlock()
		return err
	}
	w.r.idxMu.Lock()
	shared := w.r.idx
	w.r.idxMu.Unlock()
	for _, up := range ups {
		w.idx.AddPack(up.p, up.entries)
		if shared != w.idx && shared != nil {
			shared.AddPack(up.p, up.entries)
		}
	}
	w.r.reportIndexMemory()
	w.mu.Lock()
	for _, up := range ups {
		for _, e := range up.entries {
			delete(w.pending, e.ID)
		}
	}
	// A map keeps the buckets of the most it ever held: copy what is left
	// (blobs of packs not yet indexed) to a new one.
	rest := make(map[blob.ID]struct{}, len(w.pending))
	maps.Copy(rest, w.pending)
	w.pending = rest
	w.stats.Deltas++
	w.deltaKeys = append(w.deltaKeys, key)
	w.mu.Unlock()
	w.r.log.Debug("index delta written", "writer", w.name, "key", key, "packs", len(ups), "blobs", len(f.Blobs))
	return nil
}

// Flush uploads the open packs, waits for all uploads and writes an index
// delta: every blob added before Flush is then durable and indexed.
func (w *Writer) Flush(ctx context.Context) error {
	if err := w.failed(); err != nil {
		return err
	}
	for c := range w.open {
		w.classMu[c].Lock()
		err := w.finishLocked(ctx, blob.Class(c))
		w.classMu[c].Unlock()
		if err != nil {
			return w.fail(err)
		}
	}
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer stop()
	w.mu.Lock()
	for w.inflight > 0 && w.err == nil && ctx.Err() == nil {
		w.cond.Wait()
	}
	err := w.err
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := w.writeDelta(ctx); err != nil {
		return w.fail(err)
	}
	return nil
}

// Commit makes a snapshot visible, in the only order that is safe: it
// flushes all pending packs, writes the index delta, checks that every root
// of the snapshot is durable in the index, runs preCommit (nil for none; the
// backup confirms the WAL it needs there) and only then creates the
// snapshot object (create-only). It returns the snapshot's object key.
// A Writer commits at most once (a failed Commit may be retried); Close it
// afterwards.
func (w *Writer) Commit(ctx context.Context, s *Snapshot, preCommit func(context.Context) error) (string, error) {
	if err := w.Flush(ctx); err != nil {
		return "", err
	}
	if len(s.Roots) == 0 {
		return "", fmt.Errorf("commit snapshot: no root blobs")
	}
	for _, root := range s.Roots {
		if root.IsZero() || !w.idx.Has(root) {
			return "", fmt.Errorf("commit snapshot: root %s: %w", root, ErrNotDurable)
		}
	}
	if preCommit != nil {
		if err := preCommit(ctx); err != nil {
			return "", fmt.Errorf("commit snapshot: pre-commit check: %w", err)
		}
	}
	w.commitMu.Lock()
	defer w.commitMu.Unlock()
	if err := w.failed(); err != nil {
		return "", err
	}
	key, err := w.r.createSnapshot(ctx, s)
	if err != nil {
		// Not closed: a transient failure may be retried with Commit.
		return "", err
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return key, nil
}

// Close flushes (so that what was uploaded is indexed and reused by the next
// run) and stops the writer.
func (w *Writer) Close(ctx context.Context) error {
	err := w.failed()
	if err == nil {
		err = w.Flush(ctx)
	} else if errors.Is(err, ErrWriterClosed) {
		err = nil
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.stop()
	return err
}

// Abort stops the writer without writing packs or index: packs already
// uploaded but not yet in an index delta stay unindexed (repair index finds
// them, garbage collection removes them).
func (w *Writer) Abort() {
	w.mu.Lock()
	w.closed = true
	if w.err == nil {
		w.err = ErrWriterClosed
	}
	w.mu.Unlock()
	w.cancel()
	for c := range w.open {
		w.classMu[c].Lock()
		if p := w.open[c]; p != nil {
			w.budget.release(p.reserved)
			w.open[c] = nil
		}
		w.classMu[c].Unlock()
	}
	w.stop()
}

func (w *Writer) stop() {
	w.queueMu.Lock()
	if w.queue == nil {
		w.queueMu.Unlock()
		return
	}
	close(w.queue)
	w.queue = nil
	w.queueMu.Unlock()
	w.done.Wait()
	w.cancel()
	w.budget.drop()
}

// DeltaKeys returns the index deltas this writer wrote.
func (w *Writer) DeltaKeys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.deltaKeys...)
}
