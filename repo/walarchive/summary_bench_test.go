package walarchive

import (
	"math/rand/v2"
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
)

// BenchmarkSummarize is the summarizer's cost per segment of OLTP-like
// WAL (small heap and index records, some full-page images), for
// comparison with compressing the segment (the archive's other work).
func BenchmarkSummarize(b *testing.B) {
	const segSize = 16 << 20
	w := pgtest.NewWALWriter(16, 1, 3, segSize, testSys)
	rng := rand.New(rand.NewPCG(1, 2))
	for w.Pos() < pg.SegNo(4).Start(segSize) {
		blk := pgtest.Block{Rel: sumRelA, Block: rng.Uint32N(100000), Data: 60 + rng.IntN(60)}
		if rng.IntN(20) == 0 {
			blk.Image = 8192
		}
		w.BlockRecord(pg.RMHeap, 0, []pgtest.Block{blk}, make([]byte, 8))
	}
	seg := w.Segments()[0]
	b.SetBytes(int64(len(seg)))
	b.ResetTimer()
	for range b.N {
		z := newSummarizer(1, 3, segSize)
		for off := 0; off < len(seg); off += chunkSize {
			z.Write(seg[off : off+chunkSize])
		}
		if _, err := z.finish(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompressSegment(b *testing.B) {
	const segSize = 16 << 20
	w := pgtest.NewWALWriter(16, 1, 3, segSize, testSys)
	rng := rand.New(rand.NewPCG(1, 2))
	for w.Pos() < pg.SegNo(4).Start(segSize) {
		blk := pgtest.Block{Rel: sumRelA, Block: rng.Uint32N(100000), Data: 60 + rng.IntN(60)}
		if rng.IntN(20) == 0 {
			blk.Image = 8192
		}
		w.BlockRecord(pg.RMHeap, 0, []pgtest.Block{blk}, make([]byte, 8))
	}
	seg := w.Segments()[0]
	a := New(nil, plain{}, MACKey{1}, Options{})
	b.SetBytes(int64(len(seg)))
	b.ResetTimer()
	for range b.N {
		a.enc.EncodeAll(seg, nil)
	}
}
