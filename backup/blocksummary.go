package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// summaryReader is what a backup needs of the WAL archive to use the block
// summaries archiving wrote beside each segment: *walarchive.Archive.
type summaryReader interface {
	ReadSummary(ctx context.Context, cluster uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32) (*walarchive.Summary, error)
}

// summaryFetchers is how many block summaries are read at once: each is one
// GET of a few KiB to a few hundred, so latency, not bandwidth, bounds them.
const summaryFetchers = 16

// blockSummaryRange says what WAL a backup needs summarized: the records
// that begin in [from, to) along hist, in segments of segSize bytes, for a
// server of version major. pgwal is the data directory's pg_wal, where the
// segments not archived yet (the one holding to, and any the archiver has
// not reached) are read and summarized on the spot.
type blockSummaryRange struct {
	cluster  uint64
	hist     pg.History
	from, to pg.LSN
	segSize  uint32
	major    int
	pgwal    string
}

// loadBlockSummaries collects tidemark's block summaries of the segments
// that hold the records of [from, to) along the timeline history, joining
// the records that span two segments (walarchive.Join), into one summary.
// It returns nil and the reason when they do not make an unbroken run: a
// segment without a summary (archived by another tool, or not at all), a
// summary that fails its MAC or its format, WAL that ends early, wal_level
// minimal, a record whose effects cannot be told, a timeline the history
// does not lead through.
func loadBlockSummaries(ctx context.Context, sr summaryReader, br blockSummaryRange) (*summary, string, error) {
	if br.to <= br.from {
		return newSummary(MethodBlockSummaries, br.from, br.to), "", nil
	}
	if _, ok := br.hist.End(br.hist.TimelineOf(br.from)); !ok {
		return nil, fmt.Sprintf("the parent's start %s is on no timeline of timeline %d's history", br.from, br.hist.Timeline), nil
	}
	first, last := br.from.Segment(br.segSize), (br.to - 1).Segment(br.segSize)
	n := int(last-first) + 1
	type result struct {
		s      *walarchive.Summary
		reason string
		err    error
	}
	// Summaries are fetched in parallel and merged in segment order, so
	// that a record spanning two segments is joined as soon as both are
	// there and at most summaryFetchers summaries wait in memory.
	results := make([]chan result, n)
	for i := range results {
		results[i] = make(chan result, 1)
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: fetchers and the producer see it
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, summaryFetchers)
	wg.Go(func() {
		for i := range n {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			seg := first + pg.SegNo(i)
			wg.Go(func() {
				s, reason, err := br.fetch(ctx, sr, seg)
				results[i] <- result{s, reason, err}
			})
		}
	})
	sum := newSummary(MethodBlockSummaries, br.from, br.to)
	var prev *walarchive.Summary
	for i := range n {
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
		<-sem
		if r.err != nil || r.reason != "" {
			return nil, r.reason, r.err
		}
		s := r.s
		if reason := br.check(s, i == n-1); reason != "" {
			return nil, reason, nil
		}
		if prev != nil && prev.PendTotal > 0 && prev.PendLSN < br.to {
			var unknown bool
			_, ok := walarchive.Join(prev, s, func(e pg.WALEffect) { unknown = unknown || !sum.add(e) })
			if !ok || unknown {
				return nil, fmt.Sprintf("the effects of the record at %s, which spans segments %s and %s, cannot be told from their summaries",
					prev.PendLSN, prev.Name(), s.Name()), nil
			}
		}
		sum.merge(s)
		sum.files++
		// Only the pending record's bytes are needed from here on.
		prev = &walarchive.Summary{Timeline: s.Timeline, Segment: s.Segment, SegSize: s.SegSize, Major: s.Major,
			PendLSN: s.PendLSN, PendTotal: s.PendTotal, PendInSeg: s.PendInSeg, PendDone: s.PendDone, Pend: s.Pend}
	}
	if prev != nil && prev.PendTotal > 0 && !prev.PendDone && prev.PendLSN < br.to {
		return nil, fmt.Sprintf("the record at %s continues past segment %s, beyond the backup's start %s", prev.PendLSN, prev.Name(), br.to), nil
	}
	sum.finish()
	return sum, "", nil
}

