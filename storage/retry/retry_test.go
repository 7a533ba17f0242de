package retry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fault"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// logCounter counts retry log lines.
type logCounter struct {
	mu    sync.Mutex
	lines []string
}

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	l.lines = append(l.lines, line)
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }
func (l *logCounter) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// setup returns a file store behind a fault injector behind retry, with
// short backoffs.
func setup(t *testing.T, o retry.Options) (*retry.Store, *fault.Store, *logCounter) {
	t.Helper()
	backend, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := fault.New(backend)
	log := &logCounter{}
	o.Logger = slog.New(log)
	if o.InitialBackoff == 0 {
		o.InitialBackoff = time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 5 * time.Millisecond
	}
	if o.MaxElapsed == 0 {
		o.MaxElapsed = 10 * time.Second
	}
	return retry.New(f, o), f, log
}

// TestConformance: retrying changes nothing about the contract.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, _, _ := setup(t, retry.Options{})
		return s
	})
}

func TestTransientErrorsRetried(t *testing.T) {
	ctx := context.Background()
	s, f, log := setup(t, retry.Options{})
	data := storagetest.Data(1, 10000)
	h := f.Add(fault.Rule{Ops: fault.Put, Times: 3, Kind: fault.Transient})
	f.Add(fault.Rule{Ops: fault.Head | fault.Delete, Times: 2, Kind: fault.Transient})
	f.Add(fault.Rule{Ops: fault.Get, Times: 1, Kind: fault.Transient, Delay: time.Millisecond})
	storagetest.PutBytes(t, s, "k", data)
	if h.Hits() != 3 || f.Calls(fault.Put) != 4 || log.count() != 3 {
		t.Errorf("hits %d, calls %d, log lines %d; want 3, 4, 3", h.Hits(), f.Calls(fault.Put), log.count())
	}
	if _, err := s.Head(ctx, "k"); err != nil {
		t.Errorf("head: %v", err)
	}
	if !bytes.Equal(storagetest.ReadAll(t, s, "k"), data) {
		t.Error("content differs")
	}
	if err := s.Delete(ctx, "k"); err != nil {
		t.Errorf("delete: %v", err)
	}
}

func TestPermanentNotRetried(t *testing.T) {
	ctx := context.Background()
	s, f, log := setup(t, retry.Options{})
	storagetest.PutBytes(t, s, "data/ab/pack", []byte("x"))
	f.Add(fault.Rule{Ops: fault.Get, Kind: fault.Permanent})
	_, err := s.Get(ctx, "data/ab/pack")
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "get data/ab/pack") {
		t.Fatalf("get: %v", err)
	}
	if f.Calls(fault.Get) != 1 || log.count() != 0 {
		t.Errorf("a permanent failure was retried: %d calls, %d log lines", f.Calls(fault.Get), log.count())
	}
	// Not found is an answer, not a failure.
	_, err = s.Head(ctx, "missing")
	if !errors.Is(err, storage.ErrNotFound) || f.Calls(fault.Head) != 1 {
		t.Errorf("head of a missing key: %v after %d calls", err, f.Calls(fault.Head))
	}
}

func TestGiveUp(t *testing.T) {
	s, f, log := setup(t, retry.Options{MaxElapsed: 100 * time.Millisecond, InitialBackoff: 5 * time.Millisecond,
		MaxBackoff: 20 * time.Millisecond})
	f.Add(fault.Rule{Ops: fault.Put, Kind: fault.Transient})
	err := s.Put(context.Background(), "wal/0001", bytes.NewReader([]byte("x")), 1)
	var gu *retry.GiveUpError
	if !errors.As(err, &gu) || storage.IsTransient(err) || !errors.Is(err, fault.ErrInjected) {
		t.Fatalf("put against a failing store: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"put wal/0001", "gave up after", s.String(), "injected fault"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not contain %q", msg, want)
		}
	}
	if gu.Attempts < 2 || gu.Attempts != f.Calls(fault.Put) || log.count() != gu.Attempts-1 {
		t.Errorf("attempts %d, calls %d, log lines %d", gu.Attempts, f.Calls(fault.Put), log.count())
	}
}

func TestContextCancelStopsRetrying(t *testing.T) {
	s, f, _ := setup(t, retry.Options{MaxElapsed: time.Hour, InitialBackoff: time.Hour, MaxBackoff: time.Hour})
	f.Add(fault.Rule{Ops: fault.Put, Kind: fault.Transient})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for f.Calls(fault.Put) == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	err := s.Put(ctx, "k", bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "injected fault") {
		t.Fatalf("put canceled while waiting to retry: %v", err)
	}
	if f.Calls(fault.Put) != 1 {
		t.Errorf("%d attempts", f.Calls(fault.Put))
	}
}

