package backup

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// worker reads and stores items. Its buffers are reused for every item:
// a slot read from the file, the pages of the patch being filled, and one
// page for re-reads.
type worker struct {
	c          *capture
	buf        []byte   // one slot (or chunk) of the file being read
	patch      []byte   // changed pages waiting to be stored as one patch blob
	runs       []byte   // the patch as filemap.AppendPatchRuns stores it
	patchPages []uint32 // the file page of each page in patch
	patchBases []pageBase
	plans      []*slotPlan // incrementalItem: the windows planned ahead
	seen       []blob.ID   // prevPatches: patch blobs of the window
	page       []byte
	changed    []bool // per page of the current slot
	have       []bool // per page of the current slot: in buf and verified
	ext        []filemap.Extent
	sums       []filemap.SlotSum
	vm         vmCache // visibleSinceRef
	// bases holds the stored bytes of the base slots of the next windows
	// read with one GET (readBase); the fetches of the windows planned
	// ahead share it.
	basesMu sync.Mutex
	bases   *repo.BlobRun
}

func (c *capture) worker() {
	wk := &worker{
		c:       c,
		buf:     make([]byte, blob.SlotSize),
		patch:   make([]byte, 0, blob.SlotSize),
		page:    make([]byte, c.blockSize),
		changed: make([]bool, c.pagesPerSlot()),
		have:    make([]bool, c.pagesPerSlot()),
	}
	for range baseLookahead {
		wk.plans = append(wk.plans, &slotPlan{changed: make([]bool, c.pagesPerSlot())})
	}
	for it := range c.jobs {
		if c.ctx.Err() == nil {
			var err error
			if it.f.isRel {
				err = wk.relItem(it)
			} else {
				err = wk.plainItem(it)
			}
			if err != nil {
				c.fail(err)
			} else {
				c.itemDone(it.f)
			}
		}
		c.items.Done()
	}
	// Every fetch of an item ends with it: none uses the run now.
	if wk.bases != nil {
		wk.bases.Release()
	}
}

// readAt reads len(b) bytes at off into b. What lies past the end of a
// file that shrank meanwhile reads as zeros (as pg_basebackup pads it):
// WAL replay truncates the file again.
func (wk *worker) readAt(f *file, b []byte, off int64) (int, error) {
	c := wk.c
	if err := c.limiter.wait(c.ctx, len(b)); err != nil {
		return 0, err
	}
	n, err := f.r.ReadAt(b, off)
	c.stats.read.Add(int64(n))
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("read %s at %d: %w", f.slot.abs, off, err)
	}
	return n, nil
}

// plainItem stores chunks of a file that is not relation data.
func (wk *worker) plainItem(it item) error {
	c, f := wk.c, it.f
	for ci := it.idx * itemSlots; ci < min((it.idx+1)*itemSlots, len(f.chunks)); ci++ {
		off := int64(ci) * filemap.ChunkSize
		size := min(int64(filemap.ChunkSize), f.node.Size-off)
		n, err := wk.readAt(f, wk.buf[:size], off)
		if err != nil {
			return err
		}
		c.stats.done.Add(size)
		if n == 0 {
			continue
		}
		id, err := c.add(blob.KindFile, wk.buf[:n])
		if err != nil {
			return fmt.Errorf("%s: %w", f.slot.abs, err)
		}
		f.chunks[ci] = chunk{id: id, n: n}
	}
	return nil
}

// relItem captures pages [p0, p1) of a relation file slot by slot.
func (wk *worker) relItem(it item) error {
	c, f := wk.c, it.f
	pps := uint32(c.pagesPerSlot())
	p0 := uint32(it.idx) * itemSlots * pps
	p1 := min(p0+itemSlots*pps, f.pages)
	wk.ext = wk.ext[:0]
	wk.sums = wk.sums[:0]
	if !f.whole && c.summaries() && !f.changes.scan {
		if err := wk.sample(f, p0, p1); err != nil {
			return err
		}
	}
	if f.whole {
		if err := wk.wholeSlots(f, p0, p1); err != nil {
			return err
		}
	} else if err := wk.incrementalItem(f, p0, p1); err != nil {
		return err
	}
	if err := wk.flushPatch(f); err != nil {
		return err
	}
	sortExtents(wk.ext)
	f.parts[it.idx] = filemap.NewExtents(wk.ext)
	if len(wk.sums) > 0 {
		f.sums[it.idx] = append([]filemap.SlotSum(nil), wk.sums...)
	}
	return nil
}

// pageBuf returns page p of the slot starting at s0 in buf.
func (wk *worker) pageBuf(s0, p uint32) []byte {
	bs := uint32(wk.c.blockSize)
	return wk.buf[(p-s0)*bs : (p-s0+1)*bs]
}

// read reads pages [from, to) of the slot starting at s0 into buf and
// verifies their checksums.
func (wk *worker) read(f *file, s0, from, to uint32) error {
	bs := int64(wk.c.blockSize)
	b := wk.buf[int64(from-s0)*bs : int64(to-s0)*bs]
	n, err := wk.readAt(f, b, int64(from)*bs)
	if err != nil {
		return err
	}
	clear(b[n:])
	for p := from; p < to; p++ {
		if err := wk.verify(f, s0, p); err != nil {
			return err
		}
		wk.have[p-s0] = true
	}
	return nil
}

