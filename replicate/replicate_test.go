package replicate_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/replicate"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/refs"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/repo/walarchive/walarchivetest"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

const (
	cluster = 7000000000000000001
	segSize = 16 << 20
)

// pair is a source repository and a second one made from it.
type pair struct {
	src      *repotest.Fixture
	dstStore *fault.Store
	dst      *repo.Repo
	dstID    *age.X25519Identity
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{src: repotest.New(t), dstStore: fault.New(mem.New())}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "second")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(t.Context(), p.dstStore, repo.InitOptions{Key: spec, PackSize: repotest.PackSize, ShareSecretOf: p.src.Repo})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	p.dst, p.dstID = r, id
	return p
}

// reopen is a new process's view of the second repository.
func (p *pair) reopen(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Open(t.Context(), p.dstStore, []age.Identity{p.dstID}, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// archive puts segments first..last of timeline 1 into r's WAL archive.
func archive(t *testing.T, r *repo.Repo, first, last pg.SegNo) {
	t.Helper()
	a := walarchive.FromRepo(r, walarchive.Options{})
	ci := walarchive.ClusterInfo{SystemID: cluster, SegSize: segSize, BlockSize: pg.DefaultWALBlockSize}
	for seg := first; seg <= last; seg++ {
		if _, err := a.Put(t.Context(), ci, pg.SegmentName(1, seg, segSize), walarchivetest.Segment(cluster, 1, seg, segSize, 1)); err != nil {
			t.Fatal(err)
		}
	}
}

func data(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 2))
	for i := range b {
		b[i] = byte(r.Uint32() % 7) // compresses, not to nothing
	}
	return b
}

