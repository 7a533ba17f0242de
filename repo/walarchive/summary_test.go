package walarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

var (
	sumRelA = pg.RelFileLocator{Spc: 1663, DB: 5, Rel: 16384}
	sumRelB = pg.RelFileLocator{Spc: 1663, DB: 5, Rel: 16390}
	sumT0   = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
)

// effectSet is what a stretch of WAL did, in a comparable form.
type effectSet struct {
	blocks  map[string]bool   // "rel fork blk"
	limits  map[string]uint32 // "rel fork" -> smallest length
	dbs     map[DBDir]bool
	spcs    map[uint32]bool
	unknown bool
}

func newEffectSet() *effectSet {
	return &effectSet{blocks: map[string]bool{}, limits: map[string]uint32{}, dbs: map[DBDir]bool{}, spcs: map[uint32]bool{}}
}

func (e *effectSet) add(x pg.WALEffect) {
	key := fmt.Sprintf("%s %s", x.Rel, x.Fork)
	switch x.Kind {
	case pg.EffectBlock:
		e.blocks[fmt.Sprintf("%s %d", key, x.Block)] = true
	case pg.EffectTruncate:
		if l, ok := e.limits[key]; !ok || x.Block < l {
			e.limits[key] = x.Block
		}
	case pg.EffectDatabase:
		e.dbs[DBDir{Spc: x.Rel.Spc, DB: x.Rel.DB}] = true
	case pg.EffectTablespace:
		e.spcs[x.Rel.Spc] = true
	default:
		e.unknown = true
	}
}

func (e *effectSet) merge(s *Summary) {
	for _, t := range s.Tablespaces {
		e.spcs[t] = true
	}
	for _, d := range s.Databases {
		e.dbs[d] = true
	}
	for _, r := range s.Rels {
		key := fmt.Sprintf("%s %s", r.Rel, r.Fork)
		if r.Limit != NoLimit {
			if l, ok := e.limits[key]; !ok || r.Limit < l {
				e.limits[key] = r.Limit
			}
		}
		for _, b := range r.Blocks {
			e.blocks[fmt.Sprintf("%s %d", key, b)] = true
		}
	}
	e.unknown = e.unknown || s.Unknown
}

