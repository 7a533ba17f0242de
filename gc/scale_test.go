package gc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/verify"
)

// The layout of the scale test's repository.
const (
	scaleSnapshots   = 8                   // full snapshots written; the even ones are expired before gc
	scaleBlobSize    = 16 << 10            // a data blob: 2 PostgreSQL pages of random (incompressible) bytes
	scalePageSize    = 8192                // PostgreSQL block size
	scaleFileBlobs   = 1024                // data blobs per relation file (one page map each): 16 MiB files
	scaleSubset      = 0.05                // share of the packs verify --read-data-subset reads
	scaleCluster     = 7000000000000000001 // the snapshots' cluster
	scaleWALSegSize  = 16 << 20
	scaleDefaultSize = 10000
)

// TestScaleGCVerify measures garbage collection and verification on a
// repository of TIDEMARK_SCALE_PACKS (default 10000) small packs on a local
// directory store: wall time, peak memory and storage requests by kind,
// extrapolated per TiB of snapshot logical size. It builds the repository
// first (about 64 KiB of disk per pack). Run it with
//
//	TIDEMARK_BENCH=1 go test -count=1 -timeout 60m -run TestScaleGCVerify -v ./gc/
func TestScaleGCVerify(t *testing.T) {
	if os.Getenv("TIDEMARK_BENCH") != "1" {
		t.Skip("benchmark: set TIDEMARK_BENCH=1 (make bench) to run it")
	}
	packs := scaleDefaultSize
	if s := os.Getenv("TIDEMARK_SCALE_PACKS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 50 {
			t.Fatalf("TIDEMARK_SCALE_PACKS=%q: want a number of packs, at least 50", s)
		}
		packs = n
	}
	ctx := context.Background()

	fsStore, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs := &countingStore{Store: fsStore}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "scale")
	if err != nil {
		t.Fatal(err)
	}
	open := func() (*repo.Repo, error) {
		return repo.Open(ctx, cs, []age.Identity{id}, repo.Options{})
	}

	// Build.
	t0 := time.Now()
	b := buildScaleRepo(t, cs, spec, packs)
	buildTime := time.Since(t0)
	before := countPacks(t, cs)
	deltas := len(repotest.Keys(t, cs, "index/"))
	t.Logf("built %d packs (%s) in %s: %d snapshots, %d data blobs, %s logical, %d index objects",
		before.n, mib(before.bytes), buildTime.Round(time.Millisecond), len(b.snaps), b.dataBlobs, gib(b.logicalAll), deltas)

	var ms []*measurement
	arch := scaleArchive{}

	// Verify the whole repository (every pack is referenced), first
	// without reading pack contents, then reading a rotating share.
	var vrep *verify.Report
	ms = append(ms, measure(t, cs, "verify (no --read-data)", b.logicalAll, func() error {
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		vrep, err = verify.Run(ctx, r, arch, verify.Options{})
		return err
	}))
	vStats := vrep.Stats
	var srep *verify.Report
	ms = append(ms, measure(t, cs, fmt.Sprintf("verify --read-data-subset %g%%", scaleSubset*100), b.logicalAll, func() error {
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		srep, err = verify.Run(ctx, r, arch, verify.Options{Subset: scaleSubset})
		return err
	}))

	// Expire the even snapshots, as retention does: their objects go,
	// nothing else.
	var expired []string
	for i, s := range b.snaps {
		if i%2 == 0 {
			expired = append(expired, repo.SnapshotKey(s.Cluster, s.ID))
		}
	}
	if err := cs.Delete(ctx, expired...); err != nil {
		t.Fatal(err)
	}

	// Garbage collection as an operator runs it, twice. Packs count as
	// old: the clock is two hours ahead and the grace period a minute.
	gcOpts := Options{Grace: time.Minute, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }}
	var res [2]*Result
	for i := range res {
		ms = append(ms, measure(t, cs, fmt.Sprintf("gc run %d", i+1), b.logicalLive, func() error {
			r, err := open()
			if err != nil {
				return err
			}
			defer r.Close()
			res[i], err = Run(ctx, r, gcOpts)
			return err
		}))
	}
	after := countPacks(t, cs)

	// What is left still verifies.
	var prep *verify.Report
	ms = append(ms, measure(t, cs, "verify after gc (no --read-data)", b.logicalLive, func() error {
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		prep, err = verify.Run(ctx, r, arch, verify.Options{})
		return err
	}))

	// Report.
	var out strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&out, format, args...) }
	p("\n=== TestScaleGCVerify: %d packs requested, storage/fs in %s, GOMAXPROCS %d ===\n", packs, os.TempDir(), runtime.GOMAXPROCS(0))
	p("layout: pack size %s (repo.MinPackSize); data blobs of %s random bytes (incompressible; %d pages of %d B; %d per pack);\n",
		kib(repo.MinPackSize), kib(scaleBlobSize), scaleBlobSize/scalePageSize, scalePageSize, repo.MinPackSize/scaleBlobSize)
	p("        relation files of up to %d blobs (%s) with one page map each; %d full snapshots, each with its own new data,\n",
		scaleFileBlobs, mib(scaleFileBlobs*scaleBlobSize), scaleSnapshots)
	p("        the odd ones also reusing part of their predecessor's (10%% of its packs: 2 of 4 blobs, 10%%: 3 of 4).\n")
	p("logical size = sum over snapshots of their files' sizes: %s for all %d snapshots (%s stored in packs, dedup %.2fx);\n",
		gib(b.logicalAll), len(b.snaps), gib(before.bytes), float64(b.logicalAll)/float64(before.bytes))
	p("        %s for the %d left after expiring the even ones (the gc rows and the last verify are scaled by that).\n",
		gib(b.logicalLive), len(b.snaps)-len(expired))
	p("build: %s; %d data blobs; %d index objects (deltas) before gc\n\n", buildTime.Round(time.Millisecond), b.dataBlobs, deltas)

	p("repository            before gc    after gc\n")
	p("  packs              %10d  %10d\n", before.n, after.n)
	p("  pack bytes         %10s  %10s\n", mib(before.bytes), mib(after.bytes))
	p("gc run 1: marked %d snapshots, %d metadata blobs, %d referenced blobs, %d index entries, %d packs listed at the sweep (after repacking)\n",
		res[0].Snapshots, res[0].MetaBlobs, res[0].Referenced, res[0].IndexBlobs, res[0].Packs)
	for i, r := range res {
		p("gc run %d: quarantined %d packs (%s), deleted %d (%s), repacked %d (%s, %s of live blobs copied), released %d, pending %d\n",
			i+1, r.Quarantined.Packs, mib(r.Quarantined.Bytes), r.Deleted.Packs, mib(r.Deleted.Bytes),
			r.Repacked.Packs, mib(r.Repacked.Bytes), mib(r.CopiedBytes), r.Released.Packs, r.Pending)
	}
	p("verify: %d snapshots, %d metadata blobs, %d data blobs resolved, %d packs (%s); subset run read %d packs (%s)\n\n",
		vStats.Snapshots, vStats.MetaBlobs, vStats.DataBlobs, vStats.Packs, mib(vStats.PackBytes), srep.Stats.PacksRead, mib(srep.Stats.BytesRead))

	p("%-36s %9s %9s %9s %8s %8s %6s %6s %6s %7s %10s %9s %9s\n",
		"operation", "wall", "heap MiB", "RSS MiB", "GET", "GETrange", "HEAD", "LIST", "PUT", "CREATE", "DELETE", "requests", "read MiB")
	for _, m := range ms {
		c := m.req
		p("%-36s %9s %9.1f %9s %8d %8d %6d %6d %6d %7d %10s %9d %9.1f\n",
			m.name, m.wall.Round(time.Millisecond), float64(m.heap)/(1<<20), m.rssText(),
			c.get, c.getRange, c.head, c.listPages, c.put, c.create, fmt.Sprintf("%d/%d", c.del, c.delKeys), c.total(), float64(c.bytesRead)/(1<<20))
	}
	p("  heap MiB: peak HeapInuse+StackInuse sampled every 20ms; RSS MiB: VmHWM after resetting it (clear_refs) before the operation.\n")
	p("  LIST: pages of 1000 keys (S3 ListObjectsV2); DELETE: requests of up to 1000 keys / keys; each operation opens the repository itself.\n\n")

	p("per TiB of snapshot logical size (measured x 1 TiB / logical size the operation covered):\n")
	p("%-36s %10s %10s %12s %12s %10s %10s %10s\n", "operation", "covers", "scale", "seconds", "requests", "GET+range", "LIST", "PUT+DEL")
	for _, m := range ms {
		s := float64(1<<40) / float64(m.logical)
		c := m.req
		p("%-36s %10s %10.0f %12.0f %12.0f %10.0f %10.0f %10.0f\n", m.name, gib(m.logical), s, m.wall.Seconds()*s,
			float64(c.total())*s, float64(c.get+c.getRange)*s, float64(c.listPages)*s, float64(c.put+c.create+c.del)*s)
	}
	packsPerTiB := float64(1<<40) / float64(repo.DefaultPackSize)
	p("  caveat: this layout has %d packs and %d data blobs per TiB; a default repository (%s packs, %s slots) about %.0f packs\n",
		int64(1<<40)/repo.MinPackSize, int64(1<<40)/scaleBlobSize, mib(repo.DefaultPackSize), mib(blob.SlotSize), packsPerTiB)
	p("  and %d slots per TiB before compression, so costs that grow with packs or blobs are overstated here by up to %dx / %dx.\n",
		int64(1<<40)/blob.SlotSize, repo.DefaultPackSize/repo.MinPackSize, blob.SlotSize/scaleBlobSize)
	p("  By pack count instead (measured x %.0f default-size packs per TiB / packs present):\n", packsPerTiB)
	for _, m := range ms {
		s := packsPerTiB / float64(m.packs)
		p("%-36s %10d packs %8.3f %12.1f s %10.0f requests\n", m.name, m.packs, s, m.wall.Seconds()*s, float64(m.req.total())*s)
	}
	fmt.Print(out.String())

	for _, m := range ms {
		t.Logf("%s: %s, peak heap %.1f MiB, RSS %s MiB, %d requests (%d GET, %d GETrange, %d HEAD, %d LIST pages, %d PUT, %d CREATE, %d DELETE of %d keys)",
			m.name, m.wall.Round(time.Millisecond), float64(m.heap)/(1<<20), m.rssText(), m.req.total(),
			m.req.get, m.req.getRange, m.req.head, m.req.listPages, m.req.put, m.req.create, m.req.del, m.req.delKeys)
	}

	// Sanity: the numbers above describe runs that did their job.
	for _, m := range ms {
		if m.err != nil {
			t.Errorf("%s: %v", m.name, m.err)
		}
	}
	if t.Failed() {
		return
	}
	if res[0].Deleted.Packs == 0 || res[0].Repacked.Packs == 0 {
		t.Errorf("gc run 1 deleted %d packs and repacked %d: the layout should give it both to do", res[0].Deleted.Packs, res[0].Repacked.Packs)
	}
	if res[1].Quarantined.Packs != 0 || res[1].Deleted.Packs != 0 {
		t.Errorf("gc run 2 still found work: %+v", res[1])
	}
	if vStats.Packs != before.n || prep.Stats.Packs != after.n {
		t.Errorf("verify saw %d and %d packs, the store held %d and %d", vStats.Packs, prep.Stats.Packs, before.n, after.n)
	}
}

