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
type relChanges struct {
	limit  uint32
	blocks []uint32 // relation block numbers; blocks[:sorted] sorted and unique
	sorted int
	scan   bool
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
	rc.blocks = append(rc.blocks, b)
	s.blocks++
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
	rc.blocks = append(rc.blocks, blocks...)
	s.blocks += len(blocks)
	if len(rc.blocks) >= 2*rc.sorted+1024 {
		s.compact(rc)
	}
}

// setLimit notes that fork k was cut to n blocks (0: created or removed).
func (s *summary) setLimit(k relKey, n uint32) {
	rc := s.rel(k)
	rc.limit = min(rc.limit, n)
}

// compact sorts rc's blocks and drops repeats; when the summary then holds
// more than maxSummaryBlocks, the forks with the most blocks are left to
// the LSN scan until it does not.
func (s *summary) compact(rc *relChanges) {
	before := len(rc.blocks)
	slices.Sort(rc.blocks)
	rc.blocks = slices.Compact(rc.blocks)
	rc.sorted = len(rc.blocks)
	s.blocks -= before - len(rc.blocks)
	for s.blocks > maxSummaryBlocks {
		var big *relChanges
		for _, r := range s.rels {
			if !r.scan && (big == nil || len(r.blocks) > len(big.blocks)) {
				big = r
			}
		}
		if big == nil {
			return
		}
		s.blocks -= len(big.blocks)
		big.blocks, big.sorted, big.scan = nil, 0, true
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
// pages relative to the file.
type fileChanges struct {
	pages []uint32 // sorted
	limit uint32   // pages at or past it are changed; noLimit for none
	scan  bool     // too many to list: compare every page's LSN
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
	fc := fileChanges{limit: noLimit, scan: rc.scan}
	switch {
	case uint64(rc.limit) <= lo:
		fc.limit = 0
	case uint64(rc.limit) < hi:
		fc.limit = uint32(uint64(rc.limit) - lo)
	}
	i, _ := slices.BinarySearch(rc.blocks, uint32(min(lo, math.MaxUint32)))
	for ; i < len(rc.blocks) && uint64(rc.blocks[i]) < hi; i++ {
		fc.pages = append(fc.pages, uint32(uint64(rc.blocks[i])-lo))
	}
	return fc
}

// anyChanged reports whether a page of [p0, p1) changed.
func (fc *fileChanges) anyChanged(p0, p1 uint32) bool {
	if p1 > fc.limit {
		return true
	}
	i, _ := slices.BinarySearch(fc.pages, p0)
	return i < len(fc.pages) && fc.pages[i] < p1
}

// changed reports whether page p of the file is in the summary.
func (fc *fileChanges) changed(p uint32) bool {
	if p >= fc.limit {
		return true
	}
	_, ok := slices.BinarySearch(fc.pages, p)
	return ok
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
