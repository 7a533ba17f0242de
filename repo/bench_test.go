package repo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// pgbenchFixture is 4 MiB from the middle of a pgbench_accounts relation
// file (PostgreSQL 15, pgbench -i -s 2, after a checkpoint): real heap pages.
const pgbenchFixture = "testdata/pgbench_accounts.4MiB"

func loadSlots(tb testing.TB, kind string) [][]byte {
	tb.Helper()
	var data []byte
	switch kind {
	case "pgbench":
		var err error
		data, err = os.ReadFile(pgbenchFixture)
		if err != nil {
			tb.Skipf("fixture %s: %v", pgbenchFixture, err)
		}
	case "random":
		data = randBytes(4 << 20)
	}
	var slots [][]byte
	for off := 0; off+blob.SlotSize <= len(data); off += blob.SlotSize {
		slots = append(slots, data[off:off+blob.SlotSize])
	}
	return slots
}

// uniqueSlot copies slot into dst and stamps n into every page's LSN field
// (the first 8 bytes of a page), as a changed page would differ: no two
// calls with different n dedup.
func uniqueSlot(dst, slot []byte, n uint64) []byte {
	dst = append(dst[:0], slot...)
	for p := 0; p < len(dst); p += 8192 {
		binary.LittleEndian.PutUint64(dst[p:], n)
	}
	return dst
}

// discardStore drops pack bodies (keeping everything else in memory), so
// write benchmarks measure tidemark, not a backend.
type discardStore struct {
	*mem.Store
	packBytes atomic.Int64
}

func (d *discardStore) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	if strings.HasPrefix(key, "data/") || strings.HasPrefix(key, "meta/") {
		d.packBytes.Add(size)
		return nil
	}
	return d.Store.Put(ctx, key, r, size)
}

func benchRepo(b *testing.B, store storage.Store) *Repo {
	id, _ := age.GenerateX25519Identity()
	spec, _ := ParseRecipient(id.Recipient().String(), "")
	r, _, err := Init(context.Background(), store, InitOptions{Key: spec})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

// BenchmarkStages measures each stage of the write path alone, on one
// 1 MiB slot: the yardstick for BenchmarkWrite.
func BenchmarkStages(b *testing.B) {
	for _, kind := range []string{"pgbench", "random"} {
		slot := loadSlots(b, kind)[1]
		h := blob.NewHasher([32]byte{1})
		b.Run(kind+"/blake3", func(b *testing.B) {
			b.SetBytes(int64(len(slot)))
			for b.Loop() {
				h.Sum(blob.KindSlot, slot)
			}
		})
		for _, lvl := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
			enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(1),
				zstd.WithWindowSize(blob.SlotSize), zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
			b.Run(kind+"/zstd-"+lvl.String(), func(b *testing.B) {
				b.SetBytes(int64(len(slot)))
				var out []byte
				for b.Loop() {
					out = enc.EncodeAll(slot, out[:0])
				}
				b.ReportMetric(float64(len(out))/float64(len(slot))*100, "%size")
			})
		}
		b.Run(kind+"/age-stream", func(b *testing.B) {
			id, _ := age.GenerateX25519Identity()
			w, _ := age.Encrypt(io.Discard, id.Recipient())
			b.SetBytes(int64(len(slot)))
			for b.Loop() {
				w.Write(slot)
			}
		})
		b.Run(kind+"/sha256", func(b *testing.B) {
			b.SetBytes(int64(len(slot)))
			for b.Loop() {
				sha256.Sum256(slot)
			}
		})
	}
}