func run(t *testing.T, from, to *repo.Repo, opts replicate.Options) *replicate.Result {
	t.Helper()
	res, err := replicate.Run(t.Context(), from, to, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestCopyIncremental: a first copy sends a snapshot's blobs and WAL; a
// second sends nothing; after a new snapshot that shares a file, only the
// new blobs travel. Everything in the target reads back, verified, with
// the target's key alone, and is encrypted to it rather than to the
// source's identity.
func TestCopyIncremental(t *testing.T) {
	p := newPair(t)
	ctx := t.Context()
	archive(t, p.src.Repo, 16, 18)
	snap := repotest.Snap{Cluster: cluster, StartLSN: 16 * segSize, StopLSN: 16*segSize + 0x100, Duration: 1}
	a, b := data(1, 300<<10), data(2, 200<<10)
	s1 := repotest.Commit(t, p.src.Repo, snap, repotest.File{Name: "a", Data: a}, repotest.File{Name: "b", Data: b})

	res := run(t, p.src.Repo, p.dst, replicate.Options{})
	if !slices.Equal(res.Copied, []string{s1.ID}) || res.WALFiles != 3 || res.Blobs == 0 {
		t.Fatalf("first copy: %+v", res)
	}
	first := res.Blobs

	dst := p.reopen(t)
	got, err := dst.LoadSnapshot(ctx, cluster, s1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Roots, s1.Roots) || got.StopLSN != s1.StopLSN {
		t.Fatalf("copied snapshot differs: %+v", got)
	}
	checkResolves(t, dst, got)
	// The WAL reads back in the target and is its own encryption: the
	// source's identity cannot open it.
	if _, _, err := walarchive.FromRepo(dst, walarchive.Options{}).ReadFile(ctx, cluster, pg.SegmentName(1, 17, segSize)); err != nil {
		t.Fatal(err)
	}
	// Each segment's block summary is there too (the target's archive
	// writes it as a push would), so incrementals taken from the second
	// repository read only the changed pages.
	for seg := pg.SegNo(16); seg <= 18; seg++ {
		if _, err := walarchive.FromRepo(dst, walarchive.Options{}).ReadSummary(ctx, cluster, 1, seg, segSize); err != nil {
			t.Fatalf("summary of segment %d in the target: %v", seg, err)
		}
	}
	foreign := walarchive.New(p.dstStore, p.src.Repo, p.src.Repo.WALMACKey(), walarchive.Options{})
	if _, _, err := foreign.ReadFile(ctx, cluster, pg.SegmentName(1, 17, segSize)); !errors.Is(err, walarchive.ErrCorrupt) {
		t.Fatalf("the source's identity reads the target's WAL: %v", err)
	}

	res = run(t, p.src.Repo, p.dst, replicate.Options{})
	if len(res.Copied) != 0 || res.Present != 1 || res.Blobs != 0 || res.WALFiles != 0 || res.WALPresent != 3 {
		t.Fatalf("second copy did something: %+v", res)
	}

	archive(t, p.src.Repo, 19, 20)
	snap2 := snap
	snap2.StartLSN, snap2.StopLSN = 20*segSize, 20*segSize+0x100
	c := data(3, 100<<10)
	s2 := repotest.Commit(t, p.src.Repo, snap2, repotest.File{Name: "a", Data: a}, repotest.File{Name: "c", Data: c})
	res = run(t, p.src.Repo, p.dst, replicate.Options{})
	if !slices.Equal(res.Copied, []string{s2.ID}) || res.WALFiles != 2 {
		t.Fatalf("incremental copy: %+v", res)
	}
	// c (one chunk) and the new tree; a's chunks were there.
	if res.Blobs != 2 || res.BlobsPresent == 0 || res.Blobs >= first {
		t.Fatalf("incremental copy sent %d blobs (first copy %d, present %d): want c's chunk and the tree", res.Blobs, first, res.BlobsPresent)
	}
	got2, err := p.reopen(t).LoadSnapshot(ctx, cluster, s2.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkResolves(t, p.reopen(t), got2)
}

// checkResolves reads every blob s refers to from r, verified.
func checkResolves(t *testing.T, r *repo.Repo, s *repo.Snapshot) {
	t.Helper()
	g := refs.New(r, nil)
	if err := g.Load(t.Context(), s.Roots); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	var err error
	g.Walk(s.Roots, nil, func(id blob.ID, meta bool, n *refs.Node) {
		if meta && (n == nil || n.Err != nil) {
			t.Fatalf("metadata %s: %v", id, n)
		}
		if buf, err = r.ReadBlob(t.Context(), id, buf[:0]); err != nil {
			t.Fatalf("read %s: %v", id, err)
		}
	})
}

// TestCopyRefusesForeignSecret: a second repository initialized on its own
// is refused in one line that says how to make one.
func TestCopyRefusesForeignSecret(t *testing.T) {
	src := repotest.New(t)
	other := repotest.New(t)
	_, err := replicate.Run(t.Context(), src.Repo, other.Repo, replicate.Options{})
	if !errors.Is(err, repo.ErrSecretMismatch) || !bytes.Contains([]byte(err.Error()), []byte("--from-repo")) {
		t.Fatalf("got %v, want a secret mismatch that says how to create the second repository", err)
	}
}

// TestCopyResumes: a copy that fails as it commits leaves its packs
// indexed; the rerun sends no blob again and commits.
func TestCopyResumes(t *testing.T) {
	p := newPair(t)
	archive(t, p.src.Repo, 16, 16)
	s := repotest.Commit(t, p.src.Repo, repotest.Snap{Cluster: cluster, StartLSN: 16 * segSize},
		repotest.File{Name: "a", Data: data(4, 400<<10)}, repotest.File{Name: "b", Data: data(5, 400<<10)})
	h := p.dstStore.Add(fault.Rule{Ops: fault.Create, Prefix: repo.SnapshotPrefix, Kind: fault.Permanent})
	res, err := replicate.Run(t.Context(), p.src.Repo, p.dst, replicate.Options{})
	if err == nil || h.Hits() == 0 {
		t.Fatalf("copy with a failing snapshot write: %v (%+v)", err, res)
	}
	p.dstStore.Clear()
	res = run(t, p.src.Repo, p.reopen(t), replicate.Options{})
	if !slices.Equal(res.Copied, []string{s.ID}) || res.Blobs != 0 || res.WALFiles != 0 {
		t.Fatalf("rerun: %+v; want the snapshot committed with every blob and WAL file reused", res)
	}
}

// TestCopyLeavesExpiredWAL: WAL the target's retention expired is not
// copied back, nor a snapshot that needs it.
func TestCopyLeavesExpiredWAL(t *testing.T) {
	p := newPair(t)
	archive(t, p.src.Repo, 16, 18)
	s := repotest.Commit(t, p.src.Repo, repotest.Snap{Cluster: cluster, StartLSN: 16 * segSize},
		repotest.File{Name: "a", Data: data(6, 10<<10)})
	exp := walarchive.Ranges{}
	exp.Add(1, 16, 17)
	if err := walarchive.FromRepo(p.dst, walarchive.Options{}).RecordExpired(t.Context(), cluster, exp, s.StopTime); err != nil {
		t.Fatal(err)
	}
	res := run(t, p.src.Repo, p.dst, replicate.Options{})
	if res.WALFiles != 1 || res.WALExpired != 2 || len(res.Copied) != 0 || !slices.Equal(res.Skipped, []string{s.ID}) {
		t.Fatalf("%+v: want segment 18 copied, 16 and 17 and the snapshot left out", res)
	}
}

// TestCopyUnreachableTarget: a target that is down fails the copy with a
// storage error, and nothing is committed.
func TestCopyUnreachableTarget(t *testing.T) {
	p := newPair(t)
	archive(t, p.src.Repo, 16, 16)
	repotest.Commit(t, p.src.Repo, repotest.Snap{Cluster: cluster, StartLSN: 16 * segSize}, repotest.File{Name: "a", Data: data(7, 1000)})
	p.dstStore.Down()
	_, err := replicate.Run(context.Background(), p.src.Repo, p.dst, replicate.Options{})
	if !storage.IsUnavailable(err) {
		t.Fatalf("got %v, want a storage failure", err)
	}
}
