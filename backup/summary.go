package backup

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
)

// maxSummaryBlocks bounds the block numbers a backup holds from summaries
// (4 bytes each, 32 MiB). Past it, the relation forks with the most
// changed blocks are read whole and compared by page LSN instead (scan),
// which costs about the same for a fork so thoroughly changed, and memory
// stays bounded whatever the WAL between two backups did.
const maxSummaryBlocks = 8 << 20

// noLimit marks a relation fork that was not truncated in the range.
const noLimit = math.MaxUint32

// relKey names a relation fork as WAL summaries do.
type relKey struct {
	spc, db, rel uint32
	fork         pg.Fork
}

// relChanges are the blocks of one relation fork modified in the range,
// and the smallest length it was truncated to (noLimit if never). scan:
// too many blocks changed to list them; every page of the fork is compared
// by LSN.
//
// Blocks are held as a bitmap where that is smaller than their list: a
// fork whose pages changed at random (pgbench scale 1000, 1% of the rows
// updated: a million blocks, half of the table's) costs a bit a block
// instead of 4 bytes and the slack of the list's growth, and the files'
// changes are looked up in it instead of copied out (12 of an
// incremental's 80 MiB of live heap at that scale were these lists).
type relChanges struct {
	limit uint32
	// bits holds blocks [0, 64*len(bits)): block b changed when bit b%64
	// of bits[b/64] is set; nbits are set.
	bits  []uint64
	nbits int
	// blocks are the changed blocks past the bitmap, blocks[:sorted]
	// sorted and unique.
	blocks []uint32
	sorted int
	scan   bool
}

// covered is the number of blocks the bitmap covers.
func (rc *relChanges) covered() uint64 { return 64 * uint64(len(rc.bits)) }

// held is the number of block numbers rc holds.
func (rc *relChanges) held() int { return rc.nbits + len(rc.blocks) }

// has reports whether block b changed (after compaction).
func (rc *relChanges) has(b uint32) bool {
	if uint64(b) < rc.covered() {
		return rc.bits[b/64]&(1<<(b%64)) != 0
	}
	_, ok := slices.BinarySearch(rc.blocks, b)
	return ok
}

// anyIn reports whether a block of [lo, hi) changed (after compaction).
func (rc *relChanges) anyIn(lo, hi uint64) bool {
	for b := lo; b < min(hi, rc.covered()); {
		w := rc.bits[b/64] >> (b % 64)
		if n := min(64-b%64, hi-b); n < 64 {
			w &= 1<<n - 1
		}
		if w != 0 {
			return true
		}
		b += 64 - b%64
	}
	lo = max(lo, rc.covered())
	if lo >= hi || lo > math.MaxUint32 {
		return false
	}
	i, _ := slices.BinarySearch(rc.blocks, uint32(lo))
	return i < len(rc.blocks) && uint64(rc.blocks[i]) < hi
}

// summary is the union of the summaries covering [from, to) along the
// current timeline's history: every block modified in that range. It is
// filled from PostgreSQL's WAL summaries (MethodSummaries) or from
// tidemark's block summaries (MethodBlockSummaries).
type summary struct {
	source   string
	from, to pg.LSN
	files    int // summaries read
	blocks   int // block numbers held
	scans    int // forks left to the LSN scan (maxSummaryBlocks)
	rels     map[relKey]*relChanges
	// spcs are tablespaces created or dropped in the range: every file in
	// them is new.
	spcs map[uint32]bool
}

func newSummary(source string, from, to pg.LSN) *summary {
	return &summary{source: source, from: from, to: to, rels: map[relKey]*relChanges{}, spcs: map[uint32]bool{}}
}

func (s *summary) rel(k relKey) *relChanges {
	rc := s.rels[k]
	if rc == nil {
		rc = &relChanges{limit: noLimit}
		s.rels[k] = rc
	}
	return rc
}

// addBlock notes that block b of fork k changed.
func (s *summary) addBlock(k relKey, b uint32) {
	rc := s.rel(k)
	if rc.scan {
		return
	}
	s.note(rc, b)
	if len(rc.blocks) >= 2*rc.sorted+1024 {
		s.compact(rc)
	}
}

// addBlocks notes blocks (sorted and unique) of fork k.
func (s *summary) addBlocks(k relKey, blocks []uint32) {
	rc := s.rel(k)
	if rc.scan || len(blocks) == 0 {
		return
	}
	for _, b := range blocks {
		s.note(rc, b)
	}
	if len(rc.blocks) >= 2*rc.sorted+1024 {
		s.compact(rc)
	}
}

// note records block b of rc: in the bitmap when it covers b, else at the
// end of the list.
func (s *summary) note(rc *relChanges, b uint32) {
	if uint64(b) >= rc.covered() {
		rc.blocks = append(rc.blocks, b)
		s.blocks++
		return
	}
	if bit := uint64(1) << (b % 64); rc.bits[b/64]&bit == 0 {
		rc.bits[b/64] |= bit
		rc.nbits++
		s.blocks++
	}
}