// BenchmarkWrite is blob write throughput through a Writer (hash, zstd,
// age, pack, SHA-256 of packs) into a store that drops pack bodies. With
// -cpu 1 it is the per-core figure; b.N slots are added from GOMAXPROCS
// goroutines.
func BenchmarkWrite(b *testing.B) {
	for _, kind := range []string{"pgbench", "random"} {
		b.Run(kind, func(b *testing.B) {
			slots := loadSlots(b, kind)
			store := &discardStore{Store: mem.New()}
			r := benchRepo(b, store)
			w, err := r.NewWriter(context.Background(), "bench")
			if err != nil {
				b.Fatal(err)
			}
			var n atomic.Uint64
			b.SetBytes(blob.SlotSize)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var buf []byte
				for pb.Next() {
					i := n.Add(1)
					buf = uniqueSlot(buf, slots[i%uint64(len(slots))], i)
					if _, err := w.Add(context.Background(), blob.KindSlot, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
			if err := w.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			st := w.Stats()
			b.ReportMetric(float64(st.PackBytes)/float64(st.RawBytes)*100, "%stored")
		})
	}
}

// BenchmarkRead is single-blob read throughput (ranged GET from memory,
// ChaCha20-Poly1305, zstd, keyed BLAKE3 check) and ReadBlobs throughput.
func BenchmarkRead(b *testing.B) {
	for _, kind := range []string{"pgbench", "random"} {
		slots := loadSlots(b, kind)
		store := mem.New()
		r := benchRepo(b, store)
		w, _ := r.NewWriter(context.Background(), "bench")
		var ids []blob.ID
		var buf []byte
		for i := range 64 {
			buf = uniqueSlot(buf, slots[i%len(slots)], uint64(i))
			id, _ := w.Add(context.Background(), blob.KindSlot, buf)
			ids = append(ids, id)
		}
		w.Close(context.Background())
		b.Run(kind+"/ReadBlob", func(b *testing.B) {
			b.SetBytes(blob.SlotSize)
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				var out []byte
				for pb.Next() {
					var err error
					out, err = r.ReadBlob(context.Background(), ids[n.Add(1)%int64(len(ids))], out[:0])
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(kind+"/ReadBlobs", func(b *testing.B) {
			b.SetBytes(blob.SlotSize * int64(len(ids)))
			for b.Loop() {
				if err := r.ReadBlobs(context.Background(), ids, func(blob.ID, []byte) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPeakMemory writes TIDEMARK_MEMTEST_GIB GiB (default 10) of unique
// slots, half pgbench pages and half random, through one Writer from
// GOMAXPROCS goroutines into a store that drops pack bodies, and reports the
// high-water marks of the Go heap and of the process RSS. Set
// TIDEMARK_MEMTEST=1 to run it (about a minute).
func TestPeakMemory(t *testing.T) {
	if os.Getenv("TIDEMARK_MEMTEST") == "" {
		t.Skip("set TIDEMARK_MEMTEST=1 to measure peak memory over 10 GiB of blobs")
	}
	gib := 10
	if s := os.Getenv("TIDEMARK_MEMTEST_GIB"); s != "" {
		gib, _ = strconv.Atoi(s)
	}
	total := uint64(gib) << 30
	pg := loadSlots(t, "pgbench")
	rnd := loadSlots(t, "random")
	store := &discardStore{Store: mem.New()}
	id, _ := age.GenerateX25519Identity()
	spec, _ := ParseRecipient(id.Recipient().String(), "")
	r, _, err := Init(ctx, store, InitOptions{Key: spec})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := r.NewWriter(ctx, "memtest")
	if err != nil {
		t.Fatal(err)
	}
	var heapPeak, sysPeak uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			heapPeak = max(heapPeak, ms.HeapInuse)
			sysPeak = max(sysPeak, ms.Sys)
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	var n atomic.Uint64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for {
				i := n.Add(1)
				if i*blob.SlotSize > total {
					return
				}
				src := pg
				if i%2 == 0 {
					src = rnd
				}
				buf = uniqueSlot(buf, src[i%uint64(len(src))], i)
				if _, err := w.Add(ctx, blob.KindSlot, buf); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	close(stop)
	sampler.Wait()
	el := time.Since(start)
	hwm := vmHWM()
	t.Logf("%d GiB in %s (%.0f MB/s): heap in use peak %d MiB, Go Sys peak %d MiB, RSS high-water %d MiB; "+
		"%d packs, %d MiB stored, index %d blobs",
		gib, el.Round(time.Millisecond), float64(total)/el.Seconds()/1e6, heapPeak>>20, sysPeak>>20, hwm>>20,
		w.Stats().Packs, store.packBytes.Load()>>20, w.Stats().NewBlobs)
	if hwm > 512<<20 {
		t.Fatalf("RSS high-water %d MiB is over 512 MiB", hwm>>20)
	}
}

// vmHWM returns the process's peak resident set size in bytes (Linux).
func vmHWM() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

var _ = bytes.Equal
