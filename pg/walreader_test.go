package pg_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
)

const testSegSize = 1 << 20

// readAll feeds b to a new reader in pieces of the given sizes (cycled) and
// returns the records it decoded: LSN, rmgr, info, block references.
type gotRecord struct {
	lsn    pg.LSN
	rmid   uint8
	info   uint8
	blocks []pg.WALBlockRef
	main   []byte
}

func readAll(t *testing.T, start pg.LSN, b []byte, pieces ...int) ([]gotRecord, *pg.WALReader) {
	t.Helper()
	r, err := pg.NewWALReader(start, testSegSize, pgtest.WALPageSize)
	if err != nil {
		t.Fatal(err)
	}
	var out []gotRecord
	r.OnRecord = func(rec *pg.WALRecord) error {
		out = append(out, gotRecord{lsn: rec.LSN, rmid: rec.RMID, info: rec.Info,
			blocks: slices.Clone(rec.Blocks), main: bytes.Clone(rec.Main)})
		return nil
	}
	if len(pieces) == 0 {
		pieces = []int{len(b)}
	}
	for i := 0; len(b) > 0; i++ {
		n := min(pieces[i%len(pieces)], len(b))
		if _, err := r.Write(b[:n]); err != nil {
			t.Fatal(err)
		}
		b = b[n:]
	}
	return out, r
}

var (
	relA = pg.RelFileLocator{Spc: 1663, DB: 5, Rel: 16384}
	relB = pg.RelFileLocator{Spc: 1663, DB: 5, Rel: 16390}
)

// TestWALReaderAcrossSegments writes records of every shape across page
// and segment boundaries and reads them back fed in odd pieces.
func TestWALReaderAcrossSegments(t *testing.T) {
	for _, major := range []int{13, 14, 15, 16, 17, 18} {
		w := pgtest.NewWALWriter(major, 1, 3, testSegSize, 42)
		var want []pg.LSN
		rng := rand.New(rand.NewPCG(1, uint64(major)))
		for w.Pos() < pg.SegNo(5).Start(testSegSize) {
			var blocks []pgtest.Block
			for j := range rng.IntN(4) {
				rel := relA
				if j == 2 {
					rel = relB
				}
				b := pgtest.Block{Rel: rel, Fork: pg.Fork(rng.IntN(3)), Block: rng.Uint32N(1000), Data: rng.IntN(100)}
				if rng.IntN(5) == 0 {
					b.Image = []int{8192, 3000}[rng.IntN(2)]
				}
				blocks = append(blocks, b)
			}
			main := bytes.Repeat([]byte{9}, rng.IntN(300))
			want = append(want, w.BlockRecord(pg.RMHeap, 0x10, blocks, main))
		}
		segs := w.Bytes()[:2*testSegSize+testSegSize] // segments 3, 4 and the start of 5
		got, r := readAll(t, pg.SegNo(3).Start(testSegSize), segs, 1000, 8192, 70000, 3)
		ended, at, why := r.Ended()
		if !ended {
			t.Fatalf("PG%d: reader did not see the end of the WAL", major)
		}
		var lsns []pg.LSN
		for _, g := range got {
			lsns = append(lsns, g.lsn)
		}
		if !slices.Equal(lsns, want[:len(lsns)]) || len(lsns) < len(want)-1 {
			t.Fatalf("PG%d: read %d records, wrote %d (end at %s: %s)", major, len(lsns), len(want), at, why)
		}
		for _, g := range got {
			if g.rmid != pg.RMHeap || len(g.blocks) > 3 {
				t.Fatalf("PG%d: record at %s: %+v", major, g.lsn, g)
			}
		}
	}
}