// TestBodiesResume breaks bodies in every way the fault store can: each
// read must still deliver exactly the object.
func TestBodiesResume(t *testing.T) {
	ctx := context.Background()
	data := storagetest.Data(2, 1<<20)
	for _, tc := range []struct {
		name  string
		rules []fault.Rule
	}{
		{"truncated get", []fault.Rule{{Ops: fault.Get, Times: 1, Kind: fault.Truncate, After: 1000}}},
		{"truncated resumes", []fault.Rule{{Ops: fault.Get | fault.GetRange, Times: 3, Kind: fault.Truncate, After: 100 << 10}}},
		{"dropped connections", []fault.Rule{{Ops: fault.Get | fault.GetRange, Times: 4, Kind: fault.Drop, After: 64 << 10}}},
		{"dropped at once", []fault.Rule{{Ops: fault.Get, Times: 1, Kind: fault.Drop, After: 0}}},
		{"failed resume", []fault.Rule{
			{Ops: fault.Get, Times: 1, Kind: fault.Drop, After: 5000},
			{Ops: fault.GetRange, Times: 2, Kind: fault.Transient},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, f, log := setup(t, retry.Options{})
			storagetest.PutBytes(t, s, "pack", data)
			for _, r := range tc.rules {
				f.Add(r)
			}
			if got := storagetest.ReadAll(t, s, "pack"); !bytes.Equal(got, data) {
				t.Fatalf("got %d bytes, different from the %d stored", len(got), len(data))
			}
			if log.count() == 0 {
				t.Error("no resume was logged")
			}
			// Ranged reads resume within their range.
			f.Clear()
			for _, r := range tc.rules {
				r.Ops = fault.GetRange
				f.Add(r)
			}
			rc, err := s.GetRange(ctx, "pack", 1000, 300000)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, data[1000:301000]) {
				t.Fatalf("ranged read: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestResumeBound(t *testing.T) {
	s, f, _ := setup(t, retry.Options{MaxResumes: 3})
	storagetest.PutBytes(t, s, "pack", storagetest.Data(3, 10000))
	f.Add(fault.Rule{Ops: fault.Get | fault.GetRange, Kind: fault.Drop, After: 0})
	rc, err := s.Get(context.Background(), "pack")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = io.ReadAll(rc)
	if err == nil || storage.IsTransient(err) || !strings.Contains(err.Error(), "pack") ||
		!strings.Contains(err.Error(), "3 resumes") {
		t.Fatalf("read that never progresses: %v", err)
	}
	if f.Calls(fault.GetRange) != 3 {
		t.Errorf("%d resumes, want 3", f.Calls(fault.GetRange))
	}
}

// TestOutage: the store goes away for a while during writes, reads and a
// listing, and comes back; everything completes.
func TestOutage(t *testing.T) {
	ctx := context.Background()
	s, f, log := setup(t, retry.Options{})
	var keys []string
	for i := range 30 {
		k := string(rune('a'+i/10)) + "/" + string(rune('0'+i%10))
		keys = append(keys, k)
		storagetest.PutBytes(t, s, k, []byte(k))
	}
	data := storagetest.Data(4, 1<<20)
	storagetest.PutBytes(t, s, "pack", data)

	f.Outage(100 * time.Millisecond)
	storagetest.PutBytes(t, s, "during", []byte("outage"))

	rc, err := s.Get(ctx, "pack")
	if err != nil {
		t.Fatal(err)
	}
	half := make([]byte, len(data)/2)
	if _, err := io.ReadFull(rc, half); err != nil {
		t.Fatal(err)
	}
	f.Outage(100 * time.Millisecond)
	rest, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(append(half, rest...), data) {
		t.Fatalf("read across an outage: %v", err)
	}

	// A listing broken by an outage resumes after the last key it gave.
	var got []string
	for info, err := range s.List(ctx, "", "") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, info.Key)
		if len(got) == 10 {
			f.Outage(50 * time.Millisecond)
		}
	}
	want := slices.Sorted(slices.Values(append(keys, "during", "pack")))
	if !slices.Equal(got, want) {
		t.Fatalf("list across an outage:\n got %q\nwant %q", got, want)
	}
	if log.count() < 3 {
		t.Errorf("only %d retries logged", log.count())
	}
}

// TestListDropsResume: a listing that breaks twice still yields each key
// once, in order.
func TestListDropsResume(t *testing.T) {
	s, f, _ := setup(t, retry.Options{})
	var keys []string
	for i := range 20 {
		k := string(rune('a'+i)) + "-key"
		keys = append(keys, k)
		storagetest.PutBytes(t, s, k, nil)
	}
	f.Add(fault.Rule{Ops: fault.List, Times: 2, Kind: fault.Drop, After: 7})
	if got := storagetest.ListKeys(t, s, "", ""); !slices.Equal(got, keys) {
		t.Fatalf("got %q", got)
	}
	if f.Calls(fault.List) != 3 {
		t.Errorf("%d list calls, want 3", f.Calls(fault.List))
	}
}

// TestCreateLostAck: the store wrote the object but the answer was lost;
// the retry finds the key taken by identical bytes and reports success. A
// different object under the key is still ErrExists.
func TestCreateLostAck(t *testing.T) {
	ctx := context.Background()
	s, f, _ := setup(t, retry.Options{})
	data := storagetest.Data(5, 3<<20)
	f.Add(fault.Rule{Ops: fault.Create, Times: 1, Kind: fault.LoseAck})
	if err := s.Create(ctx, "snapshots/1", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("create whose first answer was lost: %v", err)
	}
	if f.Calls(fault.Create) != 2 {
		t.Errorf("%d create calls, want 2", f.Calls(fault.Create))
	}

	other := storagetest.Data(6, len(data))
	f.Add(fault.Rule{Ops: fault.Create, Times: 1, Kind: fault.Transient})
	err := s.Create(ctx, "snapshots/1", bytes.NewReader(other), int64(len(other)))
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("create of different bytes after a transient failure: %v, want ErrExists", err)
	}
	// Without an earlier failure, no comparison: plain ErrExists.
	err = s.Create(ctx, "snapshots/1", bytes.NewReader(data), int64(len(data)))
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("create of an existing key: %v", err)
	}
}
