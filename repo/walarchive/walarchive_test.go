package walarchive

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive/walarchivetest"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

const (
	testSys     = 7300000000000000001
	testSegSize = 1 << 20
)

var testCluster = ClusterInfo{SystemID: testSys, SegSize: testSegSize, BlockSize: pg.DefaultWALBlockSize}

func fakeSegment(sysid uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32, seed uint64) []byte {
	return walarchivetest.Segment(sysid, tli, seg, segSize, seed)
}

func segName(tli pg.TimelineID, seg pg.SegNo) string { return pg.SegmentName(tli, seg, testSegSize) }

type fixture struct {
	store storage.Store
	repo  *repo.Repo
	arch  *Archive
	id    *age.X25519Identity
}

func newRepo(t testing.TB, store storage.Store, escrow ...string) *fixture {
	t.Helper()
	r, id := walarchivetest.Repo(t, store, escrow...)
	return &fixture{store: store, repo: r, arch: FromRepo(r, Options{}), id: id}
}

func backends(t *testing.T, f func(t *testing.T, store storage.Store)) {
	t.Run("mem", func(t *testing.T) { f(t, mem.New()) })
	t.Run("fs", func(t *testing.T) {
		s, err := fs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		f(t, s)
	})
}

func mustPut(t testing.TB, a *Archive, name string, data []byte) PutResult {
	t.Helper()
	res, err := a.Put(context.Background(), testCluster, name, data)
	if err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
	return res
}

func TestPutGetRoundTrip(t *testing.T) {
	backends(t, func(t *testing.T, store storage.Store) {
		fx := newRepo(t, store)
		ctx := context.Background()
		seg := fakeSegment(testSys, 1, 3, testSegSize, 1)
		partial := fakeSegment(testSys, 1, 4, testSegSize, 2)
		hist := []byte("1\t0/4000000\tno recovery target specified\n")
		label := []byte("START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nCHECKPOINT LOCATION: 0/3000060\n")
		files := map[string][]byte{
			segName(1, 3):                      seg,
			segName(1, 4) + ".partial":         partial,
			"00000002.history":                 hist,
			segName(1, 3) + ".00000028.backup": label,
		}
		for name, data := range files {
			res := mustPut(t, fx.arch, name, data)
			if !res.Created || res.Size != int64(len(data)) {
				t.Errorf("put %s: %+v", name, res)
			}
		}
		// A fresh Archive (as a new process would open) reads them back.
		a2 := FromRepo(fx.repo, Options{})
		for name, data := range files {
			got, m, err := a2.ReadFile(ctx, testSys, name)
			if err != nil {
				t.Fatalf("get %s: %v", name, err)
			}
			if !bytes.Equal(got, data) || m.Name != name || m.SystemID != testSys {
				t.Errorf("get %s: %d bytes, meta %+v", name, len(got), m)
			}
		}
		key, _ := Key(testSys, "00000002.history")
		if key != "wal/7300000000000000001/history/00000002.history" {
			t.Errorf("history key %s", key)
		}
		key, _ = Key(testSys, segName(1, 3))
		if key != "wal/7300000000000000001/0000000100000000/000000010000000000000003" {
			t.Errorf("segment key %s", key)
		}
	})
}

func TestPutAgain(t *testing.T) {
	backends(t, func(t *testing.T, store storage.Store) {
		fx := newRepo(t, store)
		ctx := context.Background()
		name := segName(1, 5)
		seg := fakeSegment(testSys, 1, 5, testSegSize, 1)
		mustPut(t, fx.arch, name, seg)
		key, _ := Key(testSys, name)
		before := readObject(t, store, key)

		// Identical bytes again, from another process: a success.
		res, err := FromRepo(fx.repo, Options{}).Put(ctx, testCluster, name, seg)
		if err != nil || res.Created {
			t.Fatalf("identical re-push: %+v, %v", res, err)
		}

		// Different bytes under the same name: refused, never overwritten.
		other := fakeSegment(testSys, 1, 5, testSegSize, 2)
		_, err = fx.arch.Put(ctx, testCluster, name, other)
		var ce *ConflictError
		if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) || ce.Name != name {
			t.Fatalf("different re-push: %v", err)
		}
		if !bytes.Contains([]byte(err.Error()), []byte("a different "+name+" is already archived")) {
			t.Errorf("message does not say it loudly: %v", err)
		}
		if after := readObject(t, store, key); !bytes.Equal(before, after) {
			t.Fatal("the archived object changed")
		}
		got, _, err := fx.arch.ReadFile(ctx, testSys, name)
		if err != nil || !bytes.Equal(got, seg) {
			t.Fatalf("after the refused push: %v", err)
		}

		// History files likewise.
		h := "00000002.history"
		mustPut(t, fx.arch, h, []byte("1\t0/5000000\tone\n"))
		if _, err := fx.arch.Put(ctx, testCluster, h, []byte("1\t0/6000000\tother\n")); !errors.Is(err, ErrConflict) {
			t.Fatalf("different history: %v", err)
		}
		if res := mustPut(t, fx.arch, h, []byte("1\t0/5000000\tone\n")); res.Created {
			t.Fatal("identical history re-push created an object")
		}
	})
}