// scaleRepo is what buildScaleRepo made.
type scaleRepo struct {
	snaps       []*repo.Snapshot
	dataBlobs   int
	logicalAll  int64 // logical bytes of all snapshots
	logicalLive int64 // of the odd ones, which survive expiry
}

// buildScaleRepo initialises a repository with the smallest pack size and
// writes scaleSnapshots snapshots whose data and metadata take about packs
// packs. Snapshot k stores its own new data blobs through its own writer
// (so its packs hold only its blobs, 4 per pack, in order); odd snapshots
// also refer to part of snapshot k-1's blobs, chosen by pack so that once
// the even snapshots are expired most of their packs are wholly dead, a
// tenth are half dead (repacked) and a tenth a quarter dead (kept).
func buildScaleRepo(t *testing.T, st storage.Store, spec repo.KeySpec, packs int) *scaleRepo {
	t.Helper()
	ctx := context.Background()
	r, _, err := repo.Init(ctx, st, repo.InitOptions{Key: spec, PackSize: repo.MinPackSize})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	perPack := repo.MinPackSize / scaleBlobSize
	fresh := packs * perPack / scaleSnapshots
	rng := rand.NewChaCha8([32]byte{'t', 'i', 'd', 'e', 'm', 'a', 'r', 'k'})
	buf := make([]byte, scaleBlobSize)
	start := time.Now().Add(-time.Duration(scaleSnapshots) * time.Hour)
	out := &scaleRepo{}
	var reuse []blob.ID // blobs of the previous (even) snapshot the next one keeps
	for k := range scaleSnapshots {
		w, err := r.NewWriter(ctx, "scale "+strconv.Itoa(k))
		if err != nil {
			t.Fatal(err)
		}
		var content, next []blob.ID
		for i := range fresh {
			rng.Read(buf)
			id, err := w.Add(ctx, blob.KindSlot, buf)
			if err != nil {
				t.Fatal(err)
			}
			content = append(content, id)
			if pk, j := i/perPack, i%perPack; k%2 == 0 && (pk%10 == 0 && j < 2 || pk%10 == 1 && j < 3) {
				next = append(next, id)
			}
		}
		if k%2 == 1 {
			content = append(content, reuse...)
		}
		reuse = next
		out.dataBlobs += fresh

		// base/<relfilenode>: one page map per file, blobs of 2 pages.
		dir := &filemap.Tree{}
		written := start.Unix()
		var logical int64
		for f := 0; f*scaleFileBlobs < len(content); f++ {
			ids := content[f*scaleFileBlobs : min((f+1)*scaleFileBlobs, len(content))]
			pages := uint32(scaleBlobSize / scalePageSize)
			m := &filemap.Map{BlockSize: scalePageSize, Pages: uint32(len(ids)) * pages}
			for i, id := range ids {
				m.Extents = append(m.Extents, filemap.Extent{Page: uint32(i) * pages, Count: pages, Blob: id, Written: written})
			}
			mb, err := filemap.EncodeMap(m)
			if err != nil {
				t.Fatal(err)
			}
			mid, err := w.Add(ctx, blob.KindFileMap, mb)
			if err != nil {
				t.Fatal(err)
			}
			size := int64(m.Pages) * scalePageSize
			logical += size
			dir.Nodes = append(dir.Nodes, filemap.Node{Name: strconv.Itoa(100000 + f), Type: filemap.TypeFile,
				Mode: 0o600, Size: size, ModTime: written * 1e9, Map: mid})
		}
		sub := addScaleTree(t, w, dir)
		root := addScaleTree(t, w, &filemap.Tree{Nodes: []filemap.Node{{Name: "base", Type: filemap.TypeDir, Mode: 0o700, Subtree: sub}}})
		s := repotest.CommitWith(t, w, repotest.Snap{Cluster: scaleCluster, Start: start.Add(time.Duration(k) * time.Hour),
			StartLSN: 2*scaleWALSegSize + 0x28, Duration: time.Minute}, root)
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		out.snaps = append(out.snaps, s)
		out.logicalAll += logical
		if k%2 == 1 {
			out.logicalLive += logical
		}
	}
	return out
}

