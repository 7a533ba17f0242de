package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"sync/atomic"

	"github.com/tidemarkdb/tidemark/internal/directio"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
)

// Work is handed to workers in items of at most itemSlots slots (relation
// files) or chunks (other files), so that one big file keeps every worker
// busy instead of one.
const itemSlots = 16

// fileBatchSize is how many files of a directory are planned together, so
// that the reference maps they need come in one ReadBlobs call (a few
// ranged GETs) rather than one GET each.
const fileBatchSize = 64

// file is a regular file being captured.
type file struct {
	slot  *dirSlot
	node  filemap.Node
	rel   string
	f     *os.File
	r     *directio.Reader // reads f
	isRel bool
	relf  pg.RelFile
	pages uint32 // relation files: length in pages

	// prevMap is the reference snapshot's map of this file; nil if none.
	// whole: every page is captured (the file is new or not the same file
	// any more, an FSM fork, or a full backup); prevMap then only carries
	// blob ages forward.
	// Maps are held compact (filemap.CompactMap, filemap.Extents: 24
	// bytes an extent): a file whose pages changed at random has an
	// extent per run of them, tens of thousands in a 1 GiB segment.
	prevMapID blob.ID
	prevMap   *filemap.CompactMap
	whole     bool
	changes   fileChanges // with summaries

	pending atomic.Int64
	parts   []filemap.Extents   // relation files: extents found per item
	sums    [][]filemap.SlotSum // relation files: window sums per item
	chunks  []chunk             // other files: content per chunk
}

type chunk struct {
	id blob.ID
	n  int
}

type item struct {
	f   *file
	idx int
}

type fileBatch struct {
	c     *capture
	d     *dir
	files []*file
}

func (c *capture) newFileBatch(d *dir) *fileBatch { return &fileBatch{c: c, d: d} }

func (b *fileBatch) add(s *dirSlot) {
	if f := b.c.plan(s); f != nil {
		b.files = append(b.files, f)
	}
	if len(b.files) >= fileBatchSize {
		b.flush()
	}
}

// flush reads the reference maps the planned files need, then dispatches
// the files to the workers: in groups whose maps take at most
// batchMapBytes, so that the maps waiting for their files' turn stay
// bounded however many big files (segments of a big relation) a batch
// holds.
func (b *fileBatch) flush() {
	c := b.c
	files := b.files
	b.files = nil
	for len(files) > 0 && c.ctx.Err() == nil {
		n, err := b.mapGroup(files)
		if err != nil {
			c.fail(err)
			return
		}
		if !b.readMaps(files[:n]) {
			return
		}
		for _, f := range files[:n] {
			if c.ctx.Err() != nil {
				return
			}
			c.dispatch(f)
		}
		files = files[n:]
	}
}

// batchMapBytes bounds the encoded reference maps a batch reads at once
// (one file's is read whatever its size). Held compact (24 bytes an extent
// against at least 35 encoded) until each file is done, they are what a
// backup holds besides the maps of the files in flight.
const batchMapBytes = 4 << 20

// mapGroup returns how many of files form the next group of flush.
func (b *fileBatch) mapGroup(files []*file) (int, error) {
	c := b.c
	var size int64
	for i, f := range files {
		if f.prevMapID.IsZero() {
			continue
		}
		loc, err := c.store.Lookup(c.ctx, f.prevMapID)
		if err != nil {
			return 0, fmt.Errorf("%s: snapshot %s refers to page map %s: %w", f.slot.abs, c.ref.snap.ID, f.prevMapID, err)
		}
		size += int64(loc.RawLength)
		if size > batchMapBytes && i > 0 {
			return i, nil
		}
	}
	return len(files), nil
}

// readMaps reads the reference maps of files, each map once; false if the
// capture failed.
func (b *fileBatch) readMaps(files []*file) bool {
	c := b.c
	want := map[blob.ID][]*file{}
	var ids []blob.ID
	for _, f := range files {
		if f.prevMapID.IsZero() {
			continue
		}
		if want[f.prevMapID] == nil {
			ids = append(ids, f.prevMapID)
		}
		want[f.prevMapID] = append(want[f.prevMapID], f)
	}
	if len(ids) == 0 {
		return true
	}
	err := c.store.ReadBlobs(c.ctx, ids, func(id blob.ID, data []byte) error {
		m, err := filemap.DecodeCompactMap(data)
		if err != nil {
			return fmt.Errorf("page map %s: %w", id, err)
		}
		for _, f := range want[id] {
			f.prevMap = m // read-only from here on
		}
		return nil
	})
	if err != nil {
		c.fail(fmt.Errorf("read page maps of snapshot %s in %s: %w", c.ref.snap.ID, b.d.abs, err))
		return false
	}
	return true
}