// TestWALReaderContinuation starts in a segment whose first page continues
// a record of the previous one: the bytes are handed to OnContinuation,
// and the last record, cut by the end of the input, is Pending.
func TestWALReaderContinuation(t *testing.T) {
	w := pgtest.NewWALWriter(16, 1, 7, testSegSize, 42)
	w.Fill(pg.SegNo(8).Start(testSegSize) - 5000)
	big := bytes.Repeat([]byte{3}, 20000)
	spanning := w.Record(pg.RMXLOG, pg.XLOGNoop, big)
	after := w.Record(pg.RMXact, pg.XactCommit, make([]byte, 8))
	seg8 := w.Segments()[1]
	var cont []byte
	var total uint32
	r, err := pg.NewWALReader(pg.SegNo(8).Start(testSegSize), testSegSize, pgtest.WALPageSize)
	if err != nil {
		t.Fatal(err)
	}
	var lsns []pg.LSN
	r.OnContinuation = func(b []byte, off, tot uint32) {
		if off != uint32(len(cont)) {
			t.Fatalf("continuation at %d, have %d", off, len(cont))
		}
		cont, total = append(cont, b...), tot
	}
	r.OnRecord = func(rec *pg.WALRecord) error { lsns = append(lsns, rec.LSN); return nil }
	r.Write(seg8)
	if !slices.Equal(lsns, []pg.LSN{after}) {
		t.Fatalf("records %v, want %v", lsns, after)
	}
	if int(total) != len(cont) || total == 0 {
		t.Fatalf("continuation of %d bytes, total %d", len(cont), total)
	}
	// Segment 7 alone: the spanning record is pending with its head.
	r7, _ := pg.NewWALReader(pg.SegNo(7).Start(testSegSize), testSegSize, pgtest.WALPageSize)
	r7.Write(w.Segments()[0])
	lsn, tot, got, head, ok := r7.Pending()
	if !ok || lsn != spanning || int(tot) != len(head)+int(total) || int(got) != len(head) {
		t.Fatalf("pending %v %s %d %d, want %s and %d+%d", ok, lsn, tot, len(head), spanning, len(head), total)
	}
	// Head and continuation together are the record.
	rec := pg.WALRecord{LSN: lsn}
	if err := pg.DecodeWALRecord(append(slices.Clone(head), cont...), 16, &rec); err != nil || len(rec.Main) != len(big) {
		t.Fatalf("joined record: %v, %d bytes of main data", err, len(rec.Main))
	}
}

// TestWALReaderOverwrite drops a record whose continuation was overwritten
// after a crash (XLP_FIRST_IS_OVERWRITE_CONTRECORD) and goes on.
func TestWALReaderOverwrite(t *testing.T) {
	w := pgtest.NewWALWriter(15, 1, 2, testSegSize, 42)
	a := w.Commit(t0)
	w.AbortRecord(30000, 12000)
	b := w.Record(pg.RMXLOG, pg.XLOGOverwriteContrec, make([]byte, 16))
	c := w.Commit(t0)
	got, r := readAll(t, pg.SegNo(2).Start(testSegSize), w.Bytes(), 4096)
	var lsns []pg.LSN
	for _, g := range got {
		lsns = append(lsns, g.lsn)
	}
	if !slices.Equal(lsns, []pg.LSN{a, b, c}) {
		_, at, why := r.Ended()
		t.Fatalf("records %v, want %v (end %s: %s)", lsns, []pg.LSN{a, b, c}, at, why)
	}
}

// TestWALReaderSwitch skips the rest of a segment after XLOG_SWITCH and
// reads on in the next.
func TestWALReaderSwitch(t *testing.T) {
	w := pgtest.NewWALWriter(17, 1, 2, testSegSize, 42)
	a := w.Commit(t0)
	sw := w.Record(pg.RMXLOG, pg.XLOGSwitch, nil)
	b := w.Commit(t0)
	if b.Segment(testSegSize) != 3 {
		t.Fatalf("record after the switch at %s", b)
	}
	got, _ := readAll(t, pg.SegNo(2).Start(testSegSize), w.Bytes())
	if len(got) != 3 || got[0].lsn != a || got[1].lsn != sw || got[2].lsn != b {
		t.Fatalf("got %+v", got)
	}
}

// TestWALReaderEnds checks that what is not valid WAL ends the reader at
// the right place: a bad CRC, a wrong xl_prev, a recycled page.
func TestWALReaderEnds(t *testing.T) {
	w := pgtest.NewWALWriter(15, 1, 2, testSegSize, 42)
	a := w.Commit(t0)
	b := w.Record(pg.RMXLOG, pg.XLOGNoop, make([]byte, 20000))
	w.Commit(t0)
	seg := w.Bytes()
	off := int(b - pg.SegNo(2).Start(testSegSize))

	bad := bytes.Clone(seg)
	bad[off+100] ^= 1
	got, r := readAll(t, pg.SegNo(2).Start(testSegSize), bad)
	if ended, at, _ := r.Ended(); len(got) != 1 || got[0].lsn != a || !ended || at != b {
		t.Errorf("bad CRC: %d records, end at %s", len(got), at)
	}
	prev := bytes.Clone(seg)
	binary.LittleEndian.PutUint64(prev[off+8:], 12345)
	got, r = readAll(t, pg.SegNo(2).Start(testSegSize), prev)
	if _, at, why := r.Ended(); len(got) != 1 || at != b {
		t.Errorf("wrong xl_prev: %d records, end at %s (%s)", len(got), at, why)
	}
	recycled := bytes.Clone(seg)
	binary.LittleEndian.PutUint64(recycled[8192+8:], 99<<20)
	got, r = readAll(t, pg.SegNo(2).Start(testSegSize), recycled)
	if _, at, why := r.Ended(); len(got) != 1 || at != b {
		t.Errorf("recycled page: %d records, end at %s (%s)", len(got), at, why)
	}
}

