package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/pack"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/zeebo/blake3"
)

// Has reports whether a blob is durable and indexed (the zero sentinel
// always is). It loads the index on first use.
func (r *Repo) Has(ctx context.Context, id blob.ID) (bool, error) {
	if id.IsZero() {
		return true, nil
	}
	idx, err := r.view(ctx)
	if err != nil {
		return false, err
	}
	return idx.Has(id), nil
}

// Lookup returns where a blob is stored.
func (r *Repo) Lookup(ctx context.Context, id blob.ID) (index.Location, error) {
	idx, err := r.view(ctx)
	if err != nil {
		return index.Location{}, err
	}
	loc, ok := idx.Lookup(id)
	if !ok {
		return loc, &BlobNotFoundError{ID: id}
	}
	return loc, nil
}

// ReadBlob reads one blob with one ranged GET, verifies its keyed ID and
// appends its plaintext to buf. A failed check is a *CorruptError naming the
// pack.
func (r *Repo) ReadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	if id.IsZero() {
		return append(buf, make([]byte, blob.SlotSize)...), nil
	}
	loc, err := r.Lookup(ctx, id)
	if err != nil {
		return buf, err
	}
	plain, first, err := r.readPlain(ctx, &loc.Pack, int64(loc.Offset), int64(loc.Length))
	if err != nil {
		return buf, err
	}
	defer r.readBufs.put(plain)
	rel := int64(loc.Offset) - first
	return r.decodeBlob(loc.Pack.Key(), loc.Entry, plain[rel:rel+int64(loc.Length)], buf)
}

// bufList keeps the ciphertext buffers of ranged reads (a blob, a run of
// base slots, an index pack's footer) for the next read, which would
// otherwise allocate and zero one for every blob. It keeps at most
// keptReadBufs buffers of at most keptReadBuf bytes; larger ones are left
// to the collector. Not a sync.Pool: every collection empties a pool, and
// an incremental near its memory limit collects tens of times a second,
// so at pgbench scale 1000 the pool was empty nearly every time and the
// backup allocated 0.94 GB of read buffers (4,220 collections, 74 CPU-s,
// against 54 collections and 38 CPU-s for a run whose pool held).
type bufList struct {
	mu   sync.Mutex
	bufs [][]byte
}

const (
	keptReadBufs = 4
	keptReadBuf  = 2 << 20
)

func (l *bufList) get(n int64) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, b := range l.bufs {
		if int64(cap(b)) >= n {
			l.bufs = slices.Delete(l.bufs, i, i+1)
			return b[:n]
		}
	}
	return make([]byte, n)
}

func (l *bufList) put(b []byte) {
	if cap(b) > keptReadBuf {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.bufs) < keptReadBufs {
		l.bufs = append(l.bufs, b)
	}
}

// readPlain reads and decrypts the chunks of pack p that hold plaintext
// bytes [off, off+n) with one ranged GET. It returns the decrypted chunks
// and the plaintext offset of the first.
func (r *Repo) readPlain(ctx context.Context, p *index.Pack, off, n int64) ([]byte, int64, error) {
	key := p.Key()
	co, cl, first, err := agestream.Range(off, n, int64(p.PlainSize))
	if err != nil {
		return nil, 0, corrupt(key, "index entry: %v", err)
	}
	rc, err := r.store.GetRange(ctx, key, int64(p.PayloadOffset)+co, cl)
	if err != nil {
		return nil, 0, packReadError(key, err)
	}
	ct := r.readBufs.get(cl)
	_, err = io.ReadFull(rc, ct)
	rc.Close()
	if err != nil {
		r.readBufs.put(ct)
		return nil, 0, packReadError(key, err)
	}
	plain, err := agestream.NewKey(p.PayloadKey).DecryptInPlace(ct, first, int64(p.PlainSize))
	if err != nil {
		r.readBufs.put(ct)
		return nil, 0, &CorruptError{Key: key, Err: err}
	}
	return plain, first * agestream.ChunkSize, nil
}

func packReadError(key string, err error) error {
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return &CorruptError{Key: key, Err: fmt.Errorf("pack is missing: %w", err)}
	case errors.Is(err, storage.ErrRange), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return &CorruptError{Key: key, Err: fmt.Errorf("pack is truncated: %w", err)}
	}
	return fmt.Errorf("read pack %s: %w", key, err)
}