// readRest reads the pages of the slot not read yet.
func (wk *worker) readRest(f *file, s0, s1 uint32) error {
	for p := s0; p < s1; {
		if wk.have[p-s0] {
			p++
			continue
		}
		q := p
		for q < s1 && !wk.have[q-s0] {
			q++
		}
		if err := wk.read(f, s0, p, q); err != nil {
			return err
		}
		p = q
	}
	return nil
}

// verify checks page p's checksum if the page is older than the backup's
// start (newer pages may be torn by a concurrent write, which WAL replay
// repairs). A failure is re-read once before it is reported: a page
// written between the two reads is fine.
func (wk *worker) verify(f *file, s0, p uint32) error {
	c := wk.c
	if !c.checksums {
		return nil
	}
	page := wk.pageBuf(s0, p)
	if pg.PageLSN(page) >= c.start {
		return nil
	}
	blk := pg.RelationBlock(f.relf.Segment, p, c.relSegSize)
	c.stats.verified.Add(1)
	if pg.VerifyPage(page, blk, true) == nil {
		return nil
	}
	n, err := wk.readAt(f, wk.page, int64(p)*int64(c.blockSize))
	if err != nil {
		return err
	}
	clear(wk.page[n:])
	copy(page, wk.page)
	if pg.PageLSN(page) >= c.start {
		return nil
	}
	err = pg.VerifyPage(page, blk, true)
	if err == nil {
		return nil
	}
	ce := repo.ChecksumError{File: f.rel, Block: blk}
	var pce *pg.PageChecksumError
	if errors.As(err, &pce) {
		ce.Expected, ce.Found = pce.Computed, pce.Stored
	}
	c.addChecksumError(ce)
	return nil
}

// wholeSlots captures the slots of pages [p0, p1) whole, each as one slot
// blob (storeSlot), reading each next slot while the one before is verified, compressed and
// stored: a direct read (Options.DirectIO) has no kernel readahead to
// keep the disk busy while the worker computes. The slot read ahead goes
// into the first planned window's buffer, which an incremental item fills
// with base slots and a whole one leaves idle (WorkerMemory counts it).
func (wk *worker) wholeSlots(f *file, p0, p1 uint32) error {
	c := wk.c
	pps, bs := uint32(c.pagesPerSlot()), int64(c.blockSize)
	if cap(wk.plans[0].buf) < blob.SlotSize {
		wk.plans[0].buf = make([]byte, blob.SlotSize)
	}
	type result struct {
		n   int
		err error
	}
	var pending chan result // the read of the slot ahead, into wk.plans[0].buf
	readAhead := func(s0 uint32) {
		b := wk.plans[0].buf[:int64(min(s0+pps, p1)-s0)*bs]
		ch := make(chan result, 1)
		pending = ch
		go func() {
			n, err := wk.readAt(f, b, int64(s0)*bs)
			ch <- result{n, err}
		}()
	}
	// No read may still write into a buffer once the item is left.
	defer func() {
		if pending != nil {
			<-pending
		}
	}()
	readAhead(p0)
	for s0 := p0; s0 < p1; s0 += pps {
		s1 := min(s0+pps, p1)
		r := <-pending
		pending = nil
		if r.err != nil {
			return r.err
		}
		wk.buf, wk.plans[0].buf = wk.plans[0].buf[:cap(wk.plans[0].buf)], wk.buf[:cap(wk.buf)]
		if s1 < p1 {
			readAhead(s1)
		}
		clear(wk.buf[r.n : int64(s1-s0)*bs])
		clear(wk.have)
		for p := s0; p < s1; p++ {
			if err := wk.verify(f, s0, p); err != nil {
				return err
			}
			wk.have[p-s0] = true
		}
		if err := wk.storeSlot(f, s0, s1); err != nil {
			return err
		}
		c.stats.done.Add(int64(s1-s0) * bs)
	}
	return nil
}

// storeSlot stores the slot in buf (all of it read) as one slot blob, or
// as a zero extent if every page is zero.
func (wk *worker) storeSlot(f *file, s0, s1 uint32) error {
	c := wk.c
	data := wk.buf[:int(s1-s0)*c.blockSize]
	e := filemap.Extent{Page: s0, Count: s1 - s0}
	if !pg.PageIsZero(data) { // the whole slot, eight bytes at a time
		id, err := c.add(blob.KindSlot, data)
		if err != nil {
			return fmt.Errorf("%s: %w", f.slot.abs, err)
		}
		e.Blob, e.Written = id, c.now
		// A slot stored before keeps its age (DESIGN.md: the rebase by
		// age looks at when a base was first written).
		if f.prevMap != nil {
			if i := f.prevMap.Lookup(s0); i >= 0 {
				if pe := f.prevMap.Extents.At(i); pe.Blob == id {
					e.Written = pe.Written
				}
			}
		}
	}
	wk.ext = append(wk.ext, e)
	return nil
}
