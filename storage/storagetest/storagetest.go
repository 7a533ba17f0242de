// Package storagetest is the conformance suite every storage.Store backend
// must pass: the contract in package storage, written as tests. Each backend's
// own test calls Run with a constructor that returns a fresh, empty store.
//
// It is not a place for backend-specific behaviour (crash safety of storage/fs,
// checksums of storage/s3): those tests live beside their backend.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
)

// LargeSize is the size of the "large" object of the suite. A backend that
// switches to multipart uploads above a threshold should set its threshold
// (and part size) below it for the suite, so that path is exercised too; 5
// MiB parts are the smallest S3 accepts. It is deliberately not a multiple
// of any power of two.
const LargeSize = 12<<20 + 4097

// ManyKeys is more than one S3 list page (1000 keys).
const ManyKeys = 1100

// Run runs the suite. newStore is called once per subtest and must return
// an empty store that the subtest may fill; subtests run in parallel.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store) {
	tests := []struct {
		name string
		f    func(*testing.T, storage.Store)
	}{
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"Create", testCreate},
		{"ConcurrentCreate", testConcurrentCreate},
		{"GetRange", testGetRange},
		{"NotFound", testNotFound},
		{"List", testList},
		{"ListManyDelete", testListManyDelete},
		{"FailedPutInvisible", testFailedPut},
		{"ContextCanceled", testContextCanceled},
		{"InvalidKeys", testInvalidKeys},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t, newStore(t))
		})
	}
}

// Data returns n reproducible pseudo-random bytes.
func Data(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	_, _ = r.Read(b)
	return b
}

// PutBytes stores b under key and fails the test on error.
func PutBytes(t testing.TB, s storage.Store, key string, b []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// putAsync is PutBytes for goroutines other than the test's own, which
// must not call t.Fatal.
func putAsync(t testing.TB, s storage.Store, key string, b []byte) {
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("put %s: %v", key, err)
	}
}

// ReadAll reads a whole object and fails the test on error.
func ReadAll(t testing.TB, s storage.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func readRange(s storage.Store, key string, off, length int64) ([]byte, error) {
	rc, err := s.GetRange(context.Background(), key, off, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// ListKeys lists and fails the test on error.
func ListKeys(t testing.TB, s storage.Store, prefix, startAfter string) []string {
	t.Helper()
	var keys []string
	for info, err := range s.List(context.Background(), prefix, startAfter) {
		if err != nil {
			t.Fatalf("list %q after %q: %v", prefix, startAfter, err)
		}
		keys = append(keys, info.Key)
	}
	return keys
}

func equal(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes, want %d bytes (contents differ)", what, len(got), len(want))
	}
}

// wantErr checks that err matches target, names the key and is not transient.
func wantErr(t testing.TB, what string, err, target error, key string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want one matching %q", what, err, target)
	}
	if storage.IsTransient(err) {
		t.Errorf("%s: %v is marked transient", what, err)
	}
	if key != "" && !strings.Contains(err.Error(), key) {
		t.Errorf("%s: error %q does not name the object %s", what, err, key)
	}
}

func testPutGet(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		key  string
		size int
	}{
		{"empty", 0},
		{"one", 1},
		{"dir/small", 1000},
		{"dir/sub/large", LargeSize},
	} {
		data := Data(uint64(tc.size), tc.size)
		PutBytes(t, s, tc.key, data)
		equal(t, "get "+tc.key, ReadAll(t, s, tc.key), data)
		info, err := s.Head(ctx, tc.key)
		if err != nil {
			t.Fatalf("head %s: %v", tc.key, err)
		}
		if info.Key != tc.key || info.Size != int64(tc.size) || info.ModTime.IsZero() {
			t.Errorf("head %s = %+v, want key %s, size %d and a modification time", tc.key, info, tc.key, tc.size)
		}
	}
	// A ranged read across the 5 MiB boundary where a multipart upload of
	// the large object has its first part end.
	large := Data(LargeSize, LargeSize)
	got, err := readRange(s, "dir/sub/large", 5<<20-100, 300)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "range across a part boundary", got, large[5<<20-100:5<<20+200])
}

func testOverwrite(t *testing.T, s storage.Store) {
	PutBytes(t, s, "k", []byte("first version, longer"))
	PutBytes(t, s, "k", []byte("second"))
	equal(t, "after overwrite", ReadAll(t, s, "k"), []byte("second"))
	if keys := ListKeys(t, s, "", ""); !slices.Equal(keys, []string{"k"}) {
		t.Errorf("list after overwrite = %q, want [k]", keys)
	}
}