// decodeBlob decompresses a stored blob, checks its keyed ID and appends
// the plaintext to buf.
func (r *Repo) decodeBlob(key string, e index.Entry, stored, buf []byte) ([]byte, error) {
	start := len(buf)
	switch e.Compression {
	case blob.Raw:
		buf = append(buf, stored...)
	case blob.Zstd:
		var err error
		buf, err = r.zdec.DecodeAll(stored, buf)
		if err != nil {
			return buf[:start], corrupt(key, "blob %s at %d: %v", e.ID, e.Offset, err)
		}
	default:
		return buf, corrupt(key, "blob %s: compression %d", e.ID, e.Compression)
	}
	plain := buf[start:]
	if len(plain) != int(e.RawLength) {
		return buf[:start], corrupt(key, "blob %s at %d: %d bytes, index says %d", e.ID, e.Offset, len(plain), e.RawLength)
	}
	if got := r.hasher.Sum(e.Kind, plain); got != e.ID {
		return buf[:start], corrupt(key, "blob %s at %d hashes to %s", e.ID, e.Offset, got)
	}
	return buf, nil
}

// ReadBlobs reads many blobs, as a restore does: it groups them by pack,
// reads nearby blobs of a pack with one GET (gaps up to
// Options.CoalesceGap), runs GETs in parallel (Options.ReadConcurrency) with
// a bound on bytes in flight (Options.ReadMemory), verifies every blob and
// calls fn with its plaintext. fn may be called concurrently and must not
// keep data after it returns. Each distinct ID is delivered once; the zero
// sentinel is delivered as a zero slot. All IDs are looked up before any
// read, so a missing blob fails fast with a *BlobNotFoundError. The first
// error (from a read or from fn) cancels the rest and is returned.
//
// A GET is read and decrypted a chunk at a time and each blob decoded as
// soon as its bytes are in: a worker holds one stored blob and its
// plaintext, never the whole span, in buffers it reuses from span to span.
// (Reading whole 16 MiB spans into pooled buffers kept a restore's heap
// near 200 MiB, and the fresh pages those buffers took from the kernel cost
// it a tenth of its CPU time in page faults.)
func (r *Repo) ReadBlobs(ctx context.Context, ids []blob.ID, fn func(id blob.ID, data []byte) error) error {
	idx, err := r.view(ctx)
	if err != nil {
		return err
	}
	ids = slices.Clone(ids)
	slices.SortFunc(ids, func(a, b blob.ID) int { return compareBytes(a[:], b[:]) })
	ids = slices.Compact(ids)
	byPack := make(map[string][]index.Location)
	var packOrder []string
	for _, id := range ids {
		if id.IsZero() {
			if err := fn(id, make([]byte, blob.SlotSize)); err != nil {
				return err
			}
			continue
		}
		loc, ok := idx.Lookup(id)
		if !ok {
			return &BlobNotFoundError{ID: id}
		}
		k := loc.Pack.Key()
		if _, ok := byPack[k]; !ok {
			packOrder = append(packOrder, k)
		}
		byPack[k] = append(byPack[k], loc)
	}
	var spans []readSpan
	for _, k := range packOrder {
		spans = append(spans, r.coalesce(byPack[k])...)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	mem := r.readMem
	work := make(chan readSpan)
	var wg sync.WaitGroup
	for range min(r.opts.ReadConcurrency, max(1, len(spans))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				bufs := spanPool.Get().(*spanBuffers)
				err := r.readSpan(ctx, s, bufs, fn)
				bufs.trim()
				spanPool.Put(bufs)
				mem.release(s.cost())
				if err != nil {
					cancel(err)
				}
			}
		}()
	}
	for _, s := range spans {
		if err := mem.acquire(ctx, s.cost()); err != nil {
			break
		}
		select {
		case work <- s:
		case <-ctx.Done():
			mem.release(s.cost())
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}

// readSpan is one ranged GET: blobs of one pack sorted by offset.
type readSpan struct {
	locs       []index.Location
	start, end int64 // plaintext range
}

// cost is the memory a worker holds while it reads the span: the largest
// stored blob with a chunk on either side, one encrypted chunk, and the
// largest decoded blob.
func (s readSpan) cost() int64 {
	var maxRaw, maxStored int64
	for _, l := range s.locs {
		maxRaw = max(maxRaw, int64(l.RawLength))
		maxStored = max(maxStored, int64(l.Length))
	}
	return maxStored + 3*agestream.EncChunkSize + maxRaw
}

// spanBuffers are one ReadBlobs worker's buffers, kept from span to span.
type spanBuffers struct {
	chunk []byte // one encrypted chunk
	plain []byte // decrypted bytes from the first a later blob still needs
	dec   []byte // the decoded blob
}

// keepBuffer is the largest buffer a worker keeps between spans: a blob
// past it (a big file map) is rare, and its buffers go back to the heap.
const keepBuffer = 2 * blob.SlotSize

func (b *spanBuffers) trim() {
	if cap(b.plain) > keepBuffer {
		b.plain = nil
	}
	if cap(b.dec) > keepBuffer {
		b.dec = nil
	}
}

func (r *Repo) coalesce(locs []index.Location) []readSpan {
	slices.SortFunc(locs, func(a, b index.Location) int { return int(a.Offset) - int(b.Offset) })
	var spans []readSpan
	for _, l := range locs {
		start, end := int64(l.Offset), int64(l.Offset)+int64(l.Length)
		if n := len(spans); n > 0 {
			s := &spans[n-1]
			if start-s.end <= r.opts.CoalesceGap && end-s.start <= maxReadSpan {
				s.locs = append(s.locs, l)
				s.end = max(s.end, end)
				continue
			}
		}
		spans = append(spans, readSpan{locs: []index.Location{l}, start: start, end: end})
	}
	return spans
}

// readSpan reads a span with one ranged GET, a chunk at a time: each chunk
// is authenticated and decrypted as it arrives, each blob decoded, checked
// and handed to fn once its last chunk is in, and the bytes no later blob
// of the span needs are dropped.
func (r *Repo) readSpan(ctx context.Context, s readSpan, b *spanBuffers, fn func(blob.ID, []byte) error) error {
	p := &s.locs[0].Pack
	key := p.Key()
	plainSize := int64(p.PlainSize)
	co, cl, first, err := agestream.Range(s.start, s.end-s.start, plainSize)
	if err != nil {
		return corrupt(key, "index entry: %v", err)
	}
	rc, err := r.store.GetRange(ctx, key, int64(p.PayloadOffset)+co, cl)
	if err != nil {
		return packReadError(key, err)
	}
	defer rc.Close()
	k := agestream.NewKey(p.PayloadKey)
	if cap(b.chunk) < agestream.EncChunkSize {
		b.chunk = make([]byte, agestream.EncChunkSize)
	}
	// Decoded blobs start a buffer of their own size or more: a large
	// allocation, page-aligned, as restore's O_DIRECT writes need.
	for _, l := range s.locs {
		if int64(cap(b.dec)) < int64(l.RawLength) {
			b.dec = make([]byte, 0, max(int(l.RawLength), blob.SlotSize))
		}
	}
	lastChunk := agestream.ChunkCount(plainSize) - 1
	next := first                           // the next chunk to read
	plainOff := first * agestream.ChunkSize // plaintext offset of b.plain[0]
	plain := b.plain[:0]
	for j, l := range s.locs {
		off, end := int64(l.Offset), int64(l.Offset)+int64(l.Length)
		for plainOff+int64(len(plain)) < end {
			n := int64(agestream.EncChunkSize)
			if next == lastChunk {
				n = plainSize - lastChunk*agestream.ChunkSize + agestream.TagSize
			}
			ct := b.chunk[:n]
			if _, err := io.ReadFull(rc, ct); err != nil {
				b.plain = plain
				return packReadError(key, err)
			}
			if plain, err = k.DecryptChunks(plain, ct, next, plainSize); err != nil {
				b.plain = plain
				return &CorruptError{Key: key, Err: err}
			}
			next++
		}
		rel := off - plainOff
		b.dec, err = r.decodeBlob(key, l.Entry, plain[rel:rel+int64(l.Length)], b.dec[:0])
		if err != nil {
			b.plain = plain
			return err
		}
		if err := fn(l.ID, b.dec); err != nil {
			b.plain = plain
			return err
		}
		// Keep from where the next blob starts (blobs of a span may
		// overlap no one, but a gap may lie between them).
		keep := int64(len(plain))
		if j+1 < len(s.locs) {
			keep = min(keep, max(0, int64(s.locs[j+1].Offset)-plainOff))
		}
		plain = plain[:copy(plain, plain[keep:])]
		plainOff += keep
	}
	b.plain = plain
	return nil
}

func compareBytes(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// ReadPack downloads a whole pack and checks everything about it: its size
// and its name (the BLAKE3 of the ciphertext) against p, the authentication
// of every chunk, the trailer, and every blob (decompressed, its keyed ID
// recomputed). fn, when not nil, is called with each blob's trailer entry
// and plaintext in pack order and must not keep it. It returns the trailer
// entries. Any failed check is a *CorruptError naming the pack.
//
// The trailer comes first, with a ranged GET of the pack's last chunks;
// then one GET streams the pack, hashed as it arrives and decrypted a chunk
// at a time, each blob checked and handed to fn once its bytes are in, and
// the trailer read again at the end must be the one read first. So it
// holds one blob at a time, not the pack: with whole 32 MiB packs in
// memory, verify --read-data at --parallel 4 peaked at 340 MiB. fn may
// thus be called for blobs of a pack that turns out wrong at its end (its
// name, its length): each such blob was authenticated and its ID checked,
// and the error still comes back.
func (r *Repo) ReadPack(ctx context.Context, p index.Pack, fn func(e pack.Entry, plain []byte) error) ([]pack.Entry, error) {
	key := p.Key()
	tail, entries, err := r.packTail(ctx, &p)
	if err != nil {
		return nil, err
	}
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		return nil, packReadError(key, err)
	}
	defer rc.Close()
	h := blake3.New()
	src := &countingReader{r: io.TeeReader(rc, h)}
	if _, err := io.CopyN(io.Discard, src, int64(p.PayloadOffset)); err != nil {
		return nil, packReadError(key, err)
	}
	var b spanBuffers
	b.chunk = make([]byte, agestream.EncChunkSize)
	s := chunkStream{src: src, key: agestream.NewKey(p.PayloadKey), plainSize: int64(p.PlainSize), b: &b}
	for i, e := range entries {
		if err := s.fill(int64(e.Offset) + int64(e.Length)); err != nil {
			return entries[:i], packStreamError(key, err)
		}
		ie := index.Entry{ID: e.ID, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength, Kind: e.Kind, Compression: e.Compression}
		rel := int64(e.Offset) - s.off
		if b.dec, err = r.decodeBlob(key, ie, b.plain[rel:rel+int64(e.Length)], b.dec[:0]); err != nil {
			return entries[:i], err
		}
		if fn != nil {
			if err := fn(e, b.dec); err != nil {
				return entries[:i], err
			}
		}
		if err := ctx.Err(); err != nil {
			return entries[:i], err
		}
		s.drop(int64(e.Offset) + int64(e.Length))
	}
	if err := s.fill(int64(p.PlainSize)); err != nil {
		return entries, packStreamError(key, err)
	}
	tl := len(entries)*pack.EntrySize + pack.FooterSize
	if len(b.plain) != tl || len(tail) < tl || !bytes.Equal(b.plain, tail[len(tail)-tl:]) {
		return entries, corrupt(key, "the trailer changed between two reads of the pack")
	}
	// One byte more than the index says means the object is too long.
	var one [1]byte
	if n, _ := io.ReadFull(src, one[:]); n > 0 {
		return entries, corrupt(key, "pack is longer than the %d bytes the index says", p.CipherSize())
	}
	if src.n != p.CipherSize() {
		return entries, corrupt(key, "pack has %d bytes, the index says %d", src.n, p.CipherSize())
	}
	var got pack.ID
	h.Sum(got[:0])
	if got != p.ID {
		return entries, corrupt(key, "contents hash to %s, not to the pack's name", got)
	}
	return entries, nil
}

// chunkStream decrypts an age payload read in order from src, a chunk at a
// time, into b.plain, which holds the plaintext from offset off on.
type chunkStream struct {
	src       io.Reader
	key       *agestream.Key
	plainSize int64
	next      int64 // the next chunk to read
	off       int64 // plaintext offset of b.plain[0]
	b         *spanBuffers
}

// fill reads chunks until the plaintext up to end is in.
func (s *chunkStream) fill(end int64) error {
	last := agestream.ChunkCount(s.plainSize) - 1
	for s.off+int64(len(s.b.plain)) < end || s.next == 0 {
		if s.next > last {
			return io.ErrUnexpectedEOF
		}
		n := int64(agestream.EncChunkSize)
		if s.next == last {
			n = s.plainSize - last*agestream.ChunkSize + agestream.TagSize
		}
		ct := s.b.chunk[:n]
		if _, err := io.ReadFull(s.src, ct); err != nil {
			return err
		}
		var err error
		if s.b.plain, err = s.key.DecryptChunks(s.b.plain, ct, s.next, s.plainSize); err != nil {
			return &authError{err}
		}
		s.next++
	}
	return nil
}

// drop forgets the plaintext before end.
func (s *chunkStream) drop(end int64) {
	k := min(int64(len(s.b.plain)), max(0, end-s.off))
	s.b.plain = s.b.plain[:copy(s.b.plain, s.b.plain[k:])]
	s.off += k
}

type authError struct{ err error }

func (e *authError) Error() string { return e.err.Error() }
func (e *authError) Unwrap() error { return e.err }

// packStreamError is packReadError for a streamed pack, whose chunks fail
// authentication as *authError.
func packStreamError(key string, err error) error {
	var ae *authError
	if errors.As(err, &ae) {
		return &CorruptError{Key: key, Err: ae.err}
	}
	return packReadError(key, err)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