func addScaleTree(t *testing.T, w *repo.Writer, tree *filemap.Tree) blob.ID {
	t.Helper()
	b, err := filemap.EncodeTree(tree)
	if err != nil {
		t.Fatal(err)
	}
	id, err := w.Add(context.Background(), blob.KindTree, b)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

type packCount struct {
	n     int
	bytes int64
}

func countPacks(t *testing.T, st storage.Store) packCount {
	t.Helper()
	var c packCount
	for _, prefix := range []string{"data/", "meta/"} {
		for oi, err := range st.List(context.Background(), prefix, "") {
			if err != nil {
				t.Fatal(err)
			}
			c.n++
			c.bytes += oi.Size
		}
	}
	return c
}

// scaleArchive is a WAL archive of segments 1 to 10 on timeline 1 of the
// test's cluster: every snapshot (in segment 2) has its WAL. Its listing
// costs no storage requests.
type scaleArchive struct{}

func (scaleArchive) Clusters(context.Context) ([]uint64, error) { return []uint64{scaleCluster}, nil }

func (scaleArchive) List(context.Context, uint64) (*walarchive.Listing, error) {
	return &walarchive.Listing{
		Cluster:   walarchive.ClusterInfo{SystemID: scaleCluster, SegSize: scaleWALSegSize, BlockSize: 8192},
		Timelines: []*walarchive.TimelineInfo{{Timeline: 1, Segments: []walarchive.SegRange{{First: 1, Last: 10}}}},
	}, nil
}

func (scaleArchive) History(_ context.Context, _ uint64, tli pg.TimelineID) (pg.History, error) {
	return pg.History{Timeline: tli}, nil
}

func (scaleArchive) Expired(context.Context, uint64) (walarchive.Ranges, error) {
	return walarchive.Ranges{}, nil
}

// Decode is never called: the listing's segments are not in the store.
func (scaleArchive) Decode(context.Context, string, io.Reader, string, uint64, io.Writer) (walarchive.Meta, error) {
	return walarchive.Meta{}, errors.New("the scale test's archive holds no objects")
}

func (scaleArchive) ReadSummary(context.Context, uint64, pg.TimelineID, pg.SegNo, uint32) (*walarchive.Summary, error) {
	return nil, errors.New("the scale test's archive holds no objects")
}

func (scaleArchive) GetPiece(context.Context, uint64, walarchive.Piece, io.Writer) (walarchive.Meta, error) {
	return walarchive.Meta{}, errors.New("the scale test's archive holds no objects")
}

// measurement is one measured operation.
type measurement struct {
	name    string
	logical int64 // snapshot logical bytes the operation covered
	packs   int   // packs in the store when it started
	wall    time.Duration
	heap    uint64 // peak HeapInuse+StackInuse
	rss     int64  // peak RSS (VmHWM) in bytes, -1 unknown
	req     requestCounts
	err     error
}

func (m *measurement) rssText() string {
	if m.rss < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", float64(m.rss)/(1<<20))
}

// measure runs fn with the store's counters reset, sampling the Go heap
// every 20ms and resetting the kernel's peak RSS mark first.
func measure(t *testing.T, cs *countingStore, name string, logical int64, fn func() error) *measurement {
	t.Helper()
	m := &measurement{name: name, logical: logical, packs: countPacks(t, cs).n}
	runtime.GC()
	debug.FreeOSMemory()
	hwmReset := resetPeakRSS()
	cs.reset()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var peak uint64
	sample := func() {
		var st runtime.MemStats
		runtime.ReadMemStats(&st)
		peak = max(peak, st.HeapInuse+st.StackInuse)
	}
	sample()
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sample()
				return
			case <-tick.C:
				sample()
			}
		}
	}()
	t0 := time.Now()
	m.err = fn()
	m.wall = time.Since(t0)
	close(stop)
	wg.Wait()
	m.req = cs.snapshot()
	m.heap = peak
	m.rss = -1
	if hwmReset {
		m.rss = peakRSS()
	}
	return m
}

