package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/repo/walarchive/walarchivetest"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

const (
	sys     = 7300000000000000002
	segSize = 1 << 20
)

var cluster = walarchive.ClusterInfo{SystemID: sys, SegSize: segSize, BlockSize: pg.DefaultWALBlockSize}

func segName(tli pg.TimelineID, seg pg.SegNo) string { return pg.SegmentName(tli, seg, segSize) }

func segment(tli pg.TimelineID, seg pg.SegNo, seed uint64) []byte {
	return walarchivetest.Segment(sys, tli, seg, segSize, seed)
}

// counting counts requests to a store.
type counting struct {
	storage.Store
	gets, lists, creates atomic.Int64
	hold                 func(key string) error // if set, called before each Get; an error fails it
}

func (c *counting) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.gets.Add(1)
	if c.hold != nil {
		if err := c.hold(key); err != nil {
			return nil, err
		}
	}
	return c.Store.Get(ctx, key)
}

func (c *counting) List(ctx context.Context, prefix, after string) iter.Seq2[storage.ObjectInfo, error] {
	c.lists.Add(1)
	return c.Store.List(ctx, prefix, after)
}

func (c *counting) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	c.creates.Add(1)
	return c.Store.Create(ctx, key, r, size)
}

type env struct {
	store  *counting
	repo   *repo.Repo
	arch   *walarchive.Archive
	pgdata string
}

