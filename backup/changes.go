package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// changes is how a backup finds what changed.
type changes struct {
	method   string
	fallback string
	parent   *repo.Snapshot // the incremental's parent; nil for a full backup
	sum      *summary
	sources  []ChangeSource
}

// changeDetection picks the method: a full capture without a parent or
// with --full; else summaries of the WAL since the parent's start: the
// block summaries archiving wrote beside the WAL, and PostgreSQL 17's own
// with summarize_wal on, whichever of those that covers the range reads
// fewer pages; else page LSNs.
func (b *run) changeDetection(ctx context.Context, ref *repo.Snapshot, why string, hist pg.History, start pg.LSN) (changes, error) {
	opts, srv := &b.opts, b.srv
	switch {
	case ref == nil:
		return changes{method: MethodFull, fallback: why}, nil
	case opts.Full:
		return changes{method: MethodFull, fallback: "--full"}, nil
	case opts.NoWALSummary:
		return changes{method: MethodLSNScan, parent: ref, fallback: "summaries not wanted"}, nil
	}
	b.setPhase(PhaseChanges)
	from := pg.LSN(ref.StartLSN)
	var cands []*summary
	ch := changes{parent: ref}
	consider := func(method string, s *summary, reason string) {
		if s == nil {
			ch.sources = append(ch.sources, ChangeSource{Method: method, Reason: reason})
			return
		}
		cands = append(cands, s)
		ch.sources = append(ch.sources, ChangeSource{Method: method, Pages: b.estimatePages(s), Summaries: s.files})
	}
	if sr, ok := opts.WAL.(summaryReader); ok {
		s, reason, err := loadBlockSummaries(ctx, sr, blockSummaryRange{cluster: srv.SystemID, hist: hist, from: from, to: start,
			segSize: uint32(srv.WALSegSize), major: srv.Major, pgwal: filepath.Join(opts.PGData, "pg_wal")})
		if err != nil {
			return changes{}, err
		}
		consider(MethodBlockSummaries, s, reason)
	} else {
		consider(MethodBlockSummaries, nil, "no WAL archive to read block summaries from")
	}
	switch {
	case !pg.HasWALSummaries(srv.Major), opts.noPGSummaries:
	case !srv.SummarizeWAL:
		consider(MethodSummaries, nil, "summarize_wal is off")
	default:
		s, reason, err := loadSummary(ctx, srv, hist, from, start, opts.SummaryWait)
		if err != nil {
			return changes{}, err
		}
		consider(MethodSummaries, s, reason)
	}
	if len(cands) == 0 {
		var why []string
		for _, s := range ch.sources {
			why = append(why, s.Method+": "+s.Reason)
		}
		ch.method, ch.fallback = MethodLSNScan, strings.Join(why, "; ")
		return ch, nil
	}
	best := 0
	for i := range ch.sources {
		if ch.sources[i].Reason == "" && (ch.sources[best].Reason != "" || ch.sources[i].Pages < ch.sources[best].Pages) {
			best = i
		}
	}
	ch.sources[best].Used = true
	for _, s := range cands {
		if s.source == ch.sources[best].Method {
			ch.sum = s
		}
	}
	ch.method = ch.sum.source
	if opts.summaryForced != nil {
		opts.summaryForced(ch.sum)
	}
	return ch, nil
}

// estimatePages is how many pages summary s makes a backup read: the
// blocks it lists, the parts of forks past their truncation and of forks
// left to the LSN scan, and everything in directories made anew. Files are
// only stat'ed.
func (b *run) estimatePages(s *summary) int64 {
	bs := int64(b.srv.BlockSize)
	spcDir := pg.TablespaceDir(b.srv.Major, b.ctl.CatalogVersion)
	dir := func(spc, db uint32) string {
		switch spc {
		case pg.GlobalTablespaceOID:
			return filepath.Join(b.opts.PGData, "global")
		case pg.DefaultTablespaceOID:
			return filepath.Join(b.opts.PGData, "base", fmt.Sprint(db))
		}
		d := filepath.Join(b.opts.PGData, "pg_tblspc", fmt.Sprint(spc), spcDir)
		if db != 0 {
			d = filepath.Join(d, fmt.Sprint(db))
		}
		return d
	}
	dirPages := func(d string) int64 {
		var n int64
		filepath.WalkDir(d, func(_ string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if fi, err := e.Info(); err == nil {
					n += fi.Size() / bs
				}
			}
			return nil
		})
		return n
	}
	n := int64(s.blocks)
	for k, rc := range s.rels {
		if rc.limit == noLimit && !rc.scan {
			continue
		}
		if k.rel == 0 {
			if rc.limit == 0 {
				n += dirPages(dir(k.spc, k.db))
			}
			continue
		}
		rf := pg.RelFile{Tablespace: k.spc, Database: k.db, RelNumber: k.rel, Fork: k.fork}
		var pages int64
		for seg := uint32(0); ; seg++ {
			rf.Segment = seg
			fi, err := os.Stat(filepath.Join(dir(k.spc, k.db), rf.FileName()))
			if err != nil {
				break
			}
			pages += fi.Size() / bs
		}
		switch {
		case rc.scan:
			n += pages
		case pages > int64(rc.limit):
			n += pages - int64(rc.limit)
		}
	}
	for spc := range s.spcs {
		n += dirPages(dir(spc, 0))
	}
	return n
}