func readObject(t testing.TB, s storage.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeObject(t testing.TB, s storage.Store, key string, b []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

func TestPutRefuses(t *testing.T) {
	fx := newRepo(t, mem.New())
	ctx := context.Background()
	cases := []struct {
		name string
		file string
		data []byte
		want error
	}{
		{"other cluster", segName(1, 3), fakeSegment(testSys+1, 1, 3, testSegSize, 1), ErrForeign},
		{"other segment size", segName(1, 3), fakeSegment(testSys, 1, 3, 2<<20, 1)[:testSegSize], ErrForeign},
		{"wrong address", segName(1, 3), fakeSegment(testSys, 1, 4, testSegSize, 1), ErrInvalidFile},
		{"newer timeline in header", segName(1, 3), fakeSegment(testSys, 2, 3, testSegSize, 1), ErrInvalidFile},
		{"short", segName(1, 3), fakeSegment(testSys, 1, 3, testSegSize, 1)[:4096], ErrInvalidFile},
		{"zeros", segName(1, 3), make([]byte, testSegSize), ErrInvalidFile},
		{"bad history", "00000002.history", []byte("garbage"), ErrInvalidFile},
		{"bad name", "RECOVERYXLOG", []byte("x"), ErrInvalidFile},
		{"lower case", "00000001000000000000000a", fakeSegment(testSys, 1, 10, testSegSize, 1), ErrInvalidFile},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := fx.arch.Put(ctx, testCluster, c.file, c.data)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	for oi, err := range fx.store.List(ctx, Prefix, "") {
		if err != nil {
			t.Fatal(err)
		}
		if oi.Key != MarkerKey(testSys) {
			t.Errorf("a refused push left %s", oi.Key)
		}
	}
}

func TestClusterMarkerSegSize(t *testing.T) {
	fx := newRepo(t, mem.New())
	ctx := context.Background()
	mustPut(t, fx.arch, segName(1, 3), fakeSegment(testSys, 1, 3, testSegSize, 1))
	// The same system identifier, now with 2 MiB segments (pg_resetwal).
	ci := ClusterInfo{SystemID: testSys, SegSize: 2 << 20}
	_, err := FromRepo(fx.repo, Options{}).Put(ctx, ci, pg.SegmentName(1, 3, 2<<20), fakeSegment(testSys, 1, 3, 2<<20, 1))
	if !errors.Is(err, ErrForeign) {
		t.Fatalf("got %v", err)
	}
}

func TestGetCorrupt(t *testing.T) {
	fx := newRepo(t, mem.New())
	ctx := context.Background()
	a, b := segName(1, 3), segName(1, 4)
	mustPut(t, fx.arch, a, fakeSegment(testSys, 1, 3, testSegSize, 1))
	mustPut(t, fx.arch, b, fakeSegment(testSys, 1, 4, testSegSize, 1))
	keyA, _ := Key(testSys, a)
	keyB, _ := Key(testSys, b)
	orig := readObject(t, fx.store, keyA)

	other := newRepo(t, mem.New())
	mustPut(t, other.arch, a, fakeSegment(testSys, 1, 3, testSegSize, 1))
	foreign := readObject(t, other.store, keyA)

	flip := func(off int) []byte {
		c := bytes.Clone(orig)
		c[off] ^= 0x40
		return c
	}
	cases := map[string][]byte{
		"empty":             {},
		"truncated":         orig[:len(orig)/2],
		"flipped header":    flip(20),
		"flipped payload":   flip(len(orig) - 100),
		"other object":      readObject(t, fx.store, keyB),
		"other repository":  foreign,
		"trailing garbage":  append(bytes.Clone(orig), 0),
		"garbage":           bytes.Repeat([]byte("x"), 5000),
		"last byte dropped": orig[:len(orig)-1],
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			writeObject(t, fx.store, keyA, body)
			_, _, err := fx.arch.ReadFile(ctx, testSys, a)
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Key != keyA || !errors.Is(err, repo.ErrCorrupt) {
				t.Fatalf("got %v", err)
			}
		})
	}
	// A push of the right bytes onto a corrupt object is refused, not
	// reported as a success.
	writeObject(t, fx.store, keyA, flip(len(orig)-100))
	if _, err := fx.arch.Put(ctx, testCluster, a, fakeSegment(testSys, 1, 3, testSegSize, 1)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("push onto a corrupt object: %v", err)
	}
}

func TestGetNotArchived(t *testing.T) {
	fx := newRepo(t, mem.New())
	_, _, err := fx.arch.ReadFile(context.Background(), testSys, segName(1, 9))
	var ne *NotArchivedError
	if !errors.As(err, &ne) || !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("got %v", err)
	}
}