// newEnv makes a repository and a fake data directory: pg_wal with
// archive_status, a global/pg_control (any bytes: only its identity is
// used here) and a postmaster.pid naming this process.
func newEnv(t *testing.T) *env {
	t.Helper()
	st := &counting{Store: mem.New()}
	r, _ := walarchivetest.Repo(t, st)
	pgdata := filepath.Join(t.TempDir(), "data")
	for _, d := range []string{"pg_wal/archive_status", "global"} {
		if err := os.MkdirAll(filepath.Join(pgdata, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(pgdata, "global", "pg_control"), []byte("control"))
	writeFile(t, filepath.Join(pgdata, "postmaster.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"))
	return &env{store: st, repo: r, arch: walarchive.FromRepo(r, walarchive.Options{}), pgdata: pgdata}
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// ready puts a file into pg_wal and marks it ready, as PostgreSQL does.
func (e *env) ready(t testing.TB, name string, data []byte) {
	t.Helper()
	writeFile(t, filepath.Join(e.pgdata, "pg_wal", name), data)
	writeFile(t, filepath.Join(e.pgdata, "pg_wal", "archive_status", name+".ready"), nil)
}

func (e *env) archived(t testing.TB, name string) []byte {
	t.Helper()
	b, _, err := e.arch.ReadFile(context.Background(), sys, name)
	if err != nil {
		t.Fatalf("read %s from the archive: %v", name, err)
	}
	return b
}

func TestPush(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	p := NewPusher(e.arch, cluster, nil)
	name := segName(1, 3)
	seg := segment(1, 3, 1)
	e.ready(t, name, seg)
	path := filepath.Join(e.pgdata, "pg_wal", name)
	res, err := p.Push(ctx, path)
	if err != nil || !res.Created {
		t.Fatalf("push: %+v %v", res, err)
	}
	if !bytes.Equal(e.archived(t, name), seg) {
		t.Fatal("archived bytes differ")
	}
	// Again (PostgreSQL after a crash): success, nothing new.
	if res, err := p.Push(ctx, path); err != nil || res.Created {
		t.Fatalf("re-push: %+v %v", res, err)
	}
	// A different segment under the name: refused, archive unchanged.
	writeFile(t, path, segment(1, 3, 2))
	if _, err := p.Push(ctx, path); !errors.Is(err, walarchive.ErrConflict) {
		t.Fatalf("different: %v", err)
	}
	if !bytes.Equal(e.archived(t, name), seg) {
		t.Fatal("the archived segment was overwritten")
	}
	// Another cluster's segment: refused before any upload.
	other := segName(1, 4)
	writeFile(t, filepath.Join(e.pgdata, "pg_wal", other), walarchivetest.Segment(sys+1, 1, 4, segSize, 1))
	before := e.store.creates.Load()
	if _, err := p.Push(ctx, filepath.Join(e.pgdata, "pg_wal", other)); !errors.Is(err, walarchive.ErrForeign) {
		t.Fatalf("foreign: %v", err)
	}
	if e.store.creates.Load() != before {
		t.Fatal("a refused file was uploaded")
	}
	// History files.
	h := filepath.Join(e.pgdata, "pg_wal", "00000002.history")
	writeFile(t, h, []byte("1\t0/400000\tno recovery target specified\n"))
	if _, err := p.Push(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Push(ctx, filepath.Join(e.pgdata, "pg_wal", "missing")); err == nil {
		t.Fatal("pushing a missing file succeeded")
	}
}

// runAgent starts an agent and returns a function that stops it and waits.
func runAgent(t *testing.T, e *env, opts AgentOptions) (*Agent, func()) {
	t.Helper()
	return runAgentWith(t, e, NewPusher(e.arch, cluster, nil), opts)
}

// runAgentWith is runAgent with the agent archiving through p.
func runAgentWith(t *testing.T, e *env, p *Pusher, opts AgentOptions) (*Agent, func()) {
	t.Helper()
	opts.PGData = e.pgdata
	if opts.Socket == "" {
		// t.TempDir paths can be too long for a socket.
		d, err := os.MkdirTemp("", "agent")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		opts.Socket = filepath.Join(d, "s")
	}
	if opts.Rescan == 0 {
		opts.Rescan = 20 * time.Millisecond
	}
	a, err := NewAgent(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "the agent's socket", func() bool {
		_, err := AskAgent(context.Background(), opts.Socket, Request{Op: "ping"}, time.Second)
		return err == nil
	})
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
	return a, stop
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func push(t testing.TB, a *Agent, e *env, name string) (Response, error) {
	t.Helper()
	return AskAgent(context.Background(), a.opts.Socket, Request{Op: "push", Name: name, PGData: e.pgdata}, 30*time.Second)
}

func TestAgent(t *testing.T) {
	e := newEnv(t)
	segs := map[string][]byte{}
	for i := pg.SegNo(1); i <= 6; i++ {
		segs[segName(1, i)] = segment(1, i, uint64(i))
		e.ready(t, segName(1, i), segs[segName(1, i)])
	}
	a, stop := runAgent(t, e, AgentOptions{Parallel: 3})
	defer stop()
	// Uploaded ahead, without being asked.
	waitFor(t, "uploads ahead", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		n := 0
		for _, en := range a.entries {
			if en.state == stateDurable {
				n++
			}
		}
		return n == len(segs)
	})
	for name, data := range segs {
		resp, err := push(t, a, e, name)
		if err != nil || resp.Result != "durable" {
			t.Fatalf("push %s: %+v %v", name, resp, err)
		}
		if !bytes.Equal(e.archived(t, name), data) {
			t.Fatalf("%s: archived bytes differ", name)
		}
	}
	// A file the agent has not seen yet (no .ready scanned): done on request.
	late := segName(1, 7)
	writeFile(t, filepath.Join(e.pgdata, "pg_wal", late), segment(1, 7, 7))
	if resp, err := push(t, a, e, late); err != nil || resp.Result != "created" {
		t.Fatalf("push %s: %+v %v", late, resp, err)
	}
	// PostgreSQL's status files are untouched: still .ready, no .done.
	for name := range segs {
		if _, err := os.Stat(filepath.Join(e.pgdata, "pg_wal", "archive_status", name+".ready")); err != nil {
			t.Fatalf("status file of %s: %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(e.pgdata, "pg_wal", "archive_status", name+".done")); err == nil {
			t.Fatalf("the agent made %s.done", name)
		}
	}
	// Requests it must refuse.
	if _, err := AskAgent(context.Background(), a.opts.Socket, Request{Op: "push", Name: late, PGData: t.TempDir()}, time.Second); !isKind(err, KindPGData) {
		t.Errorf("other data directory: %v", err)
	}
	if _, err := push(t, a, e, "../../etc/passwd"); !isKind(err, KindInvalid) {
		t.Errorf("path: %v", err)
	}
	if _, err := push(t, a, e, segName(1, 99)); !isKind(err, KindMissing) {
		t.Errorf("missing file: %v", err)
	}
}

func isKind(err error, kind string) bool {
	var ae *AgentError
	return errors.As(err, &ae) && ae.Kind == kind
}

// A file that cannot be archived (a different one is there) holds back the
// files after it: uploading them would leave a hole PostgreSQL, stuck on
// that file, cannot fill. A client's request still gets an answer.
func TestAgentStopsAtPermanentFailure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.arch.Put(ctx, cluster, segName(1, 3), segment(1, 3, 99)); err != nil {
		t.Fatal(err)
	}
	for i := pg.SegNo(3); i <= 5; i++ {
		e.ready(t, segName(1, i), segment(1, i, uint64(i)))
	}
	a, stop := runAgent(t, e, AgentOptions{Parallel: 1})
	defer stop()
	if _, err := push(t, a, e, segName(1, 3)); !isKind(err, KindConflict) {
		t.Fatalf("push of the conflicting file: %v", err)
	}
	// Nothing after it may be picked, however often the agent looks.
	a.mu.Lock()
	if e := a.next(); e != nil {
		a.mu.Unlock()
		t.Fatalf("the agent would upload %s past the failed file", e.name)
	}
	a.mu.Unlock()
	for _, name := range []string{segName(1, 4), segName(1, 5)} {
		key, _ := walarchive.Key(sys, name)
		if _, err := e.store.Head(ctx, key); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("%s was uploaded past the failed file: %v", name, err)
		}
	}
	// Asked for, it is archived.
	if _, err := push(t, a, e, segName(1, 4)); err != nil {
		t.Fatal(err)
	}
}

func TestAgentSecondInstanceRefused(t *testing.T) {
	e := newEnv(t)
	a, stop := runAgent(t, e, AgentOptions{})
	defer stop()
	b, err := NewAgent(NewPusher(e.arch, cluster, nil), AgentOptions{PGData: e.pgdata, Socket: a.opts.Socket})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Run(context.Background()); err == nil {
		t.Fatal("a second agent started")
	}
}

func newFetcher(t *testing.T, e *env, opts FetchOptions) *Fetcher {
	t.Helper()
	opts.PGData = e.pgdata
	opts.Cluster = cluster
	opts.RepoID = e.repo.Config().ID
	if opts.SpoolDir == "" && !opts.NoSpool {
		opts.SpoolDir = filepath.Join(filepath.Dir(e.pgdata), "spool")
	}
	f, err := NewFetcher(e.arch, opts)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (e *env) put(t testing.TB, name string, data []byte) {
	t.Helper()
	if _, err := e.arch.Put(context.Background(), cluster, name, data); err != nil {
		t.Fatal(err)
	}
}

func TestFetch(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	seg := segment(1, 3, 1)
	e.put(t, segName(1, 3), seg)
	e.put(t, "00000002.history", []byte("1\t0/400000\tx\n"))
	f := newFetcher(t, e, FetchOptions{})
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	res, err := f.Fetch(ctx, segName(1, 3), dest)
	if err != nil || res.Source != "archive" {
		t.Fatalf("fetch: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, seg) {
		t.Fatal("fetched bytes differ")
	}
	// Nothing else was written into pg_wal.
	ents, _ := os.ReadDir(filepath.Join(e.pgdata, "pg_wal"))
	if len(ents) != 2 { // archive_status and RECOVERYXLOG
		t.Fatalf("pg_wal holds %d entries", len(ents))
	}
	if _, err := f.Fetch(ctx, "00000002.history", filepath.Join(e.pgdata, "pg_wal", "RECOVERYHISTORY")); err != nil {
		t.Fatal(err)
	}

	// Not there: answered from a listing, never a GET. A fresh listing from
	// the spool answers without any request at all.
	gets, lists := e.store.gets.Load(), e.store.lists.Load()
	f2 := newFetcher(t, e, FetchOptions{ListMaxAge: time.Hour})
	for _, name := range []string{segName(1, 4), segName(2, 3), "00000003.history"} {
		_, err := f2.Fetch(ctx, name, dest)
		var na *walarchive.NotArchivedError
		if !errors.As(err, &na) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if g := e.store.gets.Load() - gets; g != 0 {
		t.Errorf("%d GETs for files that are not there", g)
	}
	if l := e.store.lists.Load() - lists; l != 1 { // only 0000000200000000/ was not cached
		t.Errorf("%d LISTs, want 1", l)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, seg) {
		t.Fatal("a failed fetch touched the destination")
	}
	// An old listing does not answer "not there": the segment archived
	// since is found.
	e.put(t, segName(1, 4), segment(1, 4, 1))
	f3 := newFetcher(t, e, FetchOptions{ListMaxAge: time.Nanosecond})
	if _, err := f3.Fetch(ctx, segName(1, 4), dest); err != nil {
		t.Fatalf("segment archived after the listing: %v", err)
	}
}

// TestFetchNoSpool: without a spool a segment that is there costs one GET
// and no LIST; a missing one is still answered from a listing, its
// .partial served with Partial, and the destination left alone.
func TestFetchNoSpool(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	seg := segment(1, 3, 1)
	e.put(t, segName(1, 3), seg)
	part := segment(1, 5, 1)
	e.put(t, segName(1, 5)+".partial", part)
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	f := newFetcher(t, e, FetchOptions{NoSpool: true, Partial: true})
	gets, lists := e.store.gets.Load(), e.store.lists.Load()
	res, err := f.Fetch(ctx, segName(1, 3), dest)
	if err != nil || res.Source != "archive" || res.Size != int64(len(seg)) {
		t.Fatalf("fetch: %+v %v", res, err)
	}
	if g, l := e.store.gets.Load()-gets, e.store.lists.Load()-lists; g != 1 || l != 0 {
		t.Errorf("a segment that is there: %d GETs and %d LISTs, want 1 and 0", g, l)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, seg) {
		t.Fatal("fetched bytes differ")
	}
	var na *walarchive.NotArchivedError
	if _, err := f.Fetch(ctx, segName(1, 4), dest); !errors.As(err, &na) {
		t.Fatalf("missing segment: %v", err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, seg) {
		t.Fatal("a failed fetch touched the destination")
	}
	if ents, _ := os.ReadDir(filepath.Join(e.pgdata, "pg_wal")); len(ents) != 2 { // archive_status and RECOVERYXLOG
		t.Fatalf("pg_wal holds %d entries", len(ents))
	}
	res, err = f.Fetch(ctx, segName(1, 5), dest)
	if err != nil || res.Name != segName(1, 5)+".partial" {
		t.Fatalf("partial: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, part) {
		t.Fatal("partial bytes differ")
	}
}

func TestFetchPartial(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	part := segment(1, 5, 1)
	e.put(t, segName(1, 5)+".partial", part)
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	var na *walarchive.NotArchivedError
	if _, err := newFetcher(t, e, FetchOptions{}).Fetch(ctx, segName(1, 5), dest); !errors.As(err, &na) {
		t.Fatalf("partial served by default: %v", err)
	}
	if _, err := newFetcher(t, e, FetchOptions{}).Fetch(ctx, segName(1, 5)+".partial", dest); !errors.As(err, &na) {
		t.Fatalf("partial served by name by default: %v", err)
	}
	res, err := newFetcher(t, e, FetchOptions{Partial: true}).Fetch(ctx, segName(1, 5), dest)
	if err != nil || res.Name != segName(1, 5)+".partial" {
		t.Fatalf("with Partial: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, part) {
		t.Fatal("partial bytes differ")
	}
}

func TestFetchCorrupt(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	name := segName(1, 3)
	e.put(t, name, segment(1, 3, 1))
	key, _ := walarchive.Key(sys, name)
	rc, _ := e.store.Get(ctx, key)
	b, _ := io.ReadAll(rc)
	rc.Close()
	b[len(b)-50] ^= 1
	e.store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	_, err := newFetcher(t, e, FetchOptions{}).Fetch(ctx, name, dest)
	if !errors.Is(err, walarchive.ErrCorrupt) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a corrupt object reached the destination")
	}
	if ents, _ := os.ReadDir(filepath.Join(e.pgdata, "pg_wal")); len(ents) != 1 {
		t.Fatalf("pg_wal holds %d entries (a temporary file left?)", len(ents))
	}
}

func TestPrefetch(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := pg.SegNo(1); i <= 10; i++ {
		e.put(t, segName(1, i), segment(1, i, uint64(i)))
	}
	f := newFetcher(t, e, FetchOptions{Prefetch: 4, Poll: time.Millisecond})
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	if _, err := f.Fetch(ctx, segName(1, 1), dest); err != nil {
		t.Fatal(err)
	}
	if !f.PrefetcherNeeded() {
		t.Fatal("no prefetcher needed?")
	}
	done := make(chan error, 1)
	start := func() {
		go func() { done <- newFetcher(t, e, FetchOptions{Prefetch: 4, Poll: time.Millisecond}).Prefetch(ctx) }()
	}
	start()
	// PrefetcherNeeded probes the lock by taking it for an instant; a
	// prefetcher starting in that instant finds it taken and returns at
	// once, and the next wal-fetch starts another. So does this test.
	waitFor(t, "the prefetcher's lock", func() bool {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the prefetcher failed before it took its lock: %v", err)
			}
			start()
		default:
		}
		return !f.PrefetcherNeeded()
	})
	for i := pg.SegNo(2); i <= 10; i++ {
		name := segName(1, i)
		waitFor(t, name+" in the spool", func() bool { return f.sp.has(name) })
		res, err := f.Fetch(ctx, name, dest)
		if err != nil || res.Source != "spool" {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, segment(1, i, uint64(i))) {
			t.Fatalf("%s: bytes differ", name)
		}
		// Up to 4 ahead, and soon no more than the last few asked for
		// (keepBehind) behind.
		ahead := 0
		for _, n := range f.sp.files() {
			if n > name {
				ahead++
			}
		}
		if ahead > 4 {
			t.Fatalf("spool holds %d files ahead of %s, more than the 4 asked for", ahead, name)
		}
		waitFor(t, fmt.Sprintf("no file more than %d behind %s", keepBehind, name), func() bool {
			for _, n := range f.sp.files() {
				if n <= name && !recentlyAsked(n, name, segSize) {
					return false
				}
			}
			return true
		})
	}
	// The server goes away: the prefetcher empties the spool and exits.
	os.Remove(filepath.Join(e.pgdata, "postmaster.pid"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(f.sp.files()); n != 0 {
		t.Fatalf("%d files left in the spool", n)
	}
}

// One slow download does not hold the others back: while the GET of the
// next segment hangs, the prefetcher spools the ones after it.
func TestPrefetchPipelined(t *testing.T) {
	release := make(chan struct{})
	slow := segName(1, 2)
	f, _, stop := startPrefetch(t, 8, FetchOptions{Prefetch: 6, Parallel: 2}, func(key string) error {
		if strings.Contains(key, slow) {
			<-release
		}
		return nil
	})
	for i := pg.SegNo(3); i <= 7; i++ {
		name := segName(1, i)
		waitFor(t, name+" spooled while "+slow+" hangs", func() bool { return f.sp.has(name) })
	}
	close(release)
	waitFor(t, slow+" spooled", func() bool { return f.sp.has(slow) })
	stop()
}

// A segment the prefetcher spooled is not downloaded again once a
// wal-fetch has taken it out of the spool, even before that call records
// the request; it is when recovery goes back to it.
func TestPrefetchOnce(t *testing.T) {
	name := segName(1, 2)
	gets, hold := countGets(name, nil)
	f, dest, stop := startPrefetch(t, 4, FetchOptions{Prefetch: 2}, hold)
	waitFor(t, name+" spooled", func() bool { return f.sp.has(name) })
	// Taken by a wal-fetch that has not recorded the request yet.
	if err := os.Rename(f.sp.path("seg", name), dest); err != nil {
		t.Fatal(err)
	}
	os.Remove(f.sp.path("seg", name+".meta"))
	time.Sleep(100 * time.Millisecond)
	if n := gets.Load(); n != 1 {
		t.Fatalf("%s downloaded %d times, want once", name, n)
	}
	// Recovery asks for segment 1 again (a restart): 2 is wanted again.
	f.sp.setState(segName(1, 2))
	waitFor(t, "the prefetcher to follow", func() bool { return f.sp.has(segName(1, 4)) })
	f.sp.setState(segName(1, 1))
	waitFor(t, name+" spooled again", func() bool { return f.sp.has(name) })
	stop()
}

// A segment whose download fails is tried again after a pause, not in a
// loop, while the prefetcher goes on with the segments after it.
func TestPrefetchFailureBacksOff(t *testing.T) {
	bad := segName(1, 2)
	gets, hold := countGets(bad, errors.New("injected: unreadable"))
	f, _, stop := startPrefetch(t, 4, FetchOptions{Prefetch: 3}, hold)
	for _, name := range []string{segName(1, 3), segName(1, 4)} {
		waitFor(t, name+" spooled past a failing one", func() bool { return f.sp.has(name) })
	}
	time.Sleep(prefetchRetry / 2)
	if n := gets.Load(); n != 1 {
		t.Errorf("a failing download tried %d times within %s, want once", n, prefetchRetry/2)
	}
	waitFor(t, "a retry", func() bool { return gets.Load() >= 2 })
	stop()
}

// countGets returns a hold for startPrefetch that counts the GETs of
// segment name and fails each with err (nil: lets them through).
func countGets(name string, err error) (*atomic.Int64, func(key string) error) {
	var n atomic.Int64
	return &n, func(key string) error {
		if !strings.Contains(key, name) {
			return nil
		}
		n.Add(1)
		return err
	}
}

// startPrefetch archives segments 1 to n, has a Fetcher with opts (polling
// every millisecond) deliver segment 1 into pg_wal, then calls hold before
// every GET and starts a prefetcher with the same options. It returns the
// Fetcher, the destination recovery reads, and stop, which ends the
// prefetcher and fails the test on its error.
func startPrefetch(t *testing.T, n pg.SegNo, opts FetchOptions, hold func(key string) error) (*Fetcher, string, func()) {
	t.Helper()
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for i := pg.SegNo(1); i <= n; i++ {
		e.put(t, segName(1, i), segment(1, i, uint64(i)))
	}
	opts.Poll = time.Millisecond
	f := newFetcher(t, e, opts)
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	if _, err := f.Fetch(ctx, segName(1, 1), dest); err != nil {
		t.Fatal(err)
	}
	e.store.hold = hold
	done := make(chan error, 1)
	go func() { done <- newFetcher(t, e, opts).Prefetch(ctx) }()
	return f, dest, func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// The spool's file list holds spooled WAL files only: not meta files, and
// not the temporary files of downloads in flight, which the prefetcher
// deletes when it finds them in the list and not in its window.
func TestSpoolFiles(t *testing.T) {
	e := newEnv(t)
	f := newFetcher(t, e, FetchOptions{})
	name := segName(1, 5)
	for _, n := range []string{name, name + ".meta", name + ".meta.tmp-7", "." + segName(1, 6) + ".tmp-7", segName(1, 6) + ".meta.tmp-7"} {
		writeFile(t, f.sp.path("seg", n), []byte("x"))
	}
	if got := f.sp.files(); len(got) != 1 || got[0] != name {
		t.Fatalf("spool files %q, want only %s", got, name)
	}
}

// A spool left by an earlier restore never serves its files: here the data
// directory was restored again (a new pg_control) from another repository
// whose segment of the same name holds other bytes.
func TestSpoolFromEarlierRestore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	name := segName(1, 3)
	old := segment(1, 3, 1)
	e.put(t, name, old)
	f := newFetcher(t, e, FetchOptions{})
	ents, _ := e.arch.ListDir(ctx, sys, name[:16])
	if err := f.spoolOne(ctx, wanted{name: name, obj: objInfo{Size: ents[0].Size, ModTime: ents[0].ModTime}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.listing(ctx, name[:16], true); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	if res, err := f.Fetch(ctx, name, dest); err != nil || res.Source != "spool" {
		t.Fatalf("same restore: %+v %v", res, err)
	}

	// A new restore into the same path, from a new repository.
	os.Remove(filepath.Join(e.pgdata, "global", "pg_control"))
	writeFile(t, filepath.Join(e.pgdata, "global", "pg_control"), []byte("control 2"))
	e2 := *e
	st, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e2.store = &counting{Store: st}
	e2.repo, _ = walarchivetest.Repo(t, e2.store)
	e2.arch = walarchive.FromRepo(e2.repo, walarchive.Options{})
	fresh := segment(1, 3, 2)
	e2.put(t, name, fresh)
	f2 := newFetcher(t, &e2, FetchOptions{SpoolDir: f.sp.dir})
	res, err := f2.Fetch(ctx, name, dest)
	if err != nil || res.Source != "archive" {
		t.Fatalf("new restore: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, fresh) {
		t.Fatal("served the earlier restore's file")
	}

	// Same restore, same repository, but the spooled bytes were damaged
	// (a crash mid-write, a full disk): fetched again, never served.
	spoolListed(t, ctx, f2, name)
	for _, damage := range []func(string){
		func(p string) { os.Truncate(p, 0) },
		func(p string) { b, _ := os.ReadFile(p); b[100] ^= 1; os.WriteFile(p, b, 0o600) },
	} {
		damage(f2.sp.path("seg", name))
		res, err := f2.Fetch(ctx, name, dest)
		if err != nil || res.Source != "archive" {
			t.Fatalf("damaged spool: %+v %v", res, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, fresh) {
			t.Fatal("served damaged spooled bytes")
		}
		spoolListed(t, ctx, f2, name)
	}
}

// serveSetup is a repository holding one segment, a Fetcher whose spool
// has listed it, and what ServeSpooled needs to serve it.
type serveSetup struct {
	e           *env
	f           *Fetcher
	opts        FetchOptions
	store, dest string
	name        string
	data        []byte
}

func newServeSetup(t *testing.T) serveSetup {
	t.Helper()
	e := newEnv(t)
	name := segName(1, 3)
	data := segment(1, 3, 1)
	e.put(t, name, data)
	f := newFetcher(t, e, FetchOptions{})
	if _, err := f.listing(context.Background(), name[:16], true); err != nil {
		t.Fatal(err)
	}
	opts := FetchOptions{PGData: e.pgdata, Cluster: cluster, SpoolDir: f.sp.dir}
	store := e.arch.Store().String()
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	return serveSetup{e: e, f: f, opts: opts, store: store, dest: dest, name: name, data: data}
}

// A call that arrives while the prefetcher downloads its segment waits for
// that download instead of fetching the segment again; an abandoned
// download (a killed prefetcher's temporary file) is not waited for.
func TestServeSpooledWaitsForDownload(t *testing.T) {
	ss := newServeSetup(t)
	f, opts, store, dest, name, data := ss.f, ss.opts, ss.store, ss.dest, ss.name, ss.data
	ctx := context.Background()

	tmp := f.sp.path("seg", "."+name+".tmp-1")
	writeFile(t, tmp, []byte("the first bytes"))
	errc := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		err := f.spoolOne(ctx, wanted{name: name, obj: f.sp.listing(name[:16]).Entries[name]})
		os.Remove(tmp)
		errc <- err
	}()
	if !ServeSpooled(opts, store, name, dest) {
		t.Fatal("a call during the prefetcher's download did not wait for it")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
		t.Fatal("served bytes differ")
	}

	os.Remove(dest)
	f.sp.remove(name)
	writeFile(t, tmp, []byte("the first bytes"))
	old := time.Now().Add(-time.Minute)
	os.Chtimes(tmp, old, old)
	start := time.Now()
	if ServeSpooled(opts, store, name, dest) {
		t.Fatal("served a segment that is not in the spool")
	}
	if d := time.Since(start); d >= inFlightWait {
		t.Fatalf("waited %s for an abandoned download", d)
	}
}

// ServeSpooled answers from a warm spool without the repository, and only
// for this restore's intact files: a damaged file, another restore's spool
// or another store's spool falls back to the regular fetch.
func TestServeSpooled(t *testing.T) {
	ss := newServeSetup(t)
	e, f, opts, store, dest, name, data := ss.e, ss.f, ss.opts, ss.store, ss.dest, ss.name, ss.data
	ctx := context.Background()

	spoolListed(t, ctx, f, name)
	c := e.store
	requests := func() int64 { return c.gets.Load() + c.lists.Load() + c.creates.Load() }
	before := requests()
	if !ServeSpooled(opts, store, name, dest) {
		t.Fatal("a warm spool was not served")
	}
	if n := requests(); n != before {
		t.Fatalf("serving from the spool made %d storage requests", n-before)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
		t.Fatal("served bytes differ")
	}
	if st, ok := f.sp.state(); !ok || st.Name != name {
		t.Fatalf("the prefetcher was not told what recovery asked for: %+v", st)
	}
	// Recovery asks for its last segment again when it ends: the spool
	// kept it, as a second link, and serves it again.
	os.Remove(dest)
	if !ServeSpooled(opts, store, name, dest) {
		t.Fatal("the segment asked for last was not served a second time")
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
		t.Fatal("served bytes differ the second time")
	}
	if n := requests(); n != before {
		t.Fatalf("serving from the spool made %d storage requests", n-before)
	}
	f.sp.remove(name)

	spoolListed(t, ctx, f, name)
	if ServeSpooled(opts, "s3://another/store", name, dest) {
		t.Fatal("served the spool of another store")
	}
	if ServeSpooled(FetchOptions{PGData: e.pgdata, Cluster: cluster, SpoolDir: f.sp.dir, NoSpool: true}, store, name, dest) {
		t.Fatal("served with NoSpool")
	}
	b, _ := os.ReadFile(f.sp.path("seg", name))
	b[100] ^= 1
	os.WriteFile(f.sp.path("seg", name), b, 0o600)
	os.Remove(dest)
	if ServeSpooled(opts, store, name, dest) {
		t.Fatal("served a damaged spooled file")
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("a damaged spooled file reached pg_wal")
	}

	spoolListed(t, ctx, f, name)
	os.Remove(filepath.Join(e.pgdata, "global", "pg_control"))
	writeFile(t, filepath.Join(e.pgdata, "global", "pg_control"), []byte("control 2"))
	if ServeSpooled(opts, store, name, dest) {
		t.Fatal("served the spool of an earlier restore")
	}
}

func TestPushRefusesAFileChangedWhileRead(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	name := segName(1, 3)
	path := filepath.Join(e.pgdata, "pg_wal", name)
	seg := segment(1, 3, 1)
	for _, c := range []struct {
		name   string
		change func(t *testing.T)
	}{
		{"grew", func(t *testing.T) {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte{1})
			f.Close()
		}},
		{"replaced", func(t *testing.T) {
			// PostgreSQL recycles a segment by renaming another file to it.
			writeFile(t, path+".new", seg)
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		}},
		{"gone", func(t *testing.T) { os.Remove(path) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, path, seg)
			sr, err := openStable(path, segSize)
			if err != nil {
				t.Fatal(err)
			}
			defer sr.f.Close()
			if _, err := io.ReadFull(sr, make([]byte, segSize)); err != nil {
				t.Fatal(err)
			}
			c.change(t)
			if _, err := sr.Read(make([]byte, 1)); !errors.Is(err, ErrFileChanged) {
				t.Fatalf("got %v, want ErrFileChanged", err)
			}
		})
	}
	// Unchanged: the end, and the file's identity.
	writeFile(t, path, seg)
	sr, err := openStable(path, segSize)
	if err != nil {
		t.Fatal(err)
	}
	defer sr.f.Close()
	if b, err := io.ReadAll(sr); err != nil || !bytes.Equal(b, seg) {
		t.Fatalf("read: %v", err)
	}
	if id, err := statID(path); err != nil || id != sr.id {
		t.Fatalf("identity %+v, file %+v (%v)", sr.id, id, err)
	}
	// Push of the unchanged file uploads it.
	creates := e.store.creates.Load()
	p := NewPusher(e.arch, cluster, nil)
	if _, err := p.Push(ctx, path); err != nil {
		t.Fatal(err)
	}
	if e.store.creates.Load() == creates {
		t.Fatal("nothing uploaded")
	}
}

// spoolListed spools segment name as the fetcher's cached listing shows it.
func spoolListed(t *testing.T, ctx context.Context, f *Fetcher, name string) {
	t.Helper()
	if err := f.spoolOne(ctx, wanted{name: name, obj: f.sp.listing(name[:16]).Entries[name]}); err != nil {
		t.Fatal(err)
	}
}

// With a spool token, the prefetcher links each segment it verified into
// the ready directory, where restore_command's shell fast path takes it
// with mv: no wal-fetch call records that request, so the prefetcher reads
// it from the file's going and moves its window on. A segment served by
// wal-fetch instead leaves the ready directory first (each download goes
// through the fast path at most once), and the segments recovery took last
// stay spooled for the second request that comes when recovery ends.
func TestPrefetchReadyFastPath(t *testing.T) {
	const token = "T0KEN1234"
	f, dest, stop := startPrefetch(t, 12, FetchOptions{Prefetch: 4, SpoolToken: token}, nil)
	ctx := context.Background()
	ready := ReadyDir(f.sp.dir, token)
	for i := pg.SegNo(2); i <= 12; i++ {
		name := segName(1, i)
		waitFor(t, name+" in the ready directory", func() bool {
			_, err := os.Stat(filepath.Join(ready, name))
			return err == nil
		})
		if i == 7 {
			res, err := f.Fetch(ctx, name, dest)
			if err != nil || res.Source != "spool" {
				t.Fatalf("%s through wal-fetch: %+v %v", name, res, err)
			}
			if _, err := os.Stat(filepath.Join(ready, name)); err == nil {
				t.Fatalf("%s served by wal-fetch is still in the ready directory", name)
			}
		} else if err := os.Rename(filepath.Join(ready, name), dest); err != nil { // mv -f ready/%f %p
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, segment(1, i, uint64(i))) {
			t.Fatalf("%s: bytes differ", name)
		}
		waitFor(t, "the prefetcher to see "+name+" taken", func() bool {
			st, ok := f.sp.state()
			return ok && st.Name == name
		})
	}
	// Recovery ends and reads its last segments again: spooled, served
	// by wal-fetch.
	for _, i := range []pg.SegNo{12, 11} {
		res, err := f.Fetch(ctx, segName(1, i), dest)
		if err != nil || res.Source != "spool" {
			t.Fatalf("%s again: %+v %v", segName(1, i), res, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, segment(1, i, uint64(i))) {
			t.Fatalf("%s again: bytes differ", segName(1, i))
		}
	}
	stop()
	if ents, _ := os.ReadDir(ready); len(ents) != 0 {
		t.Fatalf("the ready directory holds %d files after the prefetcher exited", len(ents))
	}
	if n := len(f.sp.files()); n != 0 {
		t.Fatalf("%d files left in the spool", n)
	}
}

// The ready directory belongs to one token: a spool opened for another
// restore_command (another restore into the same place) starts with none
// of the old ready directories, and a bad token is refused.
func TestReadyDirToken(t *testing.T) {
	e := newEnv(t)
	f := newFetcher(t, e, FetchOptions{SpoolToken: "FIRST1234"})
	name := segName(1, 3)
	e.put(t, name, segment(1, 3, 1))
	if _, err := f.listing(context.Background(), name[:16], true); err != nil {
		t.Fatal(err)
	}
	spoolListed(t, context.Background(), f, name)
	if !f.sp.link(name) {
		t.Fatal("not linked")
	}
	if _, err := os.Stat(filepath.Join(ReadyDir(f.sp.dir, "FIRST1234"), name)); err != nil {
		t.Fatal(err)
	}
	// Another restore of the same directory: a new pg_control.
	os.Remove(filepath.Join(e.pgdata, "global", "pg_control"))
	writeFile(t, filepath.Join(e.pgdata, "global", "pg_control"), []byte("control 2"))
	newFetcher(t, e, FetchOptions{SpoolDir: f.sp.dir, SpoolToken: "SECOND1234"})
	if _, err := os.Stat(ReadyDir(f.sp.dir, "FIRST1234")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the earlier restore's ready directory is still there: %v", err)
	}
	for _, bad := range []string{"short", "../../etc", "has space 123", "semi;colon12"} {
		if _, err := NewFetcher(e.arch, FetchOptions{PGData: e.pgdata, Cluster: cluster, SpoolToken: bad}); err == nil {
			t.Fatalf("token %q accepted", bad)
		}
	}
}

// SpoolSaysMissing answers "not in the archive" from a young listing in
// the spool, without a request, for segments and history files; never from
// an old listing, another store's spool, or for a file that is there (or
// whose partial file is, with Partial).
func TestSpoolSaysMissing(t *testing.T) {
	ss := newServeSetup(t)
	e, f, opts, store, name := ss.e, ss.f, ss.opts, ss.store, ss.name
	ctx := context.Background()
	next := segName(1, 4)
	hist := "00000002.history"
	if SpoolSaysMissing(opts, store, hist) {
		t.Fatal("missing history file without a listing of history files")
	}
	if _, err := f.listing(ctx, walarchive.HistoryDir, true); err != nil {
		t.Fatal(err)
	}
	c := e.store
	requests := func() int64 { return c.gets.Load() + c.lists.Load() + c.creates.Load() }
	before := requests()
	for _, c := range []struct {
		opts  FetchOptions
		store string
		name  string
		want  bool
	}{
		{opts, store, next, true},
		{opts, store, hist, true},
		{opts, store, name, false},
		{opts, "s3://another/store", next, false},
		{FetchOptions{PGData: e.pgdata, Cluster: cluster, SpoolDir: f.sp.dir, NoSpool: true}, store, next, false},
		{opts, store, "not-a-wal-file", false},
	} {
		if got := SpoolSaysMissing(c.opts, c.store, c.name); got != c.want {
			t.Errorf("SpoolSaysMissing(%s, %s) = %v, want %v", c.store, c.name, got, c.want)
		}
	}
	if n := requests(); n != before {
		t.Fatalf("%d storage requests", n-before)
	}
	l := f.sp.listing(name[:16])
	l.Entries[next+".partial"] = objInfo{Size: 1}
	f.sp.saveListing(name[:16], l)
	partial := opts
	partial.Partial = true
	if SpoolSaysMissing(partial, store, next) || !SpoolSaysMissing(opts, store, next) {
		t.Fatal("a partial file in the listing: wrong answer")
	}
	l.Listed = time.Now().Add(-time.Minute)
	f.sp.saveListing(name[:16], l)
	if SpoolSaysMissing(opts, store, next) {
		t.Fatal("answered from a listing a minute old")
	}
}
