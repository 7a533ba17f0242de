package backup

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/index"
)

// samplesPerItem is how many pages per item a summary-based backup reads
// although the summaries say they did not change, to catch summaries that
// are wrong (PITFALLS: summaries of an abandoned timeline, WAL the
// summarizer never saw).
const samplesPerItem = 2

// baseLookahead is how many windows ahead of the one being read a
// summary-based incremental decides what to do and starts fetching base
// slots: the fetches (a ranged GET each, with its latency) overlap with
// reading the data directory. Each holds a slot of memory per worker.
// Two keep a local store's GETs (a few ms) ahead of the disk; each more
// cost a MiB a worker of the 96 MiB an incremental may hold in all.
const baseLookahead = 2

// slotPlan is what an incremental does with one window: decided before
// the window's pages are read when summaries say which changed, so that
// the base fetches of the next windows run meanwhile.
type slotPlan struct {
	s0, s1  uint32
	changed []bool // per page of the window
	n       int    // changed pages
	patched int    // pages the window holds in patches after this backup
	scan    bool   // the window was read whole to find its changed pages
	rebase  bool   // rewrite the window as one slot blob
	base    windowBase
	fetch   *baseFetch
	buf     []byte // the base's bytes
}

// incrementalItem captures pages [p0, p1) of a file that changed since
// the reference snapshot started, window by window (incrementalSlot).
func (wk *worker) incrementalItem(f *file, p0, p1 uint32) error {
	c := wk.c
	pps := uint32(c.pagesPerSlot())
	depth := 1
	if c.summaries() && !f.changes.scan {
		depth = baseLookahead
	}
	// Window j of the item is planned in wk.plans[j%depth]: windows
	// [cur, next) are planned, their bases being fetched.
	plan := func(j uint32) *slotPlan { return wk.plans[j%uint32(depth)] }
	windows := (p1 - p0 + pps - 1) / pps
	cur, next := uint32(0), uint32(0)
	defer func() {
		// Fetches write into the plans' buffers: none may outlive the item.
		for j := cur; j < next; j++ {
			if pl := plan(j); pl.fetch != nil {
				pl.fetch.wait()
				pl.fetch = nil
			}
		}
	}()
	for cur < windows {
		for next < windows && next-cur < uint32(depth) {
			s0 := p0 + next*pps
			if err := wk.planSlot(f, s0, min(s0+pps, p1), plan(next)); err != nil {
				return err
			}
			next++
		}
		pl := plan(cur)
		err := wk.incrementalSlot(f, pl)
		cur++
		if err != nil {
			return err
		}
		c.stats.done.Add(int64(pl.s1-pl.s0) * int64(c.blockSize))
	}
	return nil
}