// plan decides how to capture one file. A file the reference snapshot
// holds unchanged is finished at once (nil is returned).
func (c *capture) plan(s *dirSlot) *file {
	e := &s.d.ents[s.idx]
	prev := s.d.prevNode(e.node.Name)
	if prev != nil && prev.Type != filemap.TypeFile {
		prev = nil
	}
	f := &file{slot: s, node: e.node, rel: path.Join(s.d.rel, e.node.Name)}
	if r, ok := pg.ParseRelPath(f.rel); ok && !r.Temp && e.node.Size%int64(c.blockSize) == 0 {
		f.isRel, f.relf = true, r
		f.pages = uint32(e.node.Size / int64(c.blockSize))
	}
	c.stats.files.Add(1)
	c.stats.logical.Add(e.node.Size)
	if f.isRel {
		c.stats.relFiles.Add(1)
	}
	if c.reusable(&e.node, prev) {
		n := e.node
		n.Content, n.Map = prev.Content, prev.Map
		c.stats.reusedFiles.Add(1)
		c.stats.done.Add(n.Size)
		s.finish(n)
		return nil
	}
	if !f.isRel {
		return f
	}
	if prev != nil && !prev.Map.IsZero() {
		f.prevMapID = prev.Map
	}
	// Whole: a new file or one that is not the reference's file any more
	// (another inode, or shorter: PITFALLS, a reused relfilenode can carry
	// old LSNs), and the forks whose pages change without their LSN
	// moving: the free space map is not WAL-logged, and clearing a
	// visibility map bit (heap insert, update, delete) changes the VM page
	// but not its LSN, and no WAL summary lists it. Both are small.
	f.whole = c.method == MethodFull || prev == nil || prev.Map.IsZero() ||
		prev.Inode != e.node.Inode || e.node.Size < prev.Size ||
		f.relf.Fork == pg.ForkFSM || f.relf.Fork == pg.ForkVM
	if !f.whole && c.summaries() {
		f.changes = c.sum.forFile(f.relf, c.relSegSize)
	}
	return f
}

// reusable reports whether a file can keep the reference snapshot's entry
// without being read: same size, inode and mtime, and that mtime well
// before the reference's start (see reuseMargin). A full backup reads
// everything.
func (c *capture) reusable(n, prev *filemap.Node) bool {
	return c.method != MethodFull && prev != nil && c.ref != nil &&
		prev.Size == n.Size && prev.Inode == n.Inode && prev.ModTime == n.ModTime &&
		n.ModTime < c.ref.reuseBefore
}

// dispatch opens a planned file and queues its items.
func (c *capture) dispatch(f *file) {
	fh, err := os.Open(f.slot.abs)
	if errors.Is(err, fs.ErrNotExist) {
		f.slot.vanish() // removed meanwhile; WAL replay agrees
		return
	}
	if err != nil {
		c.fail(fmt.Errorf("open %s: %w", f.slot.abs, err))
		return
	}
	f.f = fh
	// With Options.DirectIO relation files are read with O_DIRECT: every
	// byte once, sparing the database's cached pages. The other files are
	// small and many are the server's hot ones (pg_xact).
	mode := directio.Cached
	if f.isRel && c.opts.DirectIO {
		mode = directio.Direct
	}
	f.r = directio.NewReader(fh, f.slot.abs, mode)
	var n int
	if f.isRel {
		perItem := uint32(itemSlots * c.pagesPerSlot())
		n = int((f.pages + perItem - 1) / perItem)
		f.parts = make([]filemap.Extents, n)
		f.sums = make([][]filemap.SlotSum, n)
	} else {
		chunks := int((f.node.Size + filemap.ChunkSize - 1) / filemap.ChunkSize)
		f.chunks = make([]chunk, chunks)
		n = (chunks + itemSlots - 1) / itemSlots
	}
	if n == 0 {
		c.finishFile(f)
		return
	}
	f.pending.Store(int64(n))
	for i := range n {
		c.items.Add(1)
		select {
		case c.jobs <- item{f: f, idx: i}:
		case <-c.ctx.Done():
			c.items.Done()
			return
		}
	}
}