// fetch returns the block summary of segment seg: the archived one, else
// one made from pg_wal's copy when the segment is not archived yet.
func (br *blockSummaryRange) fetch(ctx context.Context, sr summaryReader, seg pg.SegNo) (*walarchive.Summary, string, error) {
	tli := br.hist.SegmentTimeline(seg, br.segSize)
	name := pg.SegmentName(tli, seg, br.segSize)
	s, err := sr.ReadSummary(ctx, br.cluster, tli, seg, br.segSize)
	switch {
	case err == nil:
		return s, "", nil
	case errors.Is(err, walarchive.ErrCorrupt):
		return nil, fmt.Sprintf("the block summary of %s is not usable: %v", name, err), nil
	case !errors.Is(err, walarchive.ErrNotArchived):
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		return nil, fmt.Sprintf("the block summary of %s could not be read: %v", name, err), nil
	}
	// Not archived with a summary: PostgreSQL keeps a segment in pg_wal
	// until it is archived, so one the archiver has not reached is there.
	f, err := os.Open(filepath.Join(br.pgwal, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("segment %s has no block summary (archived by a tool that writes none?) and is not in pg_wal", name), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", f.Name(), err)
	}
	defer f.Close()
	s, err = walarchive.SummarizeSegment(tli, seg, br.segSize, f, br.to)
	if err != nil {
		return nil, fmt.Sprintf("segment %s in pg_wal: %v", name, err), nil
	}
	return s, "", nil
}

// check says why summary s cannot serve the range, or "". The last segment
// may be one PostgreSQL is still writing: its valid WAL must reach to.
func (br *blockSummaryRange) check(s *walarchive.Summary, last bool) string {
	switch {
	case s.Major != br.major:
		return fmt.Sprintf("segment %s holds WAL of PostgreSQL %d, the server is %d", s.Name(), s.Major, br.major)
	case s.Minimal:
		return fmt.Sprintf("segment %s holds WAL written with wal_level = minimal", s.Name())
	case s.Unknown && s.UnknownAt >= br.from && s.UnknownAt < br.to:
		return fmt.Sprintf("the record at %s in %s changes files in a way its WAL does not tell", s.UnknownAt, s.Name())
	case !s.Complete && (!last || s.End < br.to):
		return fmt.Sprintf("the valid WAL of segment %s ends at %s: %s", s.Name(), s.End, s.Reason)
	}
	return ""
}

// add applies one effect to the summary; false for an effect that makes
// the WAL unusable.
func (s *summary) add(e pg.WALEffect) bool {
	k := relKey{spc: e.Rel.Spc, db: e.Rel.DB, rel: e.Rel.Rel, fork: e.Fork}
	switch e.Kind {
	case pg.EffectBlock:
		s.addBlock(k, e.Block)
	case pg.EffectTruncate:
		s.setLimit(k, e.Block)
	case pg.EffectDatabase:
		s.setLimit(relKey{spc: e.Rel.Spc, db: e.Rel.DB, fork: pg.ForkMain}, 0)
	case pg.EffectTablespace:
		s.spcs[e.Rel.Spc] = true
	default:
		return false
	}
	return true
}

// merge adds what a block summary says.
func (s *summary) merge(b *walarchive.Summary) {
	for _, t := range b.Tablespaces {
		s.spcs[t] = true
	}
	for _, d := range b.Databases {
		s.setLimit(relKey{spc: d.Spc, db: d.DB, fork: pg.ForkMain}, 0)
	}
	for i := range b.Rels {
		r := &b.Rels[i]
		k := relKey{spc: r.Rel.Spc, db: r.Rel.DB, rel: r.Rel.Rel, fork: r.Fork}
		if r.Limit != walarchive.NoLimit {
			s.setLimit(k, r.Limit)
		}
		s.addBlocks(k, r.Blocks)
	}
}