// resetPeakRSS resets VmHWM to the current RSS (Linux 4.0 and later).
func resetPeakRSS() bool {
	f, err := os.OpenFile("/proc/self/clear_refs", os.O_WRONLY, 0)
	if err != nil {
		return false
	}
	_, err = f.WriteString("5")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err == nil && peakRSS() >= 0
}

// peakRSS reads VmHWM from /proc/self/status, in bytes; -1 if unknown.
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

// requestCounts are the storage requests of one operation, by kind.
type requestCounts struct {
	get, getRange, head int64
	list, listPages     int64 // List calls; pages of up to 1000 keys they would take on S3
	put, create         int64
	del, delKeys        int64 // delete requests of up to 1000 keys; keys
	bytesRead, bytesPut int64
}

func (c requestCounts) total() int64 {
	return c.get + c.getRange + c.head + c.listPages + c.put + c.create + c.del
}

// countingStore counts the requests made of the store it wraps.
type countingStore struct {
	storage.Store
	get, getRange, head atomic.Int64
	list, listPages     atomic.Int64
	put, create         atomic.Int64
	del, delKeys        atomic.Int64
	bytesRead, bytesPut atomic.Int64
}

func (c *countingStore) reset() {
	for _, v := range []*atomic.Int64{&c.get, &c.getRange, &c.head, &c.list, &c.listPages,
		&c.put, &c.create, &c.del, &c.delKeys, &c.bytesRead, &c.bytesPut} {
		v.Store(0)
	}
}