// TestWALReaderKeep reads a record larger than Keep: its headers and CRC
// are checked, its main data is cut.
func TestWALReaderKeep(t *testing.T) {
	w := pgtest.NewWALWriter(18, 1, 2, testSegSize, 42)
	w.BlockRecord(pg.RMHeap, 0, []pgtest.Block{{Rel: relA, Block: 7, Image: 8192}}, make([]byte, 200000))
	r, _ := pg.NewWALReader(pg.SegNo(2).Start(testSegSize), testSegSize, pgtest.WALPageSize)
	r.Keep = 50000
	var n int
	r.OnRecord = func(rec *pg.WALRecord) error {
		n++
		if !rec.Cut || rec.MainLen != 200000 || len(rec.Main) != 50000-(int(rec.Len)-200000) || len(rec.Blocks) != 1 || rec.Blocks[0].Block != 7 {
			t.Errorf("cut record: cut %v, main %d of %d, blocks %+v", rec.Cut, len(rec.Main), rec.MainLen, rec.Blocks)
		}
		return nil
	}
	r.Write(w.Bytes())
	if n != 1 {
		t.Fatalf("%d records", n)
	}
}

func TestWALReaderCallbackError(t *testing.T) {
	w := pgtest.NewWALWriter(15, 1, 2, testSegSize, 42)
	w.Commit(t0)
	r, _ := pg.NewWALReader(pg.SegNo(2).Start(testSegSize), testSegSize, pgtest.WALPageSize)
	stop := errors.New("stop")
	r.OnRecord = func(*pg.WALRecord) error { return stop }
	if _, err := r.Write(w.Bytes()); !errors.Is(err, stop) {
		t.Fatalf("got %v", err)
	}
}