func testCreate(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for _, size := range []int{10, LargeSize} {
		key := fmt.Sprintf("create/%d", size)
		first, second := Data(1, size), Data(2, size)
		if err := s.Create(ctx, key, bytes.NewReader(first), int64(size)); err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
		err := s.Create(ctx, key, bytes.NewReader(second), int64(size))
		wantErr(t, "second create of "+key, err, storage.ErrExists, key)
		equal(t, key+" after a failed create", ReadAll(t, s, key), first)
	}
	// Create also refuses a key that Put wrote.
	PutBytes(t, s, "create/put", []byte("put"))
	err := s.Create(ctx, "create/put", bytes.NewReader([]byte("create")), 6)
	wantErr(t, "create over a put", err, storage.ErrExists, "create/put")
	equal(t, "create/put", ReadAll(t, s, "create/put"), []byte("put"))
}

func testConcurrentCreate(t *testing.T, s storage.Store) {
	for _, tc := range []struct {
		key     string
		writers int
		size    int
	}{
		{"race/small", 8, 100},
		{"race/large", 3, LargeSize},
	} {
		var wg sync.WaitGroup
		errs := make([]error, tc.writers)
		datas := make([][]byte, tc.writers)
		for i := range tc.writers {
			datas[i] = Data(uint64(100+i), tc.size)
			wg.Go(func() {
				errs[i] = s.Create(context.Background(), tc.key, bytes.NewReader(datas[i]), int64(tc.size))
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("%s: writers %d and %d both created it", tc.key, winner, i)
			case err == nil:
				winner = i
			default:
				wantErr(t, tc.key+" losing create", err, storage.ErrExists, tc.key)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: no create succeeded: %v", tc.key, errs)
		}
		equal(t, tc.key+" holds the winner's data", ReadAll(t, s, tc.key), datas[winner])
	}
}

func testGetRange(t *testing.T, s storage.Store) {
	const size = 1000
	data := Data(7, size)
	PutBytes(t, s, "r", data)
	PutBytes(t, s, "empty", nil)
	for _, tc := range []struct {
		key         string
		off, length int64
		bad         bool
	}{
		{"r", 0, size, false},
		{"r", 10, 100, false},
		{"r", size - 10, 10, false}, // up to the end
		{"r", size - 1, 1, false},
		{"r", size, 0, false}, // empty, at the end
		{"r", 0, 0, false},
		{"empty", 0, 0, false},
		{"r", size - 5, 10, true}, // past the end
		{"r", size, 1, true},
		{"r", size + 1, 0, true},
		{"r", 0, size + 1, true},
		{"r", -1, 1, true},
		{"empty", 0, 1, true},
	} {
		what := fmt.Sprintf("range %s %d+%d", tc.key, tc.off, tc.length)
		got, err := readRange(s, tc.key, tc.off, tc.length)
		if tc.bad {
			wantErr(t, what, err, storage.ErrRange, tc.key)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if tc.key == "r" {
			equal(t, what, got, data[tc.off:tc.off+tc.length])
		} else if len(got) != 0 {
			t.Fatalf("%s: got %d bytes", what, len(got))
		}
	}
}

func testNotFound(t *testing.T, s storage.Store) {
	ctx := context.Background()
	PutBytes(t, s, "dir/exists", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "dir", "nodir/missing", "dir/exists/below"} {
		_, err := s.Get(ctx, key)
		wantErr(t, "get "+key, err, storage.ErrNotFound, key)
		_, err = s.GetRange(ctx, key, 0, 1)
		wantErr(t, "get range "+key, err, storage.ErrNotFound, key)
		_, err = s.Head(ctx, key)
		wantErr(t, "head "+key, err, storage.ErrNotFound, key)
	}
	if err := s.Delete(ctx, "missing", "dir"); err != nil {
		t.Fatalf("delete of missing keys: %v", err)
	}
	equal(t, "dir/exists", ReadAll(t, s, "dir/exists"), []byte("x"))
}

// listKeys are keys whose order trips up naive implementations: '-' and
// '.' sort before '/', so "x/y-z" < "x/y.z" < "x/y/z" < "x/y0", and a
// directory walk must not list "x/y/" before its siblings "x/y-z" and "x/y.z".
// No key is also the directory of another (a file system cannot hold both).
var listKeys = []string{
	"a", "a-c", "a.b", "b/c", "b0",
	"x/y-z", "x/y.z", "x/y/z", "x/y/z0/deep", "x/y0", "x/y0x", "x/ya",
	"x/y/-", "x/y/.a", "x/z", "u/z", "u/\u00e9", "u/~",
	"p/0", "p/00", "p/0-", "p/0!/x",
}

func testList(t *testing.T, s storage.Store) {
	var wg sync.WaitGroup
	for i, k := range listKeys {
		wg.Go(func() { putAsync(t, s, k, Data(uint64(i), i)) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	sorted := slices.Sorted(slices.Values(listKeys))
	expect := func(prefix, startAfter string) []string {
		var keys []string
		for _, k := range sorted {
			if strings.HasPrefix(k, prefix) && k > startAfter {
				keys = append(keys, k)
			}
		}
		return keys
	}
	cases := [][2]string{
		{"", ""}, {"x/", ""}, {"x/y", ""}, {"x/y/", ""}, {"x/y/z", ""}, {"x/y0", ""},
		{"x/y-", ""}, {"x/y.", ""}, {"a", ""}, {"b", ""}, {"u/", ""}, {"p/0", ""},
		{"nomatch", ""}, {"x/nomatch/", ""}, {"a/", ""}, {"x/y/z0/deep/", ""},
		{"", "a"}, {"", "a-"}, {"", "x/y"}, {"", "x/y-z"}, {"", "x/y/"}, {"", "x/y/z"},
		{"", "x/y/zz"}, {"", "x/y0"}, {"", "zzz"}, {"x/", "a"}, {"x/", "x/y.z"},
		{"x/y", "x/y/z0"}, {"x/", "zzz"}, {"p/", "p/0"}, {"p/", "p/0-"}, {"u/", "u/z"},
	}
	for _, c := range cases {
		got := ListKeys(t, s, c[0], c[1])
		if want := expect(c[0], c[1]); !slices.Equal(got, want) {
			t.Errorf("list prefix %q after %q:\n got %q\nwant %q", c[0], c[1], got, want)
		}
	}
	for info, err := range s.List(context.Background(), "x/y/z0/", "") {
		if err != nil {
			t.Fatal(err)
		}
		i := slices.Index(listKeys, info.Key)
		if info.Size != int64(i) || info.ModTime.IsZero() {
			t.Errorf("list entry %+v, want size %d and a modification time", info, i)
		}
	}
	// Stopping early must be clean.
	n := 0
	for _, err := range s.List(context.Background(), "", "") {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}
}

func testListManyDelete(t *testing.T, s storage.Store) {
	ctx := context.Background()
	keys := make([]string, ManyKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("many/%05d", i)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for k := range work {
				putAsync(t, s, k, []byte(k))
			}
		})
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	PutBytes(t, s, "other", []byte("stays"))

	if got := ListKeys(t, s, "many/", ""); !slices.Equal(got, keys) {
		t.Fatalf("list of %d keys: got %d keys, first %q", len(keys), len(got), got[:min(3, len(got))])
	}
	if got := ListKeys(t, s, "", ""); len(got) != len(keys)+1 || got[len(got)-1] != "other" {
		t.Fatalf("list all: got %d keys, want %d ending in \"other\"", len(got), len(keys)+1)
	}
	if got := ListKeys(t, s, "many/", keys[999]); !slices.Equal(got, keys[1000:]) {
		t.Fatalf("list after %s: got %d keys, want %d", keys[999], len(got), len(keys)-1000)
	}
	if got := ListKeys(t, s, "many/00", keys[5]); !slices.Equal(got, keys[6:1000]) {
		t.Fatalf("list prefix many/00 after %s: got %d keys, want %d", keys[5], len(got), 1000-6)
	}

	// Delete in one call, with keys that never existed mixed in.
	del := append(slices.Clone(keys), "many/missing", "nothing/here")
	if err := s.Delete(ctx, del...); err != nil {
		t.Fatalf("delete %d keys: %v", len(del), err)
	}
	if got := ListKeys(t, s, "", ""); !slices.Equal(got, []string{"other"}) {
		t.Fatalf("after delete: list = %d keys (%q...), want [other]", len(got), got[:min(3, len(got))])
	}
	if err := s.Delete(ctx); err != nil {
		t.Fatalf("delete of nothing: %v", err)
	}
}

// failingReader delivers good bytes, then fails, like a source file that
// becomes unreadable in the middle of an upload.
type failingReader struct {
	data   []byte
	failAt int64
}

var errSource = errors.New("source read failed (test)")

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		n := max(0, f.failAt-off)
		copy(p, f.data[off:off+n])
		return int(n), errSource
	}
	return copy(p, f.data[off:]), nil
}

func testFailedPut(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for _, size := range []int{1000, LargeSize} {
		data := Data(3, size)
		bad := &failingReader{data: data, failAt: int64(size) - 10}
		key := fmt.Sprintf("failed/%d", size)
		if err := s.Put(ctx, key, bad, int64(size)); err == nil {
			t.Fatalf("put %s from a failing reader succeeded", key)
		}
		if err := s.Create(ctx, key, bad, int64(size)); err == nil {
			t.Fatalf("create %s from a failing reader succeeded", key)
		}
		_, err := s.Head(ctx, key)
		wantErr(t, "head after failed writes", err, storage.ErrNotFound, key)

		// A failed overwrite leaves the old object alone.
		old := []byte("old")
		PutBytes(t, s, key, old)
		if err := s.Put(ctx, key, bad, int64(size)); err == nil {
			t.Fatalf("put %s from a failing reader succeeded", key)
		}
		equal(t, key+" after a failed overwrite", ReadAll(t, s, key), old)
	}
	if got := ListKeys(t, s, "", ""); !slices.Equal(got, []string{"failed/1000", fmt.Sprintf("failed/%d", LargeSize)}) {
		t.Fatalf("list after failed writes = %q", got)
	}
}

func testContextCanceled(t *testing.T, s storage.Store) {
	data := Data(9, LargeSize)
	PutBytes(t, s, "exists", data)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: got %v, want context.Canceled", what, err)
		}
		if storage.IsTransient(err) {
			t.Errorf("%s with a canceled context: %v is marked transient", what, err)
		}
	}
	check("put", s.Put(ctx, "new", bytes.NewReader(data[:100]), 100))
	check("create", s.Create(ctx, "new", bytes.NewReader(data[:100]), 100))
	_, err := s.Get(ctx, "exists")
	check("get", err)
	_, err = s.GetRange(ctx, "exists", 0, 10)
	check("get range", err)
	_, err = s.Head(ctx, "exists")
	check("head", err)
	check("delete", s.Delete(ctx, "exists"))
	for _, err := range s.List(ctx, "", "") {
		check("list", err)
		break
	}
	if _, err := s.Head(context.Background(), "exists"); err != nil {
		t.Errorf("a canceled delete deleted: %v", err)
	}
	if _, err := s.Head(context.Background(), "new"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a canceled put wrote: head = %v", err)
	}

	// Cancelling in the middle of a read ends the read.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	rc, err := s.Get(ctx, "exists")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if n, err := io.Copy(io.Discard, rc); err == nil {
		t.Errorf("read after cancel went on to the end (%d more bytes)", n)
	}
}