func (c *countingStore) snapshot() requestCounts {
	return requestCounts{get: c.get.Load(), getRange: c.getRange.Load(), head: c.head.Load(),
		list: c.list.Load(), listPages: c.listPages.Load(), put: c.put.Load(), create: c.create.Load(),
		del: c.del.Load(), delKeys: c.delKeys.Load(), bytesRead: c.bytesRead.Load(), bytesPut: c.bytesPut.Load()}
}

func (c *countingStore) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	c.put.Add(1)
	c.bytesPut.Add(size)
	return c.Store.Put(ctx, key, r, size)
}

func (c *countingStore) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	c.create.Add(1)
	c.bytesPut.Add(size)
	return c.Store.Create(ctx, key, r, size)
}

func (c *countingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.get.Add(1)
	rc, err := c.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return &countingBody{ReadCloser: rc, n: &c.bytesRead}, nil
}

func (c *countingStore) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	c.getRange.Add(1)
	rc, err := c.Store.GetRange(ctx, key, off, length)
	if err != nil {
		return nil, err
	}
	return &countingBody{ReadCloser: rc, n: &c.bytesRead}, nil
}

func (c *countingStore) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	c.head.Add(1)
	return c.Store.Head(ctx, key)
}

func (c *countingStore) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		c.list.Add(1)
		n := int64(0)
		defer func() { c.listPages.Add(max(1, (n+999)/1000)) }()
		for oi, err := range c.Store.List(ctx, prefix, startAfter) {
			if err == nil {
				n++
			}
			if !yield(oi, err) {
				return
			}
		}
	}
}

func (c *countingStore) Delete(ctx context.Context, keys ...string) error {
	c.del.Add(int64(max(1, (len(keys)+999)/1000)))
	c.delKeys.Add(int64(len(keys)))
	return c.Store.Delete(ctx, keys...)
}

// countingBody counts the bytes read of an object body and keeps the
// body's Size method (storage/retry uses it).
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Size() int64 {
	if s, ok := b.ReadCloser.(interface{ Size() int64 }); ok {
		return s.Size()
	}
	return -1
}

func kib(n int64) string { return fmt.Sprintf("%d KiB", n>>10) }
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// gib formats n in GiB, or in MiB below a GiB.
func gib(n int64) string {
	if n < 1<<30 {
		return mib(n)
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}