// A body that breaks off is a storage failure, not corruption: the caller
// retries instead of stopping recovery.
func TestGetBrokenBodyIsNotCorrupt(t *testing.T) {
	store := fault.New(mem.New())
	fx := newRepo(t, store)
	name := segName(1, 3)
	mustPut(t, fx.arch, name, fakeSegment(testSys, 1, 3, testSegSize, 1))
	store.Add(fault.Rule{Ops: fault.Get, Prefix: Prefix, Kind: fault.Drop, After: 1000})
	_, _, err := fx.arch.ReadFile(context.Background(), testSys, name)
	if err == nil || errors.Is(err, ErrCorrupt) || !storage.IsTransient(err) {
		t.Fatalf("got %v", err)
	}
}

// fullWriter takes n bytes and then fails, as a full disk does.
type fullWriter struct {
	n       int
	written int
}

var errDiskFull = errors.New("no space left on device")

func (f *fullWriter) Write(p []byte) (int, error) {
	if f.written+len(p) > f.n {
		return 0, errDiskFull
	}
	f.written += len(p)
	return len(p), nil
}

// A write that fails (the decoded file is written behind the decoding, in
// a goroutine of its own) is returned as that error, not as corruption,
// and nothing is written after it; a writer that takes it all gets the
// whole file.
func TestGetWriteFails(t *testing.T) {
	fx := newRepo(t, mem.New())
	name := segName(1, 3)
	seg := fakeSegment(testSys, 1, 3, testSegSize, 1)
	mustPut(t, fx.arch, name, seg)
	fw := &fullWriter{n: 300 << 10}
	_, err := fx.arch.Get(context.Background(), testSys, name, fw)
	if !errors.Is(err, errDiskFull) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v", err)
	}
	if fw.written > fw.n {
		t.Fatalf("wrote %d bytes past the failure", fw.written)
	}
	var buf bytes.Buffer
	if _, err := fx.arch.Get(context.Background(), testSys, name, &buf); err != nil || !bytes.Equal(buf.Bytes(), seg) {
		t.Fatalf("got %d bytes, %v", buf.Len(), err)
	}
}

// An escrow holder reads any object with the stock tools.
func TestEscrowWithAgeAndZstd(t *testing.T) {
	agePath, err1 := exec.LookPath("age")
	zstdPath, err2 := exec.LookPath("zstd")
	if err1 != nil || err2 != nil {
		t.Skip("age or zstd not installed (scripts/deps.sh installs both)")
	}
	escrow, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	fx := newRepo(t, mem.New(), escrow.Recipient().String())
	name := segName(1, 3)
	seg := fakeSegment(testSys, 1, 3, testSegSize, 1)
	mustPut(t, fx.arch, name, seg)
	key, _ := Key(testSys, name)
	dir := t.TempDir()
	obj := filepath.Join(dir, "obj")
	idf := filepath.Join(dir, "escrow.txt")
	os.WriteFile(obj, readObject(t, fx.store, key), 0o600)
	os.WriteFile(idf, []byte(escrow.String()+"\n"), 0o600)
	cmd := exec.Command("sh", "-c", `"$1" -d -i "$2" "$3" | "$4" -d -q`, "sh", agePath, idf, obj, zstdPath)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("age -d | zstd -d: %v", err)
	}
	if !bytes.Equal(out, seg) {
		t.Fatalf("age -d | zstd -d gave %d bytes, not the segment", len(out))
	}
}