// planSlot decides what to do with window [s0, s1): which of its pages
// changed (reading them all first for an LSN scan), whether to rewrite
// it whole, and the base its changed pages are stored as deltas against,
// whose fetch it starts.
func (wk *worker) planSlot(f *file, s0, s1 uint32, pl *slotPlan) error {
	c := wk.c
	*pl = slotPlan{s0: s0, s1: s1, changed: pl.changed, buf: pl.buf}
	clear(wk.changed)
	prevPages := f.prevMap.Pages
	n := 0
	pl.scan = c.method == MethodLSNScan || c.summaries() && f.changes.scan
	switch {
	case pl.scan:
		clear(wk.have)
		if err := wk.read(f, s0, s0, s1); err != nil {
			return err
		}
		for p := s0; p < s1; p++ {
			page := wk.pageBuf(s0, p)
			ch := p >= prevPages || pg.PageLSN(page) >= c.ref.start
			if !ch && pg.PageIsZero(page) {
				// A zero page carries no LSN. Where the reference held
				// data, the file is a new relation under a reused
				// name and inode: the zero page is the truth.
				ch = !prevZero(f.prevMap, p)
			}
			if !ch && !c.checksums && pg.PageAllVisible(page) {
				v, err := wk.visibleSinceRef(f, p)
				if err != nil {
					return err
				}
				ch = v
			}
			if ch {
				wk.changed[p-s0] = true
				n++
			}
		}
	case c.summaries():
		for p := s0; p < s1; p++ {
			if p >= prevPages || f.changes.changed(p) {
				wk.changed[p-s0] = true
				n++
			}
		}
	default:
		return fmt.Errorf("incremental capture with method %q", c.method)
	}
	copy(pl.changed, wk.changed)
	prev, err := wk.prevPatches(f, s0, s1)
	if err != nil {
		return err
	}
	base, plain, patched := prev.base, prev.plain, prev.patched+n
	if base.pages > 0 && !wk.baseWorthFetching(base, s0, s1) {
		// Fetching the base for a few changed pages would cost more
		// reads than storing them whole: the backup's reads stay
		// proportional to what changed.
		base = windowBase{}
	}
	// Pages stored as deltas against the window's base cost a tenth of a
	// rewritten slot's share even when every page of the window changed
	// (a B-tree index under random inserts: nearly every leaf), so only
	// the pages that cannot be deltas count toward a rewrite by number.
	// What bounds a restore's reads for a window of deltas is the number
	// of patch blobs it must fetch besides the base: this backup adds one
	// or two, and past maxPatchBlobs the window is rewritten. The age
	// rule still rewrites a window whose deltas grew old.
	for p := s0; p < s1; p++ {
		if wk.changed[p-s0] && p-s0 >= base.pages {
			plain++
		}
	}
	blobs := prev.blobs
	if n > 0 {
		blobs++
	}
	pl.n, pl.patched = n, patched
	pl.rebase = plain > c.opts.RebasePages || blobs > maxPatchBlobs || patched > 0 && prev.old && c.rebaseShare(f.rel, s0)
	if !pl.rebase && n > 0 && base.pages > 0 {
		pl.base = base
		pl.fetch = wk.fetchBase(base, wk.basesAhead(f, s1), pl.buf)
	}
	return nil
}

// baseRunWindows is how many windows past the one planned basesAhead
// looks at, and maxBaseRun the bytes of stored base slots one GET reads
// for them (readBase): about ten slots of a pgbench table, which compress
// to about 100 KB each.
const (
	baseRunWindows = 16
	maxBaseRun     = 1 << 20
)

// basesAhead guesses the base slots that the windows after s1 will fetch
// (summary-based incrementals only, which know those windows' changes):
// for each of the next baseRunWindows windows with a changed page, the
// blob the reference's map holds aligned at the window's start, or the
// base of the delta there. A wrong guess costs only bytes ReadBlobRun
// leaves out or reads for nothing, never a wrong base: each is decoded
// by its ID.
func (wk *worker) basesAhead(f *file, s1 uint32) []blob.ID {
	c := wk.c
	m := f.prevMap
	if !c.summaries() || f.changes.scan || m == nil {
		return nil
	}
	pps := uint32(c.pagesPerSlot())
	var ids []blob.ID
	for w, k := s1, 0; k < baseRunWindows && w < m.Pages; w, k = w+pps, k+1 {
		if !f.changes.anyChanged(w, w+pps) {
			continue
		}
		i := m.Lookup(w)
		if i < 0 {
			continue
		}
		e := m.Extents.At(i)
		switch {
		case e.IsDelta() && e.BasePage+(w-e.Page) == 0:
			ids = append(ids, e.Base)
		case !e.IsDelta() && !e.Blob.IsZero() && e.BlobPage+(w-e.Page) == 0:
			ids = append(ids, e.Blob)
		}
	}
	return ids
}