func (c *capture) pagesPerSlot() int { return blob.SlotSize / c.blockSize }

// itemDone is called by a worker after each item of f.
func (c *capture) itemDone(f *file) {
	if f.pending.Add(-1) == 0 {
		c.finishFile(f)
	}
}

// finishFile stores a relation file's page map (or assembles another
// file's content) and hands the node to its directory.
func (c *capture) finishFile(f *file) {
	if f.f != nil {
		_, direct := f.r.Counts()
		c.stats.directRead.Add(direct)
		f.r.Close()
		f.f.Close()
	}
	if c.ctx.Err() != nil {
		return
	}
	n := f.node
	if f.isRel {
		base := f.prevMap
		if base == nil || f.whole {
			base = &filemap.CompactMap{BlockSize: uint32(c.blockSize)}
		}
		var sums []filemap.SlotSum
		for _, s := range f.sums {
			sums = append(sums, s...)
		}
		// The new map is encoded straight from the reference's and the
		// items' extents, never built as a filemap.Map: only its
		// encoding is held beside them.
		b, err := filemap.EncodeOverlay(base, f.pages, f.updates, sums)
		if err != nil {
			c.fail(fmt.Errorf("page map of %s: %w", f.slot.abs, err))
			return
		}
		// Storing the map can wait for a pack upload: what it was built
		// from is not needed meanwhile.
		f.prevMap, f.parts, f.sums = nil, nil, nil
		if n.Map, err = c.add(blob.KindFileMap, b); err != nil {
			c.fail(fmt.Errorf("page map of %s: %w", f.slot.abs, err))
			return
		}
		n.Size = int64(f.pages) * int64(c.blockSize)
	} else {
		// A file cut short while being read ends at the first short chunk.
		n.Size = 0
		for _, ch := range f.chunks {
			if ch.n == 0 {
				break
			}
			n.Content = append(n.Content, ch.id)
			n.Size += int64(ch.n)
			if ch.n < filemap.ChunkSize {
				break
			}
		}
	}
	f.slot.finish(n)
}

// updates yields the extents the items of a relation file found, in page
// order.
func (f *file) updates(yield func(filemap.Extent) bool) {
	for i := range f.parts {
		for e := range f.parts[i].All() {
			if !yield(e) {
				return
			}
		}
	}
}

// readControl reads global/pg_control, after every other file, and stores
// it like any other file.
func (c *capture) readControl() {
	s := c.control
	if s == nil {
		c.fail(fmt.Errorf("%s/global/pg_control is missing", c.pgdata))
		return
	}
	var b []byte
	var err error
	// pg_control is rewritten in place; a read that overlaps a write fails
	// its CRC and is simply read again.
	for range 10 {
		if b, err = os.ReadFile(s.abs); err != nil {
			break
		}
		if _, err = pg.ParseControlFile(b); err == nil {
			break
		}
	}
	if err != nil {
		c.fail(fmt.Errorf("read %s: %w", s.abs, err))
		return
	}
	n := s.d.ents[s.idx].node
	n.Size = int64(len(b))
	n.Content = nil
	if len(b) > 0 {
		id, err := c.add(blob.KindFile, b)
		if err != nil {
			c.fail(fmt.Errorf("%s: %w", s.abs, err))
			return
		}
		n.Content = []blob.ID{id}
	}
	c.stats.files.Add(1)
	c.stats.logical.Add(n.Size)
	c.stats.read.Add(n.Size)
	c.stats.done.Add(n.Size)
	s.finish(n)
}

// sortExtents orders an item's extents by page (patches are flushed after
// slots that were rewritten whole).
func sortExtents(ext []filemap.Extent) {
	slices.SortFunc(ext, func(a, b filemap.Extent) int {
		switch {
		case a.Page < b.Page:
			return -1
		case a.Page > b.Page:
			return 1
		}
		return 0
	})
}