func TestListing(t *testing.T) { backends(t, testListing) }

func testListing(t *testing.T, store storage.Store) {
	fx := newRepo(t, store)
	ctx := context.Background()
	put := func(tli pg.TimelineID, segs ...pg.SegNo) {
		for _, s := range segs {
			mustPut(t, fx.arch, segName(tli, s), fakeSegment(testSys, tli, s, testSegSize, uint64(s)))
		}
	}
	// Timeline 1: 1..5, 8..9 (gap 6..7), and across a log boundary
	// (4096 segments of 1 MiB per log): 4095, 4096.
	put(1, 1, 2, 3, 4, 5, 8, 9)
	put(1, 4095, 4096)
	// Timeline 2 branches off at 0/980000 (segment 9): 9..11.
	put(2, 9, 10, 11)
	mustPut(t, fx.arch, segName(1, 9)+".partial", fakeSegment(testSys, 1, 9, testSegSize, 3))
	mustPut(t, fx.arch, "00000002.history", []byte("1\t0/980000\tno recovery target specified\n"))
	// Timeline 3 without its history file.
	put(3, 20)
	// A stray object.
	writeObject(t, fx.store, ClusterPrefix(testSys)+"0000000100000000/junk", []byte("x"))

	l, err := fx.arch.List(ctx, testSys)
	if err != nil {
		t.Fatal(err)
	}
	t1 := l.Timeline(1)
	if want := []SegRange{{1, 5}, {8, 9}, {4095, 4096}}; !equalRanges(t1.Segments, want) {
		t.Errorf("timeline 1 ranges %v", t1.Segments)
	}
	if g := t1.Gaps(); len(g) != 2 || g[0] != (SegRange{6, 7}) || g[1] != (SegRange{10, 4094}) {
		t.Errorf("gaps %v", g)
	}
	if len(t1.Partial) != 1 || t1.Count() != 9 {
		t.Errorf("timeline 1: %+v", t1)
	}
	if t2 := l.Timeline(2); t2 == nil || !t2.History || !equalRanges(t2.Segments, []SegRange{{9, 11}}) {
		t.Errorf("timeline 2: %+v", t2)
	}
	if mh := l.MissingHistory(); len(mh) != 1 || mh[0] != 3 {
		t.Errorf("missing history %v", mh)
	}
	if tli, seg, ok := l.Head(); !ok || tli != 3 || seg != 20 {
		t.Errorf("head %d %d", tli, seg)
	}
	if len(l.Foreign) != 1 {
		t.Errorf("foreign %v", l.Foreign)
	}

	h2, err := fx.arch.History(ctx, testSys, 2)
	if err != nil {
		t.Fatal(err)
	}
	lsn := func(seg pg.SegNo) pg.LSN { return seg.Start(testSegSize) }
	// From segment 1 along timeline 2: 1..5 on timeline 1, then 6 missing.
	if last, ok := l.Reach(h2, 1); !ok || last != 5 {
		t.Errorf("reach from 1: %d %v", last, ok)
	}
	if last, ok := l.Reach(h2, 8); !ok || last != 11 {
		t.Errorf("reach from 8: %d %v", last, ok)
	}
	missing := l.Missing(h2, lsn(4)+100, lsn(10)+1)
	if want := []string{segName(1, 6), segName(1, 7)}; !equalStrings(missing, want) {
		t.Errorf("missing %v", missing)
	}
	got, err := fx.arch.CheckRange(ctx, testSys, h2, lsn(4)+100, lsn(10)+1)
	if err != nil || !equalStrings(got, missing) {
		t.Errorf("check range %v %v", got, err)
	}
	// A stop LSN at a segment boundary does not need the next segment.
	if got, err := fx.arch.CheckRange(ctx, testSys, h2, lsn(8), lsn(12)); err != nil || got != nil {
		t.Errorf("check range 8..12: %v %v", got, err)
	}

	// Another cluster.
	other := ClusterInfo{SystemID: 42, SegSize: testSegSize}
	if _, err := fx.arch.Put(ctx, other, segName(1, 1), fakeSegment(42, 1, 1, testSegSize, 1)); err != nil {
		t.Fatal(err)
	}
	cl, err := fx.arch.Clusters(ctx)
	if err != nil || len(cl) != 2 || cl[0] != 42 || cl[1] != testSys {
		t.Errorf("clusters %v %v", cl, err)
	}
	ents, err := fx.arch.ListDir(ctx, testSys, "0000000100000000")
	if err != nil || len(ents) != 9 {
		t.Errorf("list dir: %d entries, %v", len(ents), err)
	}

	// ListFrom: one timeline, from a segment on.
	from := func(tli pg.TimelineID, seg pg.SegNo) *Listing {
		t.Helper()
		l, err := fx.arch.ListFrom(ctx, testSys, tli, seg)
		if err != nil {
			t.Fatalf("list timeline %d from %d: %v", tli, seg, err)
		}
		return l
	}
	// Segment 3 and on (the stray object in log 0 sorts after every
	// segment), nothing of the other timelines.
	if l := from(1, 3); len(l.Timelines) != 1 || !equalRanges(l.Timeline(1).Segments, []SegRange{{3, 5}, {8, 9}, {4095, 4096}}) ||
		len(l.Timeline(1).Partial) != 1 || len(l.Foreign) != 1 || l.Cluster.SegSize != testSegSize || l.Cluster.SystemID != testSys {
		t.Errorf("timeline 1 from 3: %+v, %+v", l, l.Timeline(1))
	}
	// From log 1 on: log 0 is never read.
	if l := from(1, 4096); len(l.Timelines) != 1 || !equalRanges(l.Timeline(1).Segments, []SegRange{{4096, 4096}}) ||
		len(l.Timeline(1).Partial) != 0 || len(l.Foreign) != 0 {
		t.Errorf("timeline 1 from 4096: %+v, %+v", l, l.Timeline(1))
	}
	if l := from(2, 10); len(l.Timelines) != 1 || !equalRanges(l.Timeline(2).Segments, []SegRange{{10, 11}}) {
		t.Errorf("timeline 2 from 10: %+v", l)
	}
	// From segment 9: its .partial too; from 10, not.
	if l := from(1, 9); !equalRanges(l.Timeline(1).Segments, []SegRange{{9, 9}, {4095, 4096}}) || len(l.Timeline(1).Partial) != 1 {
		t.Errorf("timeline 1 from 9: %+v", l.Timeline(1))
	}
	if l := from(1, 10); !equalRanges(l.Timeline(1).Segments, []SegRange{{4095, 4096}}) || len(l.Timeline(1).Partial) != 0 {
		t.Errorf("timeline 1 from 10: %+v", l.Timeline(1))
	}
	if l := from(3, 5000); len(l.Timelines) != 0 {
		t.Errorf("timeline 3 from 5000: %+v", l.Timelines)
	}
	if l, err := fx.arch.ListFrom(ctx, 43, 1, 1); err != nil || len(l.Timelines) != 0 || l.Cluster.SystemID != 43 {
		t.Errorf("a cluster with nothing archived: %+v, %v", l, err)
	}
}