// walWithBoundaries writes segments 3 to 6 with records placed on the
// boundaries a summary must handle: a heap record whose headers are cut by
// the end of segment 3, an XLOG_SMGR_CREATE (main data needed) spanning
// 4 -> 5, and a record longer than a whole segment spanning 5 -> 6 -> 7.
func walWithBoundaries(major int) *pgtest.SegmentWriter {
	w := pgtest.NewWALWriter(major, 1, 3, testSegSize, testSys)
	rng := rand.New(rand.NewPCG(7, uint64(major)))
	heap := func() {
		var blocks []pgtest.Block
		for j := range 1 + rng.IntN(3) {
			rel := sumRelA
			if j == 1 {
				rel = sumRelB
			}
			blocks = append(blocks, pgtest.Block{Rel: rel, Fork: pg.Fork(rng.IntN(3)), Block: rng.Uint32N(5000), Data: rng.IntN(80)})
		}
		w.BlockRecord(pg.RMHeap, 0, blocks, []byte{1, 2, 3})
	}
	for range 2000 {
		heap()
	}
	w.Fill(pg.SegNo(4).Start(testSegSize) - 8)
	many := make([]pgtest.Block, 30)
	for i := range many {
		many[i] = pgtest.Block{Rel: pg.RelFileLocator{Spc: 1663, DB: 5, Rel: uint32(20000 + i)}, Block: uint32(i)}
	}
	w.BlockRecord(pg.RMHeap, 0, many, nil) // headers cut by the boundary
	for range 2000 {
		heap()
	}
	w.Fill(pg.SegNo(5).Start(testSegSize) - 12)
	create := make([]byte, 16)
	for i, v := range []uint32{1663, 5, 30000, 0} {
		create[4*i], create[4*i+1], create[4*i+2], create[4*i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	w.Record(pg.RMSmgr, pg.SmgrCreate|pg.XLRSpecialRelUpdate, create)
	w.Commit(sumT0)
	big := make([]pgtest.Block, 32)
	for i := range big {
		big[i] = pgtest.Block{Rel: sumRelB, Block: uint32(9000 + i), Image: 8192}
	}
	w.Fill(pg.SegNo(6).Start(testSegSize) - 100000)
	w.BlockRecord(pg.RMXLOG, pg.XLOGFPI, big, nil)
	w.BlockRecord(pg.RMXLOG, pg.XLOGFPI, big, make([]byte, 1100000)) // spans all of segment 6
	for range 200 {
		heap()
	}
	w.Commit(sumT0)
	return w
}

// directEffects reads all the bytes with one reader and collects the
// effects of the records that begin in segments [first, last].
func directEffects(t *testing.T, b []byte, first, last pg.SegNo) *effectSet {
	t.Helper()
	e := newEffectSet()
	r, err := pg.NewWALReader(pg.SegNo(3).Start(testSegSize), testSegSize, pgtest.WALPageSize)
	if err != nil {
		t.Fatal(err)
	}
	r.OnRecord = func(rec *pg.WALRecord) error {
		if s := rec.LSN.Segment(testSegSize); s >= first && s <= last {
			pg.WALRecordEffects(rec, r.Major(), e.add)
		}
		return nil
	}
	if _, err := r.Write(b); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSummariesJoin archives segments with records across their
// boundaries and checks that their summaries, joined, say exactly what
// reading all the WAL at once says.
func TestSummariesJoin(t *testing.T) {
	for _, major := range []int{14, 16} {
		t.Run(fmt.Sprint(major), func(t *testing.T) {
			fx := newRepo(t, mem.New())
			ctx := context.Background()
			w := walWithBoundaries(major)
			segs := w.Segments()
			var sums []*Summary
			for i, b := range segs {
				seg := pg.SegNo(3 + i)
				res := mustPut(t, fx.arch, segName(1, seg), b)
				if res.Summary == "" || res.SummaryErr != nil {
					t.Fatalf("segment %d: summary %q, %v", seg, res.Summary, res.SummaryErr)
				}
				s, err := fx.arch.ReadSummary(ctx, testSys, 1, seg, testSegSize)
				if err != nil {
					t.Fatal(err)
				}
				sums = append(sums, s)
			}
			if !sums[0].Complete || sums[0].PendTotal == 0 || sums[0].PendDone {
				t.Errorf("segment 3 should leave its last record pending with its head: %+v", sums[0].PendTotal)
			}
			if sums[1].PendTotal == 0 || sums[1].PendDone {
				t.Errorf("segment 4 should leave the XLOG_SMGR_CREATE pending")
			}
			if sums[3].Records != 0 || sums[3].ContTotal == 0 {
				t.Errorf("segment 6 is one record's continuation: %d records, continuation %d", sums[3].Records, sums[3].ContTotal)
			}
			last := pg.SegNo(3 + len(segs) - 2) // the last one's pending record is not complete
			got := newEffectSet()
			for i, s := range sums[:len(sums)-1] {
				got.merge(s)
				if i+1 < len(sums) {
					if _, ok := Join(s, sums[i+1], got.add); !ok && s.Segment+1 <= last {
						// A record longer than a segment: its head in 5,
						// whose effects are its blocks, is settled already.
						t.Fatalf("join %s and %s failed", s.Name(), sums[i+1].Name())
					}
				}
			}
			want := directEffects(t, w.Bytes(), 3, last)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("summaries joined:\n%d blocks %v limits %v\nreading all:\n%d blocks %v limits %v",
					len(got.blocks), got.limits, got.dbs, len(want.blocks), want.limits, want.dbs)
				for k := range want.blocks {
					if !got.blocks[k] {
						t.Errorf("missing block %s", k)
					}
				}
			}
		})
	}
}

// TestJoinOverwritten: a pending record whose continuation was overwritten
// after a crash is dropped; a next segment that neither continues it nor
// says it was overwritten cannot be joined.
func TestJoinOverwritten(t *testing.T) {
	// Cut in the next segment (part of the continuation was written),
	// and right at the boundary.
	for _, written := range []int{9000, 2000 - pg.WALShortPageHeaderSize} {
		w := pgtest.NewWALWriter(15, 1, 3, testSegSize, testSys)
		w.Fill(pg.SegNo(4).Start(testSegSize) - 2000)
		w.AbortRecord(30000, written)
		after := w.Commit(sumT0)
		w.Fill(pg.SegNo(5).Start(testSegSize))
		w.Commit(sumT0)
		segs := w.Segments()
		a, _ := SummarizeSegment(1, 3, testSegSize, bytes.NewReader(segs[0]), 0)
		b, _ := SummarizeSegment(1, 4, testSegSize, bytes.NewReader(segs[1]), 0)
		if a.PendTotal != 30000 || !b.Complete || b.Records == 0 || after.Segment(testSegSize) != 4 {
			t.Fatalf("pending %d; next segment complete %v (%s) with %d records", a.PendTotal, b.Complete, b.Reason, b.Records)
		}
		dropped, ok := Join(a, b, func(pg.WALEffect) { t.Error("effect of a dropped record") })
		if !dropped || !ok {
			t.Fatalf("%d written: dropped %v ok %v", written, dropped, ok)
		}
	}
}

func TestSummaryRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 50 {
		s := &Summary{Timeline: pg.TimelineID(1 + rng.IntN(5)), Segment: pg.SegNo(rng.Uint64N(1 << 40)), SegSize: testSegSize,
			Major: 13 + rng.IntN(6), Complete: rng.IntN(2) == 0, End: pg.LSN(rng.Uint64()), Records: rng.Int64N(1e6),
			Minimal: rng.IntN(5) == 0, Unknown: rng.IntN(5) == 0, UnknownAt: pg.LSN(rng.Uint64()), FirstPageInfo: uint16(rng.IntN(16))}
		s.Cont = make([]byte, rng.IntN(contKeep))
		s.ContTotal = uint32(len(s.Cont) + rng.IntN(100))
		if rng.IntN(2) == 0 {
			s.PendLSN = s.Segment.Start(testSegSize) + pg.LSN(rng.IntN(testSegSize))
			s.PendTotal = 100 + uint32(rng.IntN(100000))
			s.PendInSeg = 1 + uint32(rng.IntN(int(s.PendTotal-1)))
			s.Pend = make([]byte, min(int(s.PendInSeg), pendKeep))
		}
		if i%3 == 0 {
			s.Reason = "end of WAL"
		}
		for range rng.IntN(3) {
			s.Tablespaces = append(s.Tablespaces, rng.Uint32())
		}
		for range rng.IntN(3) {
			s.Databases = append(s.Databases, DBDir{rng.Uint32(), rng.Uint32()})
		}
		rels := map[RelFork]*RelChanges{}
		for range rng.IntN(20) {
			k := RelFork{Rel: pg.RelFileLocator{Spc: 1663, DB: rng.Uint32N(3), Rel: rng.Uint32N(100)}, Fork: pg.Fork(rng.IntN(4))}
			rc := &RelChanges{RelFork: k, Limit: NoLimit}
			if rng.IntN(3) == 0 {
				rc.Limit = rng.Uint32N(1000)
			}
			set := map[uint32]bool{}
			for range rng.IntN(200) {
				set[rng.Uint32N(1<<rng.IntN(32))] = true
			}
			rc.Blocks = slices.Sorted(maps.Keys(set))
			rels[k] = rc
		}
		for _, rc := range rels {
			s.Rels = append(s.Rels, *rc)
		}
		slices.SortFunc(s.Rels, func(a, b RelChanges) int { return compareRelFork(a.RelFork, b.RelFork) })
		b := s.Encode()
		got, err := DecodeSummary(b)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !bytes.Equal(got.Encode(), b) {
			t.Fatalf("summary %d does not encode back to the same bytes", i)
		}
		for j := range s.Rels {
			if !slices.Equal(got.Rels[j].Blocks, s.Rels[j].Blocks) || got.Rels[j].RelFork != s.Rels[j].RelFork || got.Rels[j].Limit != s.Rels[j].Limit {
				t.Fatalf("relation %d: %+v, want %+v", j, got.Rels[j], s.Rels[j])
			}
		}
	}
}

// TestSummaryObjects: summaries are listed beside their segments (not as
// foreign objects), a damaged one fails its MAC, a missing one is written
// again by a second push of its segment, and NoSummaries writes none.
func TestSummaryObjects(t *testing.T) {
	ctx := context.Background()
	store := mem.New()
	fx := newRepo(t, store)
	w := pgtest.NewWALWriter(15, 1, 3, testSegSize, testSys)
	w.Commit(sumT0)
	w.Fill(pg.SegNo(5).Start(testSegSize))
	w.Commit(sumT0)
	segs := w.Segments()
	for i := range 2 {
		mustPut(t, fx.arch, segName(1, pg.SegNo(3+i)), segs[i])
	}
	l, err := fx.arch.List(ctx, testSys)
	if err != nil {
		t.Fatal(err)
	}
	tl := l.Timeline(1)
	if len(l.Foreign) != 0 || tl == nil || !tl.HasSummary(3) || !tl.HasSummary(4) || tl.HasSummary(5) || tl.Count() != 2 {
		t.Fatalf("listing: foreign %v, timeline %+v", l.Foreign, tl)
	}
	ents, err := fx.arch.ListDir(ctx, testSys, segName(1, 3)[:16])
	if err != nil || len(ents) != 2 {
		t.Fatalf("ListDir: %v %+v", err, ents)
	}

	key := SummaryKey(testSys, 1, 3, testSegSize)
	rc, _ := store.Get(ctx, key)
	b, _ := io.ReadAll(rc)
	rc.Close()
	b[len(b)-3] ^= 1
	store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
	if _, err := fx.arch.ReadSummary(ctx, testSys, 1, 3, testSegSize); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged summary: %v", err)
	}
	store.Delete(ctx, key)
	if _, err := fx.arch.ReadSummary(ctx, testSys, 1, 3, testSegSize); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("deleted summary: %v", err)
	}
	if res := mustPut(t, fx.arch, segName(1, 3), segs[0]); res.Created || res.Summary != key {
		t.Fatalf("second push: %+v", res)
	}
	s, err := fx.arch.ReadSummary(ctx, testSys, 1, 3, testSegSize)
	if err != nil || !s.Complete || s.Records == 0 {
		t.Fatalf("summary after the second push: %v %+v", err, s)
	}

	plain := New(store, fx.repo, fx.repo.WALMACKey(), Options{NoSummaries: true})
	if res := mustPut(t, plain, segName(1, 5), segs[2]); res.Summary != "" {
		t.Fatalf("NoSummaries wrote %s", res.Summary)
	}
	if _, err := fx.arch.ReadSummary(ctx, testSys, 1, 5, testSegSize); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("summary of a segment archived without: %v", err)
	}
}

// FuzzDecodeSummary: any bytes decode or fail; what decodes encodes back
// to the same bytes.
func FuzzDecodeSummary(f *testing.F) {
	w := walWithBoundaries(15)
	s, err := SummarizeSegment(1, 3, testSegSize, bytes.NewReader(w.Segments()[0]), 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSummary(b)
		if err != nil {
			return
		}
		if !bytes.Equal(s.Encode(), b) {
			t.Fatal("decoded summary encodes to other bytes")
		}
		Join(s, s, func(pg.WALEffect) {})
	})
}
