package replicate_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/replicate"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/repo/walarchive/walarchivetest"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// ops are the request kinds the benchmark reports, and opNames their names.
var (
	ops     = []fault.Op{fault.Put, fault.Create, fault.Get, fault.GetRange, fault.Head, fault.List, fault.Delete}
	opNames = []string{"PUT", "create", "GET", "ranged GET", "HEAD", "LIST", "DELETE"}
)

// counts are the requests a store served so far, by kind.
func counts(st *fault.Store) []int {
	out := make([]int, len(ops))
	for i, op := range ops {
		out[i] = st.Calls(op)
	}
	return out
}

// since says how many requests of each kind st served after before.
func since(st *fault.Store, before []int) string {
	var parts []string
	for i, n := range counts(st) {
		parts = append(parts, fmt.Sprintf("%s %d", opNames[i], n-before[i]))
	}
	return strings.Join(parts, ", ")
}

// s3Store is a fresh bucket of srv, counting requests (a fault.Store
// without rules passes every call through and counts it).
func s3Store(b *testing.B, srv *testenv.S3Server) *fault.Store {
	b.Helper()
	env := map[string]string{}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	st, err := location.Open(b.Context(), srv.URL(srv.NewBucket(b), "tidemark"), location.Options{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		b.Fatal(err)
	}
	return fault.New(st)
}

// pages is 4 MiB of real heap pages (pgbench_accounts), to be stamped
// unique per slot: data that compresses as a database does, and never
// deduplicates.
func pages(b *testing.B) []byte {
	d, err := os.ReadFile("../repo/testdata/pgbench_accounts.4MiB")
	if err != nil {
		b.Skipf("fixture: %v", err)
	}
	return d
}

func slotFile(src []byte, name string, slots int, seed uint64) repotest.File {
	out := make([]byte, 0, slots<<20)
	for i := range slots {
		s := src[(i%4)<<20 : (i%4+1)<<20]
		start := len(out)
		out = append(out, s...)
		for p := start; p < len(out); p += 8192 {
			binary.LittleEndian.PutUint64(out[p:], seed<<32|uint64(i)<<16|uint64(p>>13))
		}
	}
	return repotest.File{Name: name, Data: out}
}

// BenchmarkCopy copies a 256 MiB snapshot and 8 WAL segments from a
// repository on MinIO to a second one on versitygw, then an incremental
// that added 4 MiB, and reports the first copy's throughput and both
// copies' requests:
//
//	go test ./replicate -run '^$' -bench Copy -benchtime 1x -count 3 -v
func BenchmarkCopy(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	src := pages(b)
	from, vgw := s3Store(b, testenv.MinIO(b)), testenv.VersityGW(b)
	id, _ := age.GenerateX25519Identity()
	spec, _ := repo.ParseRecipient(id.Recipient().String(), "bench")
	ctx := context.Background()
	r1, _, err := repo.Init(ctx, from, repo.InitOptions{Key: spec})
	if err != nil {
		b.Fatal(err)
	}
	defer r1.Close()
	const segs = 8
	ci := walarchive.ClusterInfo{SystemID: cluster, SegSize: segSize, BlockSize: pg.DefaultWALBlockSize}
	arch := walarchive.FromRepo(r1, walarchive.Options{})
	for seg := pg.SegNo(16); seg < 16+segs; seg++ {
		if _, err := arch.Put(ctx, ci, pg.SegmentName(1, seg, segSize), walarchivetest.Segment(cluster, 1, seg, segSize, 1)); err != nil {
			b.Fatal(err)
		}
	}
	base := slotFile(src, "base", 256, 1)
	repotest.Commit(b, r1, repotest.Snap{Cluster: cluster, StartLSN: 16 * segSize}, base)
	// Then 4 MiB more.
	incr := slotFile(src, "new", 4, 2)

	for i := 0; i < b.N; i++ {
		b.StopTimer()
		to := s3Store(b, vgw) // a fresh bucket per run
		r2, _, err := repo.Init(ctx, to, repo.InitOptions{Key: spec, ShareSecretOf: r1})
		if err != nil {
			b.Fatal(err)
		}
		c1, c2 := counts(from), counts(to)
		cpu0 := cpuTime()
		b.StartTimer()
		res, err := replicate.Run(ctx, r1, r2, replicate.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		mib := float64(res.RawBytes+res.WALBytes) / (1 << 20)
		b.Logf("full copy: %.0f MiB (%d blobs, %d WAL files) in %.2f s = %.1f MiB/s, %.2f CPU s per GiB (tidemark only); %d packs, %.1f MiB stored",
			mib, res.Blobs, res.WALFiles, res.Elapsed.Seconds(), mib/res.Elapsed.Seconds(), (cpuTime()-cpu0).Seconds()/(mib/1024),
			res.Packs, float64(res.PackBytes)/(1<<20))
		b.Logf("  source: %s", since(from, c1))
		b.Logf("  target: %s", since(to, c2))
		b.ReportMetric(mib/res.Elapsed.Seconds(), "MiB/s")

		if i == 0 {
			repotest.Commit(b, r1, repotest.Snap{Cluster: cluster, StartLSN: 16*segSize + 0x1000}, base, incr)
		}
		c1, c2 = counts(from), counts(to)
		res, err = replicate.Run(ctx, r1, r2, replicate.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("incremental copy: %d blobs, %.1f MiB in %.2f s; %d packs", res.Blobs, float64(res.RawBytes)/(1<<20), res.Elapsed.Seconds(), res.Packs)
		b.Logf("  source: %s", since(from, c1))
		b.Logf("  target: %s", since(to, c2))
		r2.Close()
		b.StartTimer()
	}
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