func equalRanges(a, b []SegRange) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The documenting struct and the code agree on the record's size.
func TestRecordLayout(t *testing.T) {
	if n := binary.Size(record{}); n != recordFixedSize {
		t.Fatalf("record is %d bytes, recordFixedSize %d", n, recordFixedSize)
	}
	m := Meta{Name: "000000010000000000000003", Kind: KindSegment, SystemID: 1, SegSize: 1 << 20, Size: 5, MAC: [32]byte{9}}
	f := encodeFrame(&m)
	var r record
	if err := binary.Read(bytes.NewReader(f[frameHeaderSize:]), binary.LittleEndian, &r); err != nil {
		t.Fatal(err)
	}
	if r.Magic != recordMagic || Kind(r.Kind) != m.Kind || r.SystemID != 1 || r.Size != 5 || r.SegSize != 1<<20 ||
		r.MAC != m.MAC || int(r.NameLen) != len(m.Name) || r.Version != recordVersion {
		t.Fatalf("record as documented: %+v", r)
	}
}

// BenchmarkPut is the CPU cost of archiving one 16 MiB segment (to an
// in-memory store): MAC, compression, its check, encryption.
//
// TIDEMARK_WAL_SAMPLE names a real segment to use instead of a synthetic
// one (whose filler compresses worse and slower than real WAL).
func BenchmarkPut(b *testing.B) {
	fx := newRepo(b, mem.New())
	ci := ClusterInfo{SystemID: testSys, SegSize: 16 << 20}
	seg := fakeSegment(testSys, 1, 3, 16<<20, 1)
	name := pg.SegmentName(1, 3, 16<<20)
	if p := os.Getenv("TIDEMARK_WAL_SAMPLE"); p != "" {
		var err error
		if seg, err = os.ReadFile(p); err != nil {
			b.Fatal(err)
		}
		h, err := pg.ParseSegmentHeader(seg)
		if err != nil {
			b.Fatal(err)
		}
		ci = ClusterInfo{SystemID: h.SysID, SegSize: h.SegSize}
		name = filepath.Base(p)
		if f, err := pg.ParseWALFileName(name); err != nil || f.Kind != pg.WALSegment {
			name = pg.SegmentName(h.Timeline, h.PageAddr.Segment(h.SegSize), h.SegSize)
		}
	}
	b.SetBytes(int64(len(seg)))
	for i := 0; b.Loop(); i++ {
		key, _ := Key(ci.SystemID, name)
		fx.store.Delete(context.Background(), key)
		res, err := fx.arch.Put(context.Background(), ci, name, seg)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(res.Stored)/float64(len(seg)), "stored/size")
	}
}