// incrementalSlot captures the pages of a planned window that changed
// since the reference snapshot started, as patch pages, or rewrites the
// whole slot when the plan says so. Pages it does not capture keep the
// reference's extents (filemap.Overlay).
func (wk *worker) incrementalSlot(f *file, pl *slotPlan) error {
	c := wk.c
	s0, s1 := pl.s0, pl.s1
	if pl.fetch != nil {
		defer func() {
			data, _ := pl.fetch.wait()
			pl.buf, pl.fetch = data[:0], nil // grown to a slot once, then reused
		}()
	}
	if !pl.scan {
		clear(wk.have)
	}
	copy(wk.changed, pl.changed)
	if pl.rebase {
		if err := wk.readRest(f, s0, s1); err != nil {
			return err
		}
		c.stats.rebased.Add(1)
		return wk.storeSlot(f, s0, s1)
	}
	if pl.n > 0 {
		if err := wk.patchWindow(f, pl); err != nil {
			return err
		}
	}
	if pl.patched > 0 {
		return wk.windowSum(f, pl)
	}
	return nil
}

// visibleSinceRef reports whether heap page p of f, which carries
// PD_ALL_VISIBLE and an LSN older than the reference, may have been marked
// all-visible after the reference started: VACUUM sets the flag without
// stamping the page's LSN on a cluster without data checksums and
// wal_log_hints (pg.PageAllVisible), so the LSN cannot tell, and recovery
// from this backup's start does not replay the record that set it. The
// visibility map page covering the block always gets that record's LSN, so
// a map page no newer than the reference proves the flag was already set
// then; anything else (a newer map page, no map, a short map) captures the
// page. wal_log_hints is not trusted: it can have been off when VACUUM ran.
func (wk *worker) visibleSinceRef(f *file, p uint32) (bool, error) {
	c := wk.c
	if !f.isRel || f.relf.Fork != pg.ForkMain {
		return false, nil
	}
	vmPage := pg.RelationBlock(f.relf.Segment, p, c.relSegSize) / pg.VMHeapBlocksPerPage(c.blockSize)
	vm := f.relf
	vm.Fork, vm.Segment = pg.ForkVM, vmPage/c.relSegSize
	abs := filepath.Join(filepath.Dir(f.slot.abs), vm.FileName())
	if wk.vm.abs != abs || wk.vm.page != vmPage {
		lsn, ok, err := readPageLSN(abs, int64(vmPage%c.relSegSize)*int64(c.blockSize))
		if err != nil {
			return false, fmt.Errorf("visibility map of %s: %w", f.rel, err)
		}
		wk.vm = vmCache{abs: abs, page: vmPage, lsn: lsn, ok: ok}
	}
	return !wk.vm.ok || wk.vm.lsn >= c.ref.start, nil
}

// vmCache is the last visibility map page a worker looked at: one map page
// covers 32,672 heap pages, so consecutive pages share it.
type vmCache struct {
	abs  string
	page uint32
	lsn  pg.LSN
	ok   bool
}