// setLimit notes that fork k was cut to n blocks (0: created or removed).
func (s *summary) setLimit(k relKey, n uint32) {
	rc := s.rel(k)
	rc.limit = min(rc.limit, n)
}

// compact sorts rc's listed blocks and drops repeats, and moves them into
// the bitmap where a bitmap up to them is no larger than a list of all of
// rc's blocks would be. When the summary then holds more
// than maxSummaryBlocks, the forks with the most blocks are left to the
// LSN scan until it does not.
func (s *summary) compact(rc *relChanges) {
	before := len(rc.blocks)
	slices.Sort(rc.blocks)
	rc.blocks = slices.Compact(rc.blocks)
	rc.sorted = len(rc.blocks)
	s.blocks -= before - len(rc.blocks)
	// The longest run of listed blocks from the first whose bitmap (up to
	// the last of them) is no larger than their list: a few blocks far
	// past the rest stay listed and do not keep the rest from the bitmap.
	cut := 0
	for i, b := range rc.blocks {
		if 8*(int(b/64)+1) <= 4*(rc.nbits+i+1) {
			cut = i + 1
		}
	}
	if cut > 0 {
		// The bitmap covers whole words: the blocks listed in the last
		// one go into it too, so that every listed block lies past it.
		words := int(rc.blocks[cut-1]/64) + 1
		for cut < len(rc.blocks) && int(rc.blocks[cut]/64) < words {
			cut++
		}
		rc.bits = append(rc.bits, make([]uint64, words-len(rc.bits))...)
		for _, b := range rc.blocks[:cut] {
			rc.bits[b/64] |= 1 << (b % 64)
		}
		rc.nbits += cut
		rc.blocks = slices.Clone(rc.blocks[cut:])
		rc.sorted = len(rc.blocks)
	}
	for s.blocks > maxSummaryBlocks {
		var big *relChanges
		for _, r := range s.rels {
			if !r.scan && (big == nil || r.held() > big.held()) {
				big = r
			}
		}
		if big == nil {
			return
		}
		s.blocks -= big.held()
		big.bits, big.nbits, big.blocks, big.sorted, big.scan = nil, 0, nil, 0, true
		s.scans++
	}
}

// finish compacts every fork's blocks for lookups.
func (s *summary) finish() {
	for _, rc := range s.rels {
		if rc.sorted != len(rc.blocks) {
			s.compact(rc)
		}
	}
}

// fileChanges are a summary's changes to one relation segment file, in
// pages relative to the file: looked up in the fork's relChanges, not
// copied out of them.
type fileChanges struct {
	rc    *relChanges // nil: no page listed
	first uint64      // the fork's block that is the file's page 0
	limit uint32      // pages at or past it are changed; noLimit for none
	scan  bool        // too many to list: compare every page's LSN
}

// forFile returns the changes to segment seg of relation file r.
func (s *summary) forFile(r pg.RelFile, relSegSize uint32) fileChanges {
	// A tablespace created or dropped, and relfilenode 0 with limit 0 (a
	// database directory created or dropped in the range; CREATE DATABASE
	// ... FILE_COPY logs no block of the files it copies): every file in
	// it is new.
	if s.spcs[r.Tablespace] {
		return fileChanges{limit: 0}
	}
	if db := s.rels[relKey{r.Tablespace, r.Database, 0, pg.ForkMain}]; db != nil && db.limit == 0 {
		return fileChanges{limit: 0}
	}
	rc := s.rels[relKey{r.Tablespace, r.Database, r.RelNumber, r.Fork}]
	if rc == nil {
		return fileChanges{limit: noLimit}
	}
	lo := uint64(r.Segment) * uint64(relSegSize)
	hi := lo + uint64(relSegSize)
	fc := fileChanges{rc: rc, first: lo, limit: noLimit, scan: rc.scan}
	switch {
	case uint64(rc.limit) <= lo:
		fc.limit = 0
	case uint64(rc.limit) < hi:
		fc.limit = uint32(uint64(rc.limit) - lo)
	}
	return fc
}

// anyChanged reports whether a page of [p0, p1) changed.
func (fc *fileChanges) anyChanged(p0, p1 uint32) bool {
	if p1 > fc.limit {
		return true
	}
	return fc.rc != nil && fc.rc.anyIn(fc.first+uint64(p0), fc.first+uint64(p1))
}

// changed reports whether page p of the file is in the summary.
func (fc *fileChanges) changed(p uint32) bool {
	if p >= fc.limit {
		return true
	}
	b := fc.first + uint64(p)
	return fc.rc != nil && b <= math.MaxUint32 && fc.rc.has(uint32(b))
}

// summaryFile is one row of pg_available_wal_summaries().
type summaryFile struct {
	tli        pg.TimelineID
	start, end pg.LSN
}