// History files are held to PostgreSQL's own rules, no stricter: this one
// was written by PostgreSQL 15 (a copy recovered along timeline 2 to a
// restore point before timeline 2 began).
func TestCheckHistory(t *testing.T) {
	ok := map[pg.TimelineID]string{
		3: "1\t0/3000000\tno recovery target specified\n\n2\t0/2D87348\tat restore point \"e2e_point\"\n",
		2: "# comment\n1\t0/3000000\tno recovery target specified\n",
		4: "1\t0/3000000\n2\t0/4000000\treason\n3\t0/5000000\treason",
	}
	for tli, h := range ok {
		if err := checkHistory(tli, []byte(h)); err != nil {
			t.Errorf("%d: %v", tli, err)
		}
	}
	bad := map[string]struct {
		tli pg.TimelineID
		h   string
	}{
		"not increasing":  {3, "2\t0/3000000\tx\n1\t0/4000000\tx\n"},
		"own timeline":    {2, "2\t0/3000000\tx\n"},
		"no switch point": {2, "1\n"},
		"bad lsn":         {2, "1\tzz\tx\n"},
		"garbage":         {2, "hello"},
	}
	for name, c := range bad {
		if err := checkHistory(c.tli, []byte(c.h)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// endReader delivers data and then, instead of the end, err: a reader that
// found its file changed once it had read all of it.
type endReader struct {
	r   io.Reader
	err error
}

func (e *endReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestPutFromUploadsOnlyAfterTheEnd(t *testing.T) {
	fx := newRepo(t, mem.New())
	ctx := context.Background()
	// 16 MiB segments: several chunks, compressed while the rest is read.
	const big = 16 << 20
	ci := ClusterInfo{SystemID: testSys + 7, SegSize: big, BlockSize: pg.DefaultWALBlockSize}
	name := pg.SegmentName(1, 3, big)
	seg := walarchivetest.Segment(ci.SystemID, 1, 3, big, 1)
	changed := errors.New("changed while read")
	cases := []struct {
		name string
		r    io.Reader
		want error
	}{
		{"changed at the end", &endReader{r: bytes.NewReader(seg), err: changed}, changed},
		{"short", bytes.NewReader(seg[:big-1]), io.ErrUnexpectedEOF},
		{"long", bytes.NewReader(append(bytes.Clone(seg), 0)), nil},
		{"other cluster", bytes.NewReader(walarchivetest.Segment(ci.SystemID+1, 1, 3, big, 1)), ErrForeign},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := fx.arch.PutFrom(ctx, ci, name, c.r, big)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			for oi, err := range fx.store.List(ctx, Prefix, "") {
				if err != nil {
					t.Fatal(err)
				}
				if oi.Key != MarkerKey(testSys) && oi.Key != MarkerKey(ci.SystemID) {
					t.Fatalf("a failed push left %s", oi.Key)
				}
			}
		})
	}
	res, err := fx.arch.PutFrom(ctx, ci, name, bytes.NewReader(seg), big)
	if err != nil || !res.Created {
		t.Fatalf("put: %+v %v", res, err)
	}
	got, _, err := fx.arch.ReadFile(ctx, ci.SystemID, name)
	if err != nil || !bytes.Equal(got, seg) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, seg))
	}
}
