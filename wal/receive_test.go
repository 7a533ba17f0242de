package wal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// putPieces stores bytes [0, end) of seg as pieces cut at the given
// offsets.
func putPieces(t *testing.T, a *walarchive.Archive, name string, seg []byte, cuts ...int64) {
	t.Helper()
	for i := 0; i+1 < len(cuts); i++ {
		if _, err := a.PutPiece(context.Background(), cluster, name, cuts[i], seg[cuts[i]:cuts[i+1]]); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) fetchTail(t *testing.T, name string) ([]byte, error) {
	t.Helper()
	f, err := NewFetcher(e.arch, FetchOptions{PGData: e.pgdata, Cluster: cluster, NoSpool: true})
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(e.pgdata, "pg_wal", "RECOVERYXLOG")
	os.Remove(dest)
	if _, err := f.Fetch(context.Background(), name, dest); err != nil {
		return nil, err
	}
	return os.ReadFile(dest)
}

// TestTailRules checks what wal-fetch serves of wal-receive's pieces:
// the chain zero-padded at the end of a timeline, a whole chain as the
// segment, never a chain where the segment is archived or the timeline
// goes on, and past a fork only to a recovery targeting the old timeline.
func TestTailRules(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if _, err := e.arch.Put(ctx, cluster, segName(1, 2), segment(1, 2, 1)); err != nil {
		t.Fatal(err)
	}
	s3 := segment(1, 3, 2)
	putPieces(t, e.arch, segName(1, 3), s3, 0, 4096, 4097, 20000)
	padded := make([]byte, segSize)
	copy(padded, s3[:20000])

	got, err := e.fetchTail(t, segName(1, 3))
	if err != nil || !bytes.Equal(got, padded) {
		t.Fatalf("tail at the end of timeline 1: %v (%d bytes)", err, len(got))
	}
	// Timeline 2 branched off after the tail's end: still served.
	hist := func(tli pg.TimelineID, at pg.LSN) {
		h := pg.History{Timeline: tli, Entries: []pg.HistoryEntry{{Parent: 1, SwitchPoint: at, Reason: "test"}}}
		if _, err := e.arch.Put(ctx, cluster, pg.HistoryFileName(tli), h.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	hist(2, pg.SegNo(3).Start(segSize)+30000)
	if got, err := e.fetchTail(t, segName(1, 3)); err != nil || !bytes.Equal(got, padded) {
		t.Fatalf("tail before a later fork: %v", err)
	}
	// Timeline 3 branched off inside it: only for a recovery that targets
	// timeline 1.
	hist(3, pg.SegNo(3).Start(segSize)+10000)
	if _, err := e.fetchTail(t, segName(1, 3)); !errors.Is(err, walarchive.ErrNotArchived) {
		t.Fatalf("tail past a fork, recovery targets latest: %v", err)
	}
	writeFile(t, filepath.Join(e.pgdata, "postgresql.auto.conf"), []byte("recovery_target_timeline = '1'\n"))
	if got, err := e.fetchTail(t, segName(1, 3)); err != nil || !bytes.Equal(got, padded) {
		t.Fatalf("tail past a fork, recovery targets timeline 1: %v", err)
	}
	writeFile(t, filepath.Join(e.pgdata, "postmaster.opts"), []byte(`/usr/bin/postgres "-D" "x" "-c" "recovery_target_timeline=latest"`+"\n"))
	if _, err := e.fetchTail(t, segName(1, 3)); !errors.Is(err, walarchive.ErrNotArchived) {
		t.Fatalf("tail past a fork, the command line targets latest: %v", err)
	}
	os.Remove(filepath.Join(e.pgdata, "postmaster.opts"))

	// Pieces covering a whole segment are that segment.
	s4 := segment(1, 4, 3)
	putPieces(t, e.arch, segName(1, 4), s4, 0, 300000, segSize)
	if got, err := e.fetchTail(t, segName(1, 4)); err != nil || !bytes.Equal(got, s4) {
		t.Fatalf("whole chain: %v", err)
	}
	// Segment 4 now follows 3 on timeline 1: 3's pieces are a hole in the
	// middle of the timeline, never served.
	if _, err := e.fetchTail(t, segName(1, 3)); !errors.Is(err, walarchive.ErrNotArchived) {
		t.Fatalf("pieces before a later segment: %v", err)
	}
	// A segment archived whole wins over its pieces.
	other := segment(1, 5, 9)
	putPieces(t, e.arch, segName(1, 5), other, 0, 100)
	if _, err := e.arch.Put(ctx, cluster, segName(1, 5), other); err != nil {
		t.Fatal(err)
	}
	if got, err := e.fetchTail(t, segName(1, 5)); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("archived segment beside pieces: %v", err)
	}
	// No chain from byte 0: nothing to serve.
	putPieces(t, e.arch, segName(1, 6), segment(1, 6, 1), 100, 200)
	if _, err := e.fetchTail(t, segName(1, 6)); !errors.Is(err, walarchive.ErrNotArchived) {
		t.Fatalf("pieces not from byte 0: %v", err)
	}
}

func TestRecoveryTargetTimeline(t *testing.T) {
	d := t.TempDir()
	if v, _ := recoveryTargetTimeline(d); v != "" {
		t.Fatalf("nothing set: %q", v)
	}
	writeFile(t, filepath.Join(d, "postgresql.conf"), []byte("#recovery_target_timeline = 3\nrecovery_target_timeline = 4 # comment\n"))
	if v, from := recoveryTargetTimeline(d); v != "4" || from != "postgresql.conf" {
		t.Fatalf("postgresql.conf: %q from %s", v, from)
	}
	writeFile(t, filepath.Join(d, "postgresql.auto.conf"), []byte("recovery_target_timeline = 'Latest'\n"))
	if v, _ := recoveryTargetTimeline(d); v != "latest" {
		t.Fatalf("auto.conf over postgresql.conf: %q", v)
	}
	writeFile(t, filepath.Join(d, "postmaster.opts"), []byte(`/x/postgres "-D" "/d" "-c" "port=1" "-c" "recovery_target_timeline=2"`+"\n"))
	if v, _ := recoveryTargetTimeline(d); v != "2" {
		t.Fatalf("command line over config files: %q", v)
	}
	for line, want := range map[string]string{
		"recovery_target_timeline='1'":   "1",
		"recovery_target_timeline 0x2":   "0x2",
		"  recovery_target_timeline = 3": "3",
		"recovery_target_timelinex = 3":  "",
		"recovery_target_timeline = '":   "",
	} {
		if v, _ := confValue(line, "recovery_target_timeline"); v != want {
			t.Errorf("confValue(%q) = %q, want %q", line, v, want)
		}
	}
}

func TestParseSetting(t *testing.T) {
	for in, want := range map[string]uint64{"16MB": 16 << 20, "1GB": 1 << 30, "8192": 8192, "8kB": 8192, "64B": 64} {
		if got, err := parseSetting(in); err != nil || got != want {
			t.Errorf("parseSetting(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := parseSetting("lots"); err == nil {
		t.Error("parseSetting accepted lots")
	}
}

func TestLocalExtent(t *testing.T) {
	seg := make([]byte, segSize)
	copy(seg, segment(1, 3, 1)[:pg.WALLongPageHeaderSize])
	start := pg.SegNo(3).Start(segSize)
	if n := localExtent(seg, start, pg.DefaultWALBlockSize); n != 38 { // the last non-zero byte of the long header (xlp_xlog_blcksz)
		t.Fatalf("a header only: %d", n)
	}
	// Page 1 with a valid header and 100 bytes: counted; page 2 without a
	// header stops the scan though page 3 has one.
	page := func(i int, n int) {
		off := i * pg.DefaultWALBlockSize
		copy(seg[off:], seg[:4]) // magic and info of the first page
		seg[off+2] = 0           // a short header
		putLSN(seg[off+8:], start+pg.LSN(off))
		for j := pg.WALShortPageHeaderSize; j < pg.WALShortPageHeaderSize+n; j++ {
			seg[off+j] = 0xAB
		}
	}
	page(1, 100)
	page(3, 100)
	if n := localExtent(seg, start, pg.DefaultWALBlockSize); n != int64(pg.DefaultWALBlockSize+pg.WALShortPageHeaderSize+100) {
		t.Fatalf("extent %d", n)
	}
}

func putLSN(b []byte, l pg.LSN) {
	for i := range 8 {
		b[i] = byte(l >> (8 * i))
	}
}

// newTestSink runs a sink over the env's archive.
func newTestSink(t *testing.T, e *env, mode Durability) *sink {
	return newTestSinkWith(t, e.arch, mode, func(*sinkOptions) {})
}

// newTestSinkWith runs a sink over arch with options changed by set.
func newTestSinkWith(t *testing.T, arch sinkArchive, mode Durability, set func(*sinkOptions)) *sink {
	t.Helper()
	fatal := make(chan error, 1)
	o := sinkOptions{arch: arch, cluster: cluster, mode: mode, dir: t.TempDir(), maxInflight: 2,
		uploadDelay: time.Hour, fatal: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		}, flushed: func() {}}
	set(&o)
	s := newSink(o)
	ctx, cancel := context.WithCancel(context.Background())
	s.run(ctx)
	t.Cleanup(func() {
		cancel()
		s.wait()
		select {
		case err := <-fatal:
			t.Errorf("sink stopped: %v", err)
		default:
		}
	})
	return s
}

// TestSinkRepository streams two segments and a timeline switch into a
// sink with repository durability: the flush position follows the
// pieces, a complete segment is archived whole and its pieces deleted,
// and the old timeline's tail and the new timeline's copy of the switch
// segment are both in the archive.
func TestSinkRepository(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := newTestSink(t, e, DurableRepository)
	s3, s4 := segment(1, 3, 1), segment(1, 4, 2)
	start := pg.SegNo(3).Start(segSize)
	if err := s.begin(ctx, 1, start, 1, nil); err != nil {
		t.Fatal(err)
	}
	write := func(tli pg.TimelineID, at pg.LSN, b []byte) {
		t.Helper()
		if err := s.write(ctx, tli, at, b); err != nil {
			t.Fatal(err)
		}
	}
	// In uneven messages, one spanning the segment boundary.
	write(1, start, s3[:1000])
	write(1, start+1000, s3[1000:segSize-10])
	write(1, start+segSize-10, append(bytes.Clone(s3[segSize-10:]), s4[:5000]...))
	end4 := pg.SegNo(4).Start(segSize) + 5000
	waitFor(t, "the flush position", func() bool { return s.flushPos(1) == end4 })
	waitFor(t, "segment 3 archived whole", func() bool {
		b, _, err := e.arch.ReadFile(ctx, sys, segName(1, 3))
		return err == nil && bytes.Equal(b, s3)
	})
	waitFor(t, "segment 3's pieces deleted", func() bool {
		ps, _ := e.arch.ListPieces(ctx, sys, segName(1, 3))
		return len(ps) == 0
	})

	// Timeline 2 branches off at 4000 bytes into segment 4: the receiver
	// holds 1000 bytes of timeline 1 past it.
	sp := pg.SegNo(4).Start(segSize) + 4000
	if err := s.begin(ctx, 2, sp, 0, nil); err != nil {
		t.Fatal(err)
	}
	n4 := bytes.Clone(s4[:4000])
	n4 = append(n4, bytes.Repeat([]byte{7}, 3000)...)
	write(2, sp, n4[4000:])
	waitFor(t, "the flush position on timeline 2", func() bool { return s.flushPos(2) == sp+3000 })
	l, err := e.arch.List(ctx, sys)
	if err != nil {
		t.Fatal(err)
	}
	tail1, ok1 := l.Timeline(1).Tail()
	tail2, ok2 := l.Timeline(2).Tail()
	if !ok1 || tail1.End != 5000 || !ok2 || tail2.End != 7000 {
		t.Fatalf("tails: timeline 1 %+v %v, timeline 2 %+v %v", tail1, ok1, tail2, ok2)
	}
	var b bytes.Buffer
	chain, _ := walarchive.Chain(tail2.Pieces)
	if _, err := e.arch.ReadChain(ctx, sys, chain, &b); err != nil || !bytes.Equal(b.Bytes(), n4) {
		t.Fatalf("timeline 2's copy of segment 4: %v", err)
	}
	// A write that does not follow is refused.
	if err := s.write(ctx, 2, sp, []byte{1}); err == nil {
		t.Fatal("a write behind the position was accepted")
	}
	// Streamed again from a point before the position, the same bytes
	// are compared and skipped, other bytes refused.
	if !s.rewind(sp + 1000) {
		t.Fatal("rewind refused")
	}
	if err := s.write(ctx, 2, sp+1000, n4[5000:7000]); err != nil {
		t.Fatalf("the same bytes again: %v", err)
	}
	if s.rewind(sp - 4001) {
		t.Fatal("rewound to before the segment")
	}
	if !s.rewind(sp + 2000) {
		t.Fatal("rewind refused")
	}
	if err := s.write(ctx, 2, sp+2000, []byte{0xFF}); !errors.Is(err, ErrStreamDiffers) {
		t.Fatalf("other bytes: %v", err)
	}
}

// TestSinkLocal: with local durability the flush position follows
// fdatasync of the local file, pieces go up only when the stream stops,
// and a complete segment is archived and its local file removed.
func TestSinkLocal(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := newTestSink(t, e, DurableLocal)
	s3 := segment(1, 3, 1)
	start := pg.SegNo(3).Start(segSize)
	if err := s.begin(ctx, 1, start, 1, nil); err != nil {
		t.Fatal(err)
	}
	s.setConnected(true)
	if err := s.write(ctx, 1, start, s3[:70000]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the local flush", func() bool { return s.flushPos(1) == start+70000 })
	local, err := os.ReadFile(filepath.Join(s.o.dir, segName(1, 3)+".partial"))
	if err != nil || len(local) != segSize || !bytes.Equal(local[:70000], s3[:70000]) {
		t.Fatalf("local file: %v", err)
	}
	if ps, _ := e.arch.ListPieces(ctx, sys, segName(1, 3)); len(ps) != 0 {
		t.Fatalf("pieces while the stream flows: %v", ps)
	}
	s.setConnected(false)
	waitFor(t, "a piece once the stream stopped", func() bool {
		ps, _ := e.arch.ListPieces(ctx, sys, segName(1, 3))
		_, end := walarchive.Chain(ps)
		return end == 70000
	})
	s.setConnected(true)
	if err := s.write(ctx, 1, start+70000, s3[70000:]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "segment 3 archived whole", func() bool {
		b, _, err := e.arch.ReadFile(ctx, sys, segName(1, 3))
		return err == nil && bytes.Equal(b, s3)
	})
	waitFor(t, "the local file removed", func() bool {
		_, err1 := os.Stat(filepath.Join(s.o.dir, segName(1, 3)))
		_, err2 := os.Stat(filepath.Join(s.o.dir, segName(1, 3)+".partial"))
		return os.IsNotExist(err1) && os.IsNotExist(err2)
	})
}

// TestSinkLocalSyncByStream: with syncByStream the stream's goroutine
// syncs (as wal-receive --durable local does): a write alone wakes no
// worker and moves no flush position, syncLocal makes it durable at once
// and completes a full segment, and what is left unsynced when the stream
// stops is synced by the worker.
func TestSinkLocalSyncByStream(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	var flushed atomic.Int64
	s := newTestSinkWith(t, e.arch, DurableLocal, func(o *sinkOptions) {
		o.syncByStream = true
		o.flushed = func() { flushed.Add(1) }
	})
	s3, s4 := segment(1, 3, 1), segment(1, 4, 2)
	start := pg.SegNo(3).Start(segSize)
	if err := s.begin(ctx, 1, start, 1, nil); err != nil {
		t.Fatal(err)
	}
	s.setConnected(true)
	// Let the worker take the wake-ups of begin and setConnected.
	waitFor(t, "the worker idle", func() bool { return len(s.work) == 0 })
	time.Sleep(20 * time.Millisecond)
	n0 := flushed.Load()
	if err := s.write(ctx, 1, start, s3[:70000]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := s.flushPos(1); got != start {
		t.Fatalf("flush position %s after a write alone, want %s (nothing synced)", got, start)
	}
	if did, err := s.syncLocal(ctx); err != nil || !did {
		t.Fatalf("syncLocal: %v, %v", did, err)
	}
	if got := s.flushPos(1); got != start+70000 || flushed.Load() != n0+1 {
		t.Fatalf("after syncLocal: flush position %s, flushed told %d times; want %s, once", got, flushed.Load()-n0, start+70000)
	}
	if did, err := s.syncLocal(ctx); err != nil || did {
		t.Fatalf("syncLocal with nothing new: %v, %v", did, err)
	}
	if err := s.write(ctx, 1, start+70000, append(bytes.Clone(s3[70000:]), s4[:3000]...)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.syncLocal(ctx); err != nil {
		t.Fatal(err)
	}
	end := pg.SegNo(4).Start(segSize) + 3000
	if got := s.flushPos(1); got != end {
		t.Fatalf("flush position %s, want %s", got, end)
	}
	waitFor(t, "segment 3 archived whole", func() bool {
		b, _, err := e.arch.ReadFile(ctx, sys, segName(1, 3))
		return err == nil && bytes.Equal(b, s3)
	})
	// Unsynced when the stream stops: the worker syncs it.
	if err := s.write(ctx, 1, end, s4[3000:9000]); err != nil {
		t.Fatal(err)
	}
	s.setConnected(false)
	waitFor(t, "the worker's sync", func() bool { return s.flushPos(1) == end+6000 })
	local, err := os.ReadFile(filepath.Join(s.o.dir, segName(1, 4)+".partial"))
	if err != nil || !bytes.Equal(local[:9000], s4[:9000]) {
		t.Fatalf("local file of segment 4: %v", err)
	}
}

// TestSinkSyncByStreamHeldSegments: with syncByStream, a stream that
// writes more complete segments than the sink holds in memory without
// syncing (1 MiB segments, the syncing goroutine behind) does not wait
// forever for a buffer: the local worker syncs the complete ones.
func TestSinkSyncByStreamHeldSegments(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newEnv(t)
	s := newTestSinkWith(t, e.arch, DurableLocal, func(o *sinkOptions) { o.syncByStream, o.maxSegments = true, 2 })
	start := pg.SegNo(3).Start(segSize)
	if err := s.begin(ctx, 1, start, 1, nil); err != nil {
		t.Fatal(err)
	}
	s.setConnected(true)
	for no := pg.SegNo(3); no < 7; no++ {
		if err := s.write(ctx, 1, no.Start(segSize), segment(1, no, 1)); err != nil {
			t.Fatalf("write segment %d: %v", no, err)
		}
	}
	if _, err := s.syncLocal(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "segment 6 archived whole", func() bool {
		b, _, err := e.arch.ReadFile(ctx, sys, segName(1, 6))
		return err == nil && bytes.Equal(b, segment(1, 6, 1))
	})
}

// stuckArchive finishes no upload until the upload's context ends.
type stuckArchive struct{ sinkArchive }

func (stuckArchive) PutPiece(ctx context.Context, _ walarchive.ClusterInfo, _ string, _ int64, _ []byte) (walarchive.PutResult, error) {
	<-ctx.Done()
	return walarchive.PutResult{}, ctx.Err()
}

func (stuckArchive) PutFrom(ctx context.Context, _ walarchive.ClusterInfo, _ string, _ io.Reader, _ int64) (walarchive.PutResult, error) {
	<-ctx.Done()
	return walarchive.PutResult{}, ctx.Err()
}

// TestSinkWriteWaitEndsWithContext: a write waiting for a segment buffer
// (the store takes nothing) returns once its context ends, as when the
// receiver stops the stream after a refusal, instead of waiting for the
// sink's workers to stop.
func TestSinkWriteWaitEndsWithContext(t *testing.T) {
	e := newEnv(t)
	s := newTestSinkWith(t, stuckArchive{e.arch}, DurableRepository, func(o *sinkOptions) { o.maxSegments = 2 })
	ctx := context.Background()
	if err := s.begin(ctx, 1, pg.SegNo(3).Start(segSize), 1, nil); err != nil {
		t.Fatal(err)
	}
	s.setConnected(true)
	for no := pg.SegNo(3); no < 5; no++ {
		if err := s.write(ctx, 1, no.Start(segSize), segment(1, no, 1)); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.write(wctx, 1, pg.SegNo(5).Start(segSize), []byte{1}) }()
	select {
	case err := <-done:
		t.Fatalf("a third segment while two are held: %v, want a wait", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the write whose context ended reported no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the write still waits after its context ended")
	}
}

// TestSinkMerges: a segment that fills a commit at a time is stored in
// hundreds of pieces; merging keeps the archive to a few dozen, whose
// chain still holds every byte.
func TestSinkMerges(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	s := newTestSink(t, e, DurableRepository)
	s3 := segment(1, 3, 1)
	start := pg.SegNo(3).Start(segSize)
	if err := s.begin(ctx, 1, start, 1, nil); err != nil {
		t.Fatal(err)
	}
	const step, n = 200, 400
	for i := range n {
		at := start + pg.LSN(i*step)
		if err := s.write(ctx, 1, at, s3[i*step:(i+1)*step]); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the piece", func() bool { return s.flushPos(1) == at+step })
	}
	var ps []walarchive.Piece
	waitFor(t, "merges", func() bool {
		ps, _ = e.arch.ListPieces(ctx, sys, segName(1, 3))
		return len(ps) < 2*mergeRun
	})
	chain, end := walarchive.Chain(ps)
	var b bytes.Buffer
	if _, err := e.arch.ReadChain(ctx, sys, chain, &b); err != nil || end != n*step || !bytes.Equal(b.Bytes(), s3[:n*step]) {
		t.Fatalf("after merging: %d pieces, chain to %d: %v", len(ps), end, err)
	}
	t.Logf("%d writes stored in %d pieces, %d in the chain", n, len(ps), len(chain))
}

// TestSinkOvertakes: an upload that hangs does not hold back the flush
// position. The next piece starts where the stored pieces end, carrying
// the hung one's bytes again, and the store's first answer makes all of
// them durable. The hung piece, stored at last, is covered by the one
// that overtook it, and goes with the next merge.
func TestSinkOvertakes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	h := &heldArchive{sinkArchive: e.arch, held: make(chan struct{}), release: make(chan struct{}),
		hold: func(segment string, start int64, data []byte) bool { return start == 0 && len(data) == 1000 }}
	s := newTestSinkWith(t, h, DurableRepository, func(*sinkOptions) {})
	s3 := segment(1, 3, 1)
	start := pg.SegNo(3).Start(segSize)
	if err := s.begin(ctx, 1, start, 1, nil); err != nil {
		t.Fatal(err)
	}
	write := func(from, to int) {
		t.Helper()
		if err := s.write(ctx, 1, start+pg.LSN(from), s3[from:to]); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 1000)
	<-h.held
	write(1000, 3000)
	waitFor(t, "the flush position past the hung upload", func() bool { return s.flushPos(1) == start+3000 })
	hung := walarchive.Piece{Segment: segName(1, 3), Start: 0, End: 1000}
	has := func(p walarchive.Piece) bool {
		ps, _ := e.arch.ListPieces(ctx, sys, segName(1, 3))
		return slices.Contains(ps, p)
	}
	if has(hung) {
		t.Fatal("the hung piece is stored")
	}
	close(h.release)
	waitFor(t, "the hung piece stored", func() bool { return has(hung) })
	const step = 200
	for i := range mergeRun {
		at := 3000 + i*step
		write(at, at+step)
		waitFor(t, "the piece", func() bool { return s.flushPos(1) == start+pg.LSN(at+step) })
	}
	waitFor(t, "the covered piece deleted with the merge", func() bool { return !has(hung) })
	ps, _ := e.arch.ListPieces(ctx, sys, segName(1, 3))
	chain, end := walarchive.Chain(ps)
	var b bytes.Buffer
	if _, err := e.arch.ReadChain(ctx, sys, chain, &b); err != nil || end != 3000+mergeRun*step || !bytes.Equal(b.Bytes(), s3[:end]) {
		t.Fatalf("%d pieces, chain to %d: %v", len(ps), end, err)
	}
}

// heldArchive holds back the first PutPiece that hold picks until release
// is closed, and records the bytes that upload then read.
type heldArchive struct {
	sinkArchive
	hold    func(segment string, start int64, data []byte) bool
	held    chan struct{} // closed once the upload is held
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	got     []byte
}

func (h *heldArchive) PutPiece(ctx context.Context, ci walarchive.ClusterInfo, segment string, start int64, data []byte) (walarchive.PutResult, error) {
	mine := false
	if h.hold(segment, start, data) {
		h.once.Do(func() { mine = true })
	}
	if mine {
		close(h.held)
		<-h.release
		h.mu.Lock()
		h.got = bytes.Clone(data)
		h.mu.Unlock()
	}
	return h.sinkArchive.PutPiece(ctx, ci, segment, start, data)
}

// TestSinkBufferReuse: segment buffers come back from a pool, and one goes
// back only when its last reader is done. An upload is held while its
// segment completes and later segments fill (and would take its buffer if
// it were given back early); released buffers are poisoned, so an upload
// reading one after the fact would store poison or another segment's
// bytes. The held upload must send exactly its segment's bytes: a piece
// uploaded lazily in local mode, and a merge of pieces in repository mode.
func TestSinkBufferReuse(t *testing.T) {
	ctx := context.Background()
	const step = 200
	for _, tc := range []struct {
		name string
		mode Durability
		// hold picks the upload to hold; want is what it must send.
		hold func(segment string, start int64, data []byte) bool
		want int
		// fill writes seg 3 up to want so that the upload starts.
		fill func(t *testing.T, s *sink, s3 []byte, start pg.LSN)
	}{
		{
			name: "local, lazy piece", mode: DurableLocal, want: 70000,
			hold: func(segment string, start int64, data []byte) bool { return segment == segName(1, 3) },
			fill: func(t *testing.T, s *sink, s3 []byte, start pg.LSN) {
				s.setConnected(false) // pieces go up at once
				if err := s.write(ctx, 1, start, s3[:70000]); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "repository, merge", mode: DurableRepository, want: mergeRun * step,
			hold: func(segment string, start int64, data []byte) bool {
				return segment == segName(1, 3) && len(data) == mergeRun*step
			},
			fill: func(t *testing.T, s *sink, s3 []byte, start pg.LSN) {
				for i := range mergeRun {
					at := start + pg.LSN(i*step)
					if err := s.write(ctx, 1, at, s3[i*step:(i+1)*step]); err != nil {
						t.Fatal(err)
					}
					waitFor(t, "the piece", func() bool { return s.flushPos(1) == at+step })
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			h := &heldArchive{sinkArchive: e.arch, hold: tc.hold, held: make(chan struct{}), release: make(chan struct{})}
			s := newTestSinkWith(t, h, tc.mode, func(o *sinkOptions) { o.poison, o.maxSegments = true, 2 })
			start := pg.SegNo(3).Start(segSize)
			if err := s.begin(ctx, 1, start, 1, nil); err != nil {
				t.Fatal(err)
			}
			segs := map[pg.SegNo][]byte{}
			for no := pg.SegNo(3); no <= 7; no++ {
				segs[no] = segment(1, no, uint64(no))
			}
			tc.fill(t, s, segs[3], start)
			<-h.held
			s.setConnected(true)
			if err := s.write(ctx, 1, start+pg.LSN(tc.want), segs[3][tc.want:]); err != nil {
				t.Fatal(err)
			}
			// Segment 3 completes and is archived; 4 to 7 fill buffers
			// from the pool meanwhile.
			for no := pg.SegNo(4); no <= 7; no++ {
				if err := s.write(ctx, 1, no.Start(segSize), segs[no]); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "segments 3 to 7 archived", func() bool {
				for no := pg.SegNo(3); no <= 7; no++ {
					b, _, err := e.arch.ReadFile(ctx, sys, segName(1, no))
					if err != nil || !bytes.Equal(b, segs[no]) {
						return false
					}
				}
				return true
			})
			close(h.release)
			waitFor(t, "the held upload", func() bool {
				h.mu.Lock()
				defer h.mu.Unlock()
				return h.got != nil
			})
			if !bytes.Equal(h.got, segs[3][:tc.want]) {
				i := 0
				for i < len(h.got) && i < tc.want && h.got[i] == segs[3][i] {
					i++
				}
				t.Fatalf("the held upload sent %d bytes differing from segment 3's from byte %d", len(h.got), i)
			}
			s.mu.Lock()
			n := s.stats.buffers
			s.mu.Unlock()
			t.Logf("%d buffers allocated for 5 segments", n)
		})
	}
}