func testInvalidKeys(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for _, key := range []string{"", "/abs", "a//b", "../up", "a/../b", "./a", "a/.", "a/"} {
		err := s.Put(ctx, key, bytes.NewReader([]byte("x")), 1)
		if err == nil || storage.IsTransient(err) {
			t.Errorf("put %q: got %v, want a permanent error", key, err)
		}
		if _, err := s.Get(ctx, key); err == nil || storage.IsTransient(err) {
			t.Errorf("get %q: got %v, want a permanent error", key, err)
		}
	}
	if got := ListKeys(t, s, "", ""); len(got) != 0 {
		t.Errorf("invalid keys were stored: %q", got)
	}
}

// PagedList checks a listing that takes several pages: s must be a store
// whose list pages hold only a few keys (3, say).
func PagedList(t *testing.T, s storage.Store) {
	t.Helper()
	var want []string
	for i := range 10 {
		k := fmt.Sprintf("k%02d", i)
		want = append(want, k)
		PutBytes(t, s, k, nil)
	}
	if got := ListKeys(t, s, "", "k01"); !slices.Equal(got, want[2:]) {
		t.Fatalf("paged list after k01 = %q, want %q", got, want[2:])
	}
}

// Outage takes a server down (stop) in the middle of a write through s,
// which must retry (storage/retry), and brings it back (start) a second
// later: the write completes, and the object reads back.
func Outage(t *testing.T, s storage.Store, stop func(), start func() error) {
	t.Helper()
	stop()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		restarted <- start()
	}()
	data := Data(9, 1<<20)
	if err := s.Put(context.Background(), "during-outage", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("put across an outage: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	equal(t, "during-outage", ReadAll(t, s, "during-outage"), data)
}
