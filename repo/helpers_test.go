package repo

import (
	"context"
	"crypto/rand"
	"io"
	"iter"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"

	"filippo.io/age"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

// backend makes an empty store for one test.
type backend struct {
	name string
	make func(t *testing.T) storage.Store
}

// backends are the stores every repository test runs on. mem is for our own
// logic; fs is a real backend. MinIO joins when storage/s3 lands (see
// minioBackend).
func backends() []backend {
	bs := []backend{
		{"mem", func(t *testing.T) storage.Store { return mem.New() }},
		{"fs", func(t *testing.T) storage.Store {
			s, err := fs.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	}
	return append(bs, extraBackends()...)
}

// forEachBackend runs f as a subtest on every backend.
func forEachBackend(t *testing.T, f func(t *testing.T, newStore func(t *testing.T) storage.Store)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { f(t, b.make) })
	}
}

// testLogger logs to the test on failure only.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TIDEMARK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testPackSize makes tests produce several packs from little data.
const testPackSize = 256 << 10

type fixture struct {
	store storage.Store
	id    *age.X25519Identity
	repo  *Repo
	res   InitResult
}

func initRepo(t testing.TB, store storage.Store, mod ...func(*InitOptions)) *fixture {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ParseRecipient(id.Recipient().String(), "test")
	if err != nil {
		t.Fatal(err)
	}
	opts := InitOptions{Key: spec, PackSize: testPackSize}
	opts.Logger = testLogger(t)
	for _, m := range mod {
		m(&opts)
	}
	r, res, err := Init(context.Background(), store, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &fixture{store: store, id: id, repo: r, res: res}
}

func (f *fixture) reopen(t testing.TB, opts Options) *Repo {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	r, err := Open(context.Background(), f.store, []age.Identity{f.id}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// compressible returns n bytes that zstd shrinks a lot but not to nothing.
func compressible(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/512) ^ seed
	}
	return b
}

// counting wraps a Store and counts requests.
type counting struct {
	storage.Store
	puts, creates, gets, ranges, heads, lists, deletes atomic.Int64
}

func (c *counting) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	c.puts.Add(1)
	return c.Store.Put(ctx, key, r, size)
}
func (c *counting) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	c.creates.Add(1)
	return c.Store.Create(ctx, key, r, size)
}
func (c *counting) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}
func (c *counting) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.ranges.Add(1)
	return c.Store.GetRange(ctx, key, off, n)
}
func (c *counting) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	c.heads.Add(1)
	return c.Store.Head(ctx, key)
}
func (c *counting) List(ctx context.Context, prefix, after string) iter.Seq2[storage.ObjectInfo, error] {
	c.lists.Add(1)
	return c.Store.List(ctx, prefix, after)
}
func (c *counting) Delete(ctx context.Context, keys ...string) error {
	c.deletes.Add(1)
	return c.Store.Delete(ctx, keys...)
}

func (c *counting) reset() {
	for _, n := range []*atomic.Int64{&c.puts, &c.creates, &c.gets, &c.ranges, &c.heads, &c.lists, &c.deletes} {
		n.Store(0)
	}
}

// keysUnder lists object keys with a prefix.
func keysUnder(t testing.TB, s storage.Store, prefix string) []string {
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

func newMemStore() storage.Store { return mem.New() }