// readPageLSN reads the LSN of the page at off in the file at abs; ok is
// false when the file or the page does not exist.
func readPageLSN(abs string, off int64) (lsn pg.LSN, ok bool, err error) {
	fh, err := os.Open(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer fh.Close()
	var b [8]byte
	if _, err := fh.ReadAt(b[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, false, nil
		}
		return 0, false, err
	}
	return pg.PageLSN(b[:]), true, nil
}

// patchWindow reads the changed pages of a planned window (unless a scan
// read them all already) and adds them to the open patch, as deltas
// against the window's base where it holds them.
func (wk *worker) patchWindow(f *file, pl *slotPlan) error {
	c := wk.c
	s0, s1, base := pl.s0, pl.s1, pl.base
	if !pl.scan {
		if err := wk.readChanged(f, s0, s1); err != nil {
			return err
		}
	}
	var data []byte
	if pl.fetch != nil {
		var err error
		if data, err = pl.fetch.wait(); err != nil {
			return fmt.Errorf("%s: read the base slot of changed pages: %w", f.slot.abs, err)
		}
	}
	bs := uint32(c.blockSize)
	for p := s0; p < s1; p++ {
		if !wk.changed[p-s0] {
			continue
		}
		pb := pageBase{}
		var basePage []byte
		if p-s0 < base.pages {
			pb = pageBase{id: base.id, page: p - s0}
			off := (p - s0) * bs
			if int(off+bs) > len(data) {
				return fmt.Errorf("%s: base slot %s has %d bytes, page %d needs %d: %w", f.slot.abs, base.id, len(data), p-s0, off+bs, filemap.ErrInvalid)
			}
			basePage = data[off : off+bs]
		}
		if err := wk.addPatchPage(f, p, wk.pageBuf(s0, p), pb, basePage); err != nil {
			return err
		}
	}
	return nil
}

// Reads of changed pages: runs of changed pages separated by at most
// maxReadGap unchanged ones are read with one read, as long as what it
// reads stays within readSlack times the changed pages it holds. One
// large read costs less than a system call (and, from a cold cache, a
// disk request) per page: where half the pages of a window changed at
// random (1% of a table's rows updated), the window is read whole, as a
// full backup reads it. The slack bounds the backup's reads by twice the
// changed pages (plus the sampled ones).
const (
	maxReadGap = 32
	readSlack  = 2
)

// readChanged reads the changed pages of window [s0, s1) into buf, and
// the unchanged pages between them where a joined read is cheaper; every
// page read is verified.
func (wk *worker) readChanged(f *file, s0, s1 uint32) error {
	return readSpans(wk.changed[:s1-s0], func(from, to uint32) error {
		return wk.read(f, s0, s0+from, s0+to)
	})
}

// readSpans calls read for the spans [from, to) of a window's pages to
// read: every changed page once, in order, runs of them joined across at
// most maxReadGap unchanged pages while a span holds no more than
// readSlack times its changed pages.
func readSpans(changed []bool, read func(from, to uint32) error) error {
	// The whole window's changed pages in one span when it qualifies;
	// joining run by run from the left would stop at the first wide gap.
	first, last, n, gap, maxGap := -1, 0, uint32(0), uint32(0), uint32(0)
	for p, c := range changed {
		switch {
		case !c:
			gap++
		case first < 0:
			first, last, n, gap = p, p, 1, 0
		default:
			maxGap = max(maxGap, gap)
			last, n, gap = p, n+1, 0
		}
	}
	if first < 0 {
		return nil
	}
	if maxGap <= maxReadGap && uint32(last+1-first) <= readSlack*n {
		return read(uint32(first), uint32(last+1))
	}
	var from, to, ch uint32 // the span being grown: [from, to), ch changed pages
	for p := uint32(0); p < uint32(len(changed)); {
		if !changed[p] {
			p++
			continue
		}
		q := p
		for q < uint32(len(changed)) && changed[q] {
			q++
		}
		switch {
		case to == 0:
			from, to, ch = p, q, q-p
		case p-to <= maxReadGap && q-from <= readSlack*(ch+q-p):
			to, ch = q, ch+q-p
		default:
			if err := read(from, to); err != nil {
				return err
			}
			from, to, ch = p, q, q-p
		}
		p = q
	}
	if to == 0 {
		return nil
	}
	return read(from, to)
}

// baseFetch is a base slot being read from the repository.
type baseFetch struct {
	done chan struct{}
	data []byte
	err  error
}

// fetchBase starts reading a window's base slot blob into buf (readBase,
// with the guesses ahead at the next windows' bases); wait returns it.
func (wk *worker) fetchBase(base windowBase, ahead []blob.ID, buf []byte) *baseFetch {
	bf := &baseFetch{done: make(chan struct{})}
	go func() {
		defer close(bf.done)
		bf.data, bf.err = wk.readBase(base, ahead, buf[:0])
	}()
	return bf
}

// readBase appends base's plaintext to buf: from the run of stored base
// slots the worker holds, or from a new run read with one GET with base
// first and the guesses of ahead after it (repo.ReadBlobRun). Each blob is
// checked against its keyed ID as it is decoded, so a delta is never taken
// against other bytes.
func (wk *worker) readBase(base windowBase, ahead []blob.ID, buf []byte) ([]byte, error) {
	c := wk.c
	if base.id.IsZero() {
		return c.store.ReadBlob(c.ctx, base.id, buf)
	}
	wk.basesMu.Lock()
	defer wk.basesMu.Unlock()
	if wk.bases != nil {
		if data, ok, err := wk.bases.Decode(base.id, buf); ok {
			return data, err
		}
		wk.bases.Release()
		wk.bases = nil
	}
	run, err := c.store.ReadBlobRun(c.ctx, append([]blob.ID{base.id}, ahead...), maxBaseRun)
	if err != nil {
		return buf, err
	}
	c.stats.baseRead.Add(run.Read())
	wk.bases = run
	data, _, err := run.Decode(base.id, buf)
	return data, err
}

// wait waits for the fetch.
func (bf *baseFetch) wait() ([]byte, error) {
	<-bf.done
	return bf.data, bf.err
}

// baseWorthFetching reports whether window [s0, s1)'s changed pages
// should be stored as deltas against its base slot: only when fetching the
// base (its stored bytes, rounded out to the encrypted chunks a ranged read
// takes) costs no more than the changed pages themselves. So a backup
// never reads more from the repository than it reads of changed pages from
// the data directory (docs/snapshot.md, page deltas).
func (wk *worker) baseWorthFetching(base windowBase, s0, s1 uint32) bool {
	k := int64(0)
	for p := s0; p < s1; p++ {
		if wk.changed[p-s0] && p-s0 < base.pages {
			k++
		}
	}
	return base.fetch <= k*int64(wk.c.blockSize)
}

// windowSum records the sum (filemap.SlotSum) of planned window [s0, s1),
// which holds patch pages and so cannot be recognised by one slot blob's
// ID. Each page summed is either what a restore of this snapshot writes
// there or the page as this backup read it, which may differ from what the
// restore writes in bits that are not WAL-logged (hint bits set after the
// page's stored copy was read): a delta restore that keeps a window
// matching it keeps the snapshot's pages or what a full backup taken now
// would hold, an equally valid start for replay. An unchanged window keeps
// the reference's sum. A backup that reads only the changed pages
// (summaries) must not read the rest of every window it touches for its
// sum (its reads would grow with the files, not with what changed): it
// takes what it holds already (sumFromBase: the fetched base slot's pages)
// and reads at most the pages earlier backups stored in patches, within
// sumReadSlack; other windows get no sum, and a delta restore
// proves them by their deltas or compares them extent by extent.
func (wk *worker) windowSum(f *file, pl *slotPlan) error {
	c := wk.c
	s0, s1 := pl.s0, pl.s1
	w := s0 / uint32(c.pagesPerSlot())
	if pl.n == 0 {
		if id, ok := f.prevMap.Sum(w); ok {
			wk.sums = append(wk.sums, filemap.SlotSum{Slot: w, ID: id})
			c.stats.summed.Add(1)
			return nil
		}
	}
	if c.summaries() && !f.changes.scan {
		ok, err := wk.sumFromBase(f, pl)
		if err != nil || !ok {
			c.stats.unsummed.Add(1)
			return err
		}
	}
	if err := wk.readRest(f, s0, s1); err != nil {
		return err
	}
	if id := c.store.BlobID(blob.KindSlot, wk.buf[:int(s1-s0)*c.blockSize]); !id.IsZero() {
		wk.sums = append(wk.sums, filemap.SlotSum{Slot: w, ID: id})
		c.stats.summed.Add(1)
	}
	return nil
}

// sumFromBase puts into the buffer of planned window [s0, s1), for each
// page this backup does not store, what a restore writes there where the
// backup holds it: the fetched base slot's own page at the same offset
// (checked against the slot's ID as it was decoded) or a zero page, as the
// parent's map has it; so a restored copy matches the sum even where the
// data directory's copy of an unchanged page gained hint bits. It reports
// whether the pages left, stored by earlier backups in patches and not read
// yet, may be read from the data directory: only while all the pages read
// of the window stay within sumReadSlack times its changed pages, so that
// summing never makes the backup's reads grow with the files rather than
// with what changed. Fetching those patches instead would cost the backup
// the decoding that it spares the restore.
func (wk *worker) sumFromBase(f *file, pl *slotPlan) (bool, error) {
	c := wk.c
	s0, s1 := pl.s0, pl.s1
	var data []byte
	if pl.fetch != nil {
		var err error
		if data, err = pl.fetch.wait(); err != nil {
			return false, err
		}
	}
	bs := uint32(c.blockSize)
	m := f.prevMap
	read, rest := 0, 0
	for p := s0; p < s1; {
		if wk.changed[p-s0] {
			read++
			p++
			continue
		}
		i := m.Lookup(p)
		if i < 0 {
			// Not in the parent's map (a page past its end is changed).
			if wk.have[p-s0] {
				read++
			} else {
				rest++
			}
			p++
			continue
		}
		e := m.Extents.At(i)
		for end := min(e.Page+e.Count, s1); p < end; p++ {
			if wk.changed[p-s0] {
				read++
				continue
			}
			dst := wk.pageBuf(s0, p)
			off := (p - s0) * bs
			switch {
			case e.Blob.IsZero():
				clear(dst)
			case !e.IsDelta() && e.Blob == pl.base.id && pl.fetch != nil && e.BlobPage+(p-e.Page) == p-s0 && int(off+bs) <= len(data):
				copy(dst, data[off:off+bs])
			case wk.have[p-s0]:
				read++
				continue
			default:
				rest++
				continue
			}
			if wk.have[p-s0] {
				read++
			}
			wk.have[p-s0] = true
		}
	}
	return rest == 0 || read+rest <= sumReadSlack*pl.n, nil
}

// sumReadSlack bounds what an incremental from summaries reads of a window
// to sum it: at most sixteen times the window's changed pages in all, so a
// window is summed once a sixteenth of it (8 of 128 pages) changed even
// when no base slot was fetched, while a window with a page or two changed
// is not read whole for its sum. The pages it adds were changed by
// earlier backups of the chain or are the base slot's, and a window's
// patches come from at most maxPatchBlobs backups before it is rewritten
// whole. A window without a sum costs a delta restore its slot and patch
// blobs whenever it cannot prove it by deltas: on the restore benchmark's
// chain (pgbench scale 20 plus 2 million md5 rows, a full and three
// incrementals) a bound of three times left 127 of the third incremental's
// 294 changed windows without a sum, and a delta restore over a copy that
// differed in 1,343 pages (2%) fetched 279 MiB in 310 blobs; at sixteen
// times, 3 windows and 38 MiB in 46 blobs, for 23% more bytes read by
// each incremental (eight times: 64 windows, 187 MiB).
const sumReadSlack = 16

// prevZero reports whether the reference map holds page p as a zero page.
func prevZero(m *filemap.CompactMap, p uint32) bool {
	i := m.Lookup(p)
	return i < 0 || m.Extents.At(i).Blob.IsZero()
}

// windowBase is the slot blob a window's pages rest on in the reference
// map, against which changed pages are stored as deltas; pages is how many
// pages it holds (0: none, the pages are stored as they are); fetch what
// reading it costs (fetchSize).
type windowBase struct {
	id    blob.ID
	pages uint32
	fetch int64
}

// fetchSize is how many bytes a ranged read of the blob at loc takes from
// its pack: its stored bytes, widened to whole encrypted chunks.
func fetchSize(loc index.Location) int64 {
	if loc.Length == 0 {
		return 0
	}
	first := int64(loc.Offset) / agestream.ChunkSize
	last := (int64(loc.Offset) + int64(loc.Length) - 1) / agestream.ChunkSize
	return (last - first + 1) * agestream.EncChunkSize
}

// maxPatchBlobs is how many patch blobs a window's pages may be spread over
// before it is rewritten whole: a restore reads each of them (1 MiB
// decompressed) besides the base.
const maxPatchBlobs = 3

// prevWindow is what the reference map says of a window.
type prevWindow struct {
	patched int  // pages in patch blobs that this backup does not capture again
	plain   int  // of those, the ones that are not deltas
	blobs   int  // distinct patch blobs holding those pages
	old     bool // the base blob is older than the rebase age
	base    windowBase
}

// prevPatches reads window [s0, s1) of the reference map: the pages held in
// patch blobs that this backup does not capture again, whether the slot's
// base blob is older than the rebase age, and the base itself: the one
// slot blob the window's extents (or their deltas) rest on, aligned to the
// window. A window with two bases, or one misaligned, gets none: its
// changed pages are stored whole.
func (wk *worker) prevPatches(f *file, s0, s1 uint32) (prevWindow, error) {
	c := wk.c
	m := f.prevMap
	var w prevWindow
	i := m.Lookup(s0)
	if i < 0 {
		return w, nil
	}
	oldBefore := c.now - int64(c.opts.RebaseAge.Seconds())
	conflict := false
	wk.seen = wk.seen[:0]
	candidate := func(id blob.ID, aligned bool) error {
		switch {
		case conflict:
		case !aligned || !w.base.id.IsZero() && w.base.id != id:
			conflict = true
		case w.base.id.IsZero():
			loc, err := c.store.Lookup(c.ctx, id)
			if err != nil {
				return fmt.Errorf("%s: snapshot %s refers to blob %s: %w", f.slot.abs, c.ref.snap.ID, id, err)
			}
			if loc.Kind != blob.KindSlot {
				conflict = true
				break
			}
			w.base = windowBase{id: id, pages: loc.RawLength / uint32(c.blockSize), fetch: fetchSize(loc)}
		}
		return nil
	}
	for ; i < m.Extents.Len() && m.Extents.At(i).Page < s1; i++ {
		e := m.Extents.At(i)
		if e.Blob.IsZero() {
			continue
		}
		loc, err := c.store.Lookup(c.ctx, e.Blob)
		if err != nil {
			return prevWindow{}, fmt.Errorf("%s: snapshot %s refers to blob %s: %w", f.slot.abs, c.ref.snap.ID, e.Blob, err)
		}
		if !loc.Kind.IsPatch() {
			w.old = w.old || e.Written != 0 && e.Written < oldBefore
			if err := candidate(e.Blob, e.Page >= s0 && e.BlobPage == e.Page-s0); err != nil {
				return prevWindow{}, err
			}
			continue
		}
		if e.IsDelta() {
			if err := candidate(e.Base, e.Page >= s0 && e.BasePage == e.Page-s0); err != nil {
				return prevWindow{}, err
			}
		}
		surviving := false
		for p := max(e.Page, s0); p < min(e.Page+e.Count, s1); p++ {
			if !wk.changed[p-s0] {
				surviving = true
				w.patched++
				if !e.IsDelta() {
					w.plain++
				}
			}
		}
		if surviving && !slices.Contains(wk.seen, e.Blob) {
			wk.seen = append(wk.seen, e.Blob)
		}
	}
	w.blobs = len(wk.seen)
	if conflict || !c.opts.deltas() {
		w.base = windowBase{}
		w.plain = w.patched
	}
	return w, nil
}

// rebaseShare spreads rewrites of old slots over RebaseSpread days: a slot
// qualifies on the day its hash picks, so a cluster whose bases all grew
// old at once does not rewrite them all in one backup.
func (c *capture) rebaseShare(rel string, s0 uint32) bool {
	h := fnv.New64a()
	h.Write([]byte(rel))
	h.Write([]byte(strconv.FormatUint(uint64(s0), 10)))
	spread := uint64(c.opts.RebaseSpread)
	return h.Sum64()%spread == uint64(c.day)%spread
}

// pageBase is the page of a base slot blob a patch page is stored as a
// delta against (filemap.Extent.Base); the zero id: stored as it is.
type pageBase struct {
	id   blob.ID
	page uint32
}

// addPatchPage appends a changed page to the worker's open patch: XORed
// with basePage when the page is stored as a delta (base set).
func (wk *worker) addPatchPage(f *file, p uint32, page []byte, base pageBase, basePage []byte) error {
	if len(wk.patchPages) == wk.c.pagesPerSlot() {
		if err := wk.flushPatch(f); err != nil {
			return err
		}
	}
	k := len(wk.patch)
	wk.patch = append(wk.patch, page...)
	if basePage != nil {
		dst := wk.patch[k:]
		subtle.XORBytes(dst, dst, basePage)
		wk.c.stats.deltaPages.Add(1)
	}
	wk.patchPages = append(wk.patchPages, p)
	wk.patchBases = append(wk.patchBases, base)
	return nil
}

// flushPatch stores the open patch as one blob and records where each of
// its pages now lives.
func (wk *worker) flushPatch(f *file) error {
	if len(wk.patchPages) == 0 {
		return nil
	}
	c := wk.c
	wk.runs = filemap.AppendPatchRuns(wk.runs[:0], c.blockSize, wk.patch)
	id, err := c.add(blob.KindPatchRuns, wk.runs)
	if err != nil {
		return fmt.Errorf("%s: %w", f.slot.abs, err)
	}
	c.stats.patched.Add(int64(len(wk.patchPages)))
	for k, p := range wk.patchPages {
		e := filemap.Extent{Page: p, Count: 1, Blob: id, BlobPage: uint32(k), Written: c.now, Base: wk.patchBases[k].id, BasePage: wk.patchBases[k].page}
		if n := len(wk.ext); n > 0 && filemap.Continues(wk.ext[n-1], e) {
			wk.ext[n-1].Count++
			continue
		}
		wk.ext = append(wk.ext, e)
	}
	wk.patch = wk.patch[:0]
	wk.patchPages = wk.patchPages[:0]
	wk.patchBases = wk.patchBases[:0]
	return nil
}

// sample reads a few pages of [p0, p1) that the summaries say did not
// change since the reference started, and stops the capture if one did:
// samplesPerItem pages per full item (16 MiB), and as many in proportion
// for a smaller file (a one-page file is read with that probability, not
// twice), so that checking stays a fixed share of the data.
func (wk *worker) sample(f *file, p0, p1 uint32) error {
	c := wk.c
	limit := min(p1, f.prevMap.Pages)
	if p0 >= limit {
		return nil
	}
	full := uint32(itemSlots * c.pagesPerSlot())
	n := samplesPerItem * (limit - p0) / full
	if rand.Uint32N(full) < samplesPerItem*(limit-p0)%full {
		n++
	}
	if c.opts.sampleAll {
		n = limit - p0
	}
	for i := range n {
		p := p0 + rand.Uint32N(limit-p0)
		if c.opts.sampleAll {
			p = p0 + i
		}
		if f.changes.changed(p) {
			continue
		}
		k, err := wk.readAt(f, wk.page, int64(p)*int64(c.blockSize))
		if err != nil {
			return err
		}
		c.stats.sampled.Add(1)
		if k < len(wk.page) {
			continue
		}
		if lsn := pg.PageLSN(wk.page); lsn >= c.ref.start && lsn < c.start {
			c.summaryMismatch(f.rel, p, lsn)
			return errSummaryMismatch
		}
	}
	return nil
}