// TestWALRecordEffects checks what the records that change files without
// block references are read as, per version.
func TestWALRecordEffects(t *testing.T) {
	le := binary.LittleEndian
	u32 := func(vs ...uint32) []byte {
		var b []byte
		for _, v := range vs {
			b = le.AppendUint32(b, v)
		}
		return b
	}
	type tc struct {
		name  string
		major int
		rmid  uint8
		info  uint8
		main  []byte
		want  []pg.WALEffect
	}
	db := func(spc, d uint32) pg.WALEffect {
		return pg.WALEffect{Kind: pg.EffectDatabase, Rel: pg.RelFileLocator{Spc: spc, DB: d}}
	}
	trunc := func(f pg.Fork, b uint32) pg.WALEffect {
		return pg.WALEffect{Kind: pg.EffectTruncate, Rel: relA, Fork: f, Block: b}
	}
	// xact_time, xinfo (dbinfo, subxacts, relfilelocators), dbinfo,
	// two subtransactions, one relation.
	commit := slices.Concat(u32(0, 0), u32(1<<0|1<<1|1<<2), u32(1663, 5), u32(2, 100, 101), u32(1), u32(relA.Spc, relA.DB, relA.Rel))
	cases := []tc{
		{"smgr create", 15, pg.RMSmgr, pg.SmgrCreate | pg.XLRSpecialRelUpdate, u32(relA.Spc, relA.DB, relA.Rel, 0), []pg.WALEffect{trunc(pg.ForkMain, 0)}},
		{"smgr create fsm", 15, pg.RMSmgr, pg.SmgrCreate, u32(relA.Spc, relA.DB, relA.Rel, 1), nil},
		{"smgr truncate", 16, pg.RMSmgr, pg.SmgrTruncate, u32(10, relA.Spc, relA.DB, relA.Rel, 7), []pg.WALEffect{trunc(pg.ForkMain, 10), trunc(pg.ForkVM, 0)}},
		{"smgr short", 16, pg.RMSmgr, pg.SmgrTruncate, u32(10), []pg.WALEffect{{Kind: pg.EffectUnknown}}},
		{"dbase create 13", 13, pg.RMDbase, 0x00, u32(16400, 1663, 1, 1663), []pg.WALEffect{db(1663, 16400)}},
		{"dbase drop 14", 14, pg.RMDbase, 0x10, u32(16400, 2, 1663, 16500), []pg.WALEffect{db(1663, 16400), db(16500, 16400)}},
		{"dbase wal_log 15", 15, pg.RMDbase, 0x10, u32(16400, 1663), []pg.WALEffect{db(1663, 16400)}},
		{"dbase drop 18", 18, pg.RMDbase, 0x20, u32(16400, 1, 1663), []pg.WALEffect{db(1663, 16400)}},
		{"dbase drop bad count", 18, pg.RMDbase, 0x20, u32(16400, 9, 1663), []pg.WALEffect{{Kind: pg.EffectUnknown}}},
		{"tablespace", 17, pg.RMTablespace, pg.TablespaceCreate, append(u32(16500), "/x\x00"...), []pg.WALEffect{{Kind: pg.EffectTablespace, Rel: pg.RelFileLocator{Spc: 16500}}}},
		{"commit drops", 17, pg.RMXact, pg.XactCommit | pg.XactHasInfo, commit, []pg.WALEffect{trunc(pg.ForkMain, 0), trunc(pg.ForkVM, 0), trunc(pg.ForkInit, 0)}},
		{"commit short", 17, pg.RMXact, pg.XactCommit | pg.XactHasInfo, commit[:30], []pg.WALEffect{{Kind: pg.EffectUnknown}}},
		{"plain commit", 17, pg.RMXact, pg.XactCommit, u32(0, 0), nil},
		{"parameter change minimal", 15, pg.RMXLOG, pg.XLOGParameterChange, u32(100, 8, 10, 0, 64, 0, 0), []pg.WALEffect{{Kind: pg.EffectMinimal}}},
		{"parameter change replica", 15, pg.RMXLOG, pg.XLOGParameterChange, u32(100, 8, 10, 0, 64, 1, 0), nil},
		{"unknown special", 16, 130, 0x10 | pg.XLRSpecialRelUpdate, nil, []pg.WALEffect{{Kind: pg.EffectUnknown}}},
	}
	for _, c := range cases {
		w := pgtest.NewWALWriter(c.major, 1, 2, testSegSize, 42)
		w.Record(c.rmid, c.info, c.main)
		var got []pg.WALEffect
		r, _ := pg.NewWALReader(pg.SegNo(2).Start(testSegSize), testSegSize, pgtest.WALPageSize)
		r.OnRecord = func(rec *pg.WALRecord) error {
			pg.WALRecordEffects(rec, r.Major(), func(e pg.WALEffect) { got = append(got, e) })
			return nil
		}
		r.Write(w.Bytes())
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}

// FuzzWALReader: any bytes, fed in any pieces, never panic or loop.
func FuzzWALReader(f *testing.F) {
	w := pgtest.NewWALWriter(15, 1, 2, testSegSize, 42)
	w.BlockRecord(pg.RMHeap, 0, []pgtest.Block{{Rel: relA, Block: 7, Image: 3000, Data: 10}, {Rel: relA, Block: 8}}, []byte{1, 2, 3})
	w.Record(pg.RMXLOG, pg.XLOGNoop, make([]byte, 9000))
	w.Commit(t0)
	seed := w.Bytes()[:3*pgtest.WALPageSize]
	f.Add(seed, uint16(1000))
	f.Fuzz(func(t *testing.T, b []byte, piece uint16) {
		for _, data := range [][]byte{b, append(bytes.Clone(seed[:pg.WALLongPageHeaderSize]), b...)} {
			r, _ := pg.NewWALReader(pg.SegNo(2).Start(testSegSize), testSegSize, pgtest.WALPageSize)
			r.Keep = 4096
			r.OnRecord = func(rec *pg.WALRecord) error {
				pg.WALRecordEffects(rec, 15, func(pg.WALEffect) {})
				return nil
			}
			p := max(int(piece), 1)
			for len(data) > 0 {
				n := min(p, len(data))
				r.Write(data[:n])
				data = data[n:]
			}
			r.Pending()
		}
	})
}

// FuzzDecodeWALRecord: any record bytes decode or fail, never panic.
func FuzzDecodeWALRecord(f *testing.F) {
	w := pgtest.NewWALWriter(15, 1, 2, testSegSize, 42)
	at := w.BlockRecord(pg.RMHeap, 0, []pgtest.Block{{Rel: relA, Block: 7, Image: 3000, Data: 10}}, []byte{1, 2, 3})
	off := int(at.SegmentOffset(testSegSize))
	n := int(binary.LittleEndian.Uint32(w.Bytes()[off:]))
	f.Add(bytes.Clone(w.Bytes()[off:off+n]), uint8(15))
	f.Fuzz(func(t *testing.T, b []byte, major uint8) {
		var rec pg.WALRecord
		if pg.DecodeWALRecord(b, int(major), &rec) == nil {
			pg.WALRecordEffects(&rec, int(major), func(pg.WALEffect) {})
		}
	})
}