// loadSummary collects the WAL summaries that cover [from, to) on the
// timelines of hist. It returns nil and the reason when they do not cover
// the range (summarize_wal was off for a while, summaries were removed,
// the summarizer lags) or hold too many blocks.
func loadSummary(ctx context.Context, srv *server, hist pg.History, from, to pg.LSN, wait time.Duration) (*summary, string, error) {
	if reason, err := srv.waitSummarized(ctx, hist.Timeline, to, wait); reason != "" || err != nil {
		return nil, reason, err
	}
	avail, err := srv.availableSummaries(ctx)
	if err != nil {
		return nil, "", err
	}
	files, reason := coverRange(avail, hist, from, to)
	if reason != "" {
		return nil, reason, nil
	}
	s := newSummary(MethodSummaries, from, to)
	s.files = len(files)
	for _, f := range files {
		if err := srv.summaryContents(ctx, f, s); err != nil {
			return nil, "", err
		}
	}
	s.finish()
	return s, "", nil
}

// coverRange picks, for each stretch of [from, to) that a timeline of hist
// wrote, summaries of that timeline covering it without a gap. Summaries of
// other timelines are never used: after a promotion they may describe WAL
// this cluster never replayed.
func coverRange(avail []summaryFile, hist pg.History, from, to pg.LSN) ([]summaryFile, string) {
	var picked []summaryFile
	for _, span := range hist.Spans() {
		lo, hi := max(span.Begin, from), min(span.End, to)
		if lo >= hi {
			continue
		}
		var cands []summaryFile
		for _, f := range avail {
			if f.tli == span.Timeline && f.start < hi && f.end > lo {
				cands = append(cands, f)
			}
		}
		slices.SortFunc(cands, func(a, b summaryFile) int { return cmp.Compare(a.start, b.start) })
		cur := lo
		for _, f := range cands {
			if f.start > cur {
				break
			}
			cur = max(cur, f.end)
			picked = append(picked, f)
		}
		if cur < hi {
			return nil, fmt.Sprintf("no WAL summary of timeline %d covers %s..%s", span.Timeline, cur, hi)
		}
	}
	return picked, ""
}

// waitSummarized waits until the summarizer has summarized WAL up to lsn on
// timeline tli. It returns a reason when it does not get there in time.
func (s *server) waitSummarized(ctx context.Context, tli pg.TimelineID, lsn pg.LSN, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		s.mu.Lock()
		var stli int64
		var slsn string
		var pid *int32
		err := s.conn.QueryRow(ctx, "SELECT summarized_tli, summarized_lsn::text, summarizer_pid FROM pg_get_wal_summarizer_state()").Scan(&stli, &slsn, &pid)
		s.mu.Unlock()
		if err != nil {
			return "", fmt.Errorf("read the WAL summarizer state: %w", err)
		}
		got, err := pg.ParseLSN(slsn)
		if err != nil {
			return "", fmt.Errorf("WAL summarizer state: %w", err)
		}
		if got >= lsn && pg.TimelineID(stli) >= tli {
			return "", nil
		}
		if pid == nil {
			return fmt.Sprintf("the WAL summarizer is not running and has summarized only to %s", got), nil
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("the WAL summarizer reached only %s of %s within %s", got, lsn, wait), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *server) availableSummaries(ctx context.Context) ([]summaryFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rows, err := s.conn.Query(ctx, "SELECT tli, start_lsn::text, end_lsn::text FROM pg_available_wal_summaries()")
	if err != nil {
		return nil, fmt.Errorf("list WAL summaries: %w", err)
	}
	defer rows.Close()
	var out []summaryFile
	for rows.Next() {
		var tli int64
		var a, b string
		if err := rows.Scan(&tli, &a, &b); err != nil {
			return nil, fmt.Errorf("list WAL summaries: %w", err)
		}
		start, err1 := pg.ParseLSN(a)
		end, err2 := pg.ParseLSN(b)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("list WAL summaries: bad LSN %q or %q", a, b)
		}
		out = append(out, summaryFile{tli: pg.TimelineID(tli), start: start, end: end})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list WAL summaries: %w", err)
	}
	return out, nil
}

// summaryContents adds the block references of one summary file to sum.
func (s *server) summaryContents(ctx context.Context, f summaryFile, sum *summary) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rows, err := s.conn.Query(ctx, `SELECT relfilenode, reltablespace, reldatabase, relforknumber, relblocknumber, is_limit_block
FROM pg_wal_summary_contents($1, $2::text::pg_lsn, $3::text::pg_lsn)`, int64(f.tli), f.start.String(), f.end.String())
	if err != nil {
		return fmt.Errorf("read WAL summary %d %s..%s: %w", f.tli, f.start, f.end, err)
	}
	defer rows.Close()
	for rows.Next() {
		var rel, spc, db uint32
		var fork int16
		var blk int64
		var limit bool
		if err := rows.Scan(&rel, &spc, &db, &fork, &blk, &limit); err != nil {
			return fmt.Errorf("read WAL summary %d %s..%s: %w", f.tli, f.start, f.end, err)
		}
		k := relKey{spc: spc, db: db, rel: rel, fork: pg.Fork(fork)}
		b := uint32(min(blk, math.MaxUint32-1))
		if limit {
			sum.setLimit(k, b)
			continue
		}
		sum.addBlock(k, b)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read WAL summary %d %s..%s: %w", f.tli, f.start, f.end, err)
	}
	return nil
}
