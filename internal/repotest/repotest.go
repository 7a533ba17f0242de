// Package repotest builds small repositories in memory for unit tests of the
// jobs that read whole repositories (verify, gc, retention): snapshots with
// given files, garbage nobody refers to, several processes' views of one
// store, and a store whose objects look older than they are.
//
// It is test support only; nothing outside _test files imports it.
package repotest

import (
	"context"
	"iter"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/filemap"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// PackSize is the pack size of test repositories: small, so that a few
// hundred KiB of data make several packs.
const PackSize = repo.MinPackSize

// Fixture is a repository in memory.
type Fixture struct {
	Store    *AgedStore
	Identity *age.X25519Identity
	Repo     *repo.Repo
	raw      storage.Store // what Open opens, when not Store
}

// New initialises a repository on a fresh in-memory store.
func New(t testing.TB) *Fixture {
	t.Helper()
	st := &AgedStore{Store: mem.New()}
	f := initOn(t, st, nil)
	f.Store = st
	return f
}

// NewLocked initialises a locked repository on st, which must be able to
// lock objects (an S3 bucket with object lock, through storage/location).
// Store views st without the capability: writes through it bypass the
// lock, as a test that plants objects wants; Repo and Open write through
// the lock.
func NewLocked(t testing.TB, st storage.Store, lock *repo.Lock) *Fixture {
	t.Helper()
	f := initOn(t, st, lock)
	f.Store, f.raw = &AgedStore{Store: st}, st
	return f
}

// initOn initialises a repository on st with a new X25519 identity.
func initOn(t testing.TB, st storage.Store, lock *repo.Lock) *Fixture {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "test")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(context.Background(), st, repo.InitOptions{Key: spec, PackSize: PackSize, Lock: lock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &Fixture{Identity: id, Repo: r}
}

// Open opens the repository again: another process's view of it.
func (f *Fixture) Open(t testing.TB) *repo.Repo {
	t.Helper()
	var st storage.Store = f.Store
	if f.raw != nil {
		st = f.raw
	}
	r, err := repo.Open(context.Background(), st, []age.Identity{f.Identity}, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// File is one file of a test snapshot: whole-file content chunks.
type File struct {
	Name string
	Data []byte
}

// AddTree stores files as one directory (whole-file chunks of
// filemap.ChunkSize) through w and returns the tree's ID.
func AddTree(t testing.TB, w *repo.Writer, files ...File) blob.ID {
	t.Helper()
	ctx := context.Background()
	tree := &filemap.Tree{}
	for _, f := range files {
		n := filemap.Node{Name: f.Name, Type: filemap.TypeFile, Mode: 0o600, Size: int64(len(f.Data))}
		for off := 0; off < len(f.Data); off += filemap.ChunkSize {
			id, err := w.Add(ctx, blob.KindFile, f.Data[off:min(off+filemap.ChunkSize, len(f.Data))])
			if err != nil {
				t.Fatal(err)
			}
			n.Content = append(n.Content, id)
		}
		tree.Nodes = append(tree.Nodes, n)
	}
	slices.SortFunc(tree.Nodes, func(a, b filemap.Node) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	b, err := filemap.EncodeTree(tree)
	if err != nil {
		t.Fatal(err)
	}
	id, err := w.Add(ctx, blob.KindTree, b)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Snap describes a snapshot to commit; zero fields get defaults.
type Snap struct {
	Cluster   uint64
	Start     time.Time // default now
	StartLSN  uint64    // default 0x1000028 (segment 1)
	StopLSN   uint64    // default StartLSN + 0x100
	Timeline  uint32    // start and stop timeline, default 1
	StopTLI   uint32    // default Timeline
	Duration  time.Duration
	PGVersion int // default 150000
}

var idMu sync.Mutex
var idSeq int

// Commit stores files as a snapshot through a new writer of r and returns
// it.
func Commit(t testing.TB, r *repo.Repo, s Snap, files ...File) *repo.Snapshot {
	t.Helper()
	ctx := context.Background()
	w, err := r.NewWriter(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	root := AddTree(t, w, files...)
	return CommitWith(t, w, s, root)
}

// CommitWith commits a snapshot of root through w.
func CommitWith(t testing.TB, w *repo.Writer, s Snap, roots ...blob.ID) *repo.Snapshot {
	t.Helper()
	if s.Cluster == 0 {
		s.Cluster = 7000000000000000001
	}
	if s.Start.IsZero() {
		s.Start = time.Now()
	}
	if s.StartLSN == 0 {
		s.StartLSN = 0x1000028
	}
	if s.StopLSN == 0 {
		s.StopLSN = s.StartLSN + 0x100
	}
	if s.Timeline == 0 {
		s.Timeline = 1
	}
	if s.StopTLI == 0 {
		s.StopTLI = s.Timeline
	}
	if s.PGVersion == 0 {
		s.PGVersion = 150000
	}
	idMu.Lock()
	idSeq++
	n := idSeq
	idMu.Unlock()
	snap := &repo.Snapshot{
		ID: s.Start.UTC().Format("20060102T150405Z") + "-" + strconv.Itoa(10000000+n), Cluster: s.Cluster,
		PGVersion: s.PGVersion, BlockSize: 8192, WALSegmentSize: 16 << 20, DataChecksums: true, Type: repo.SnapshotFull,
		StartLSN: s.StartLSN, StopLSN: s.StopLSN, StartTimeline: s.Timeline, StopTimeline: s.StopTLI,
		StartTime: s.Start.UTC(), StopTime: s.Start.Add(s.Duration).UTC(), BackupLabel: []byte("label"), Roots: roots,
	}
	if _, err := w.Commit(context.Background(), snap, nil); err != nil {
		t.Fatal(err)
	}
	return snap
}

// Garbage stores blobs that no snapshot refers to (an interrupted backup's
// uploads) through a new writer of r, indexed.
func Garbage(t testing.TB, r *repo.Repo, data ...[]byte) []blob.ID {
	t.Helper()
	ctx := context.Background()
	w, err := r.NewWriter(ctx, "garbage")
	if err != nil {
		t.Fatal(err)
	}
	var ids []blob.ID
	for _, d := range data {
		id, err := w.Add(ctx, blob.KindFile, d)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

// Keys lists the object keys under prefix.
func Keys(t testing.TB, s storage.Store, prefix string) []string {
	t.Helper()
	var out []string
	for oi, err := range s.List(context.Background(), prefix, "") {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, oi.Key)
	}
	return out
}

// AgedStore is a store whose listings report objects Age older than they
// are, so that tests need not wait out grace periods.
type AgedStore struct {
	storage.Store
	mu  sync.Mutex
	age time.Duration
}

// SetAge sets how much older listed objects look.
func (s *AgedStore) SetAge(d time.Duration) {
	s.mu.Lock()
	s.age = d
	s.mu.Unlock()
}

// List is the store's List with ModTime moved back by the age.
func (s *AgedStore) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	s.mu.Lock()
	age := s.age
	s.mu.Unlock()
	return func(yield func(storage.ObjectInfo, error) bool) {
		for oi, err := range s.Store.List(ctx, prefix, startAfter) {
			oi.ModTime = oi.ModTime.Add(-age)
			if !yield(oi, err) {
				return
			}
		}
	}
}

// LockedMinIO opens a fresh object-lock bucket of srv through
// storage/location, as tidemark would, for NewLocked.
func LockedMinIO(t testing.TB, srv *testenv.S3Server) storage.Store {
	t.Helper()
	env := map[string]string{}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	st, err := location.Open(context.Background(), srv.URL(srv.NewLockedBucket(t), "repo"),
		location.Options{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	return st
}
