package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// Durability is where wal-receive must hold WAL before it reports it flushed
// to PostgreSQL: what a synchronous commit waits for.
type Durability int

const (
	// DurableLocal: written and fdatasync'd in the receiver's directory;
	// uploaded to the repository behind (whole segments, and pieces of the
	// one filling when the stream pauses or after UploadDelay).
	DurableLocal Durability = iota + 1
	// DurableRepository: acknowledged by the object store, as pieces of the
	// segment that is filling (group commit: one upload carries whatever
	// arrived while the previous one was in flight).
	DurableRepository
)

func (d Durability) String() string {
	switch d {
	case DurableLocal:
		return "local"
	case DurableRepository:
		return "repository"
	}
	return fmt.Sprintf("Durability(%d)", int(d))
}

// ParseDurability reads "local" or "repository".
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "local":
		return DurableLocal, nil
	case "repository":
		return DurableRepository, nil
	}
	return 0, fmt.Errorf("%q: want local or repository", s)
}

// maxPiece bounds one piece: a receiver catching up uploads several pieces
// at once rather than one huge one, and an upload that fails costs little.
const maxPiece = 4 << 20

// MaxInflight bounds ReceiveOptions.MaxInflight. Below mergeRun, so that
// no merge of a run of pieces can have the name of a piece of the run
// (that would take every piece of the run in flight at once; see
// pieceWorker).
const MaxInflight = 16

// maxResend bounds what a piece carries again of the uploads in flight
// before it (see pieceWorker): past it, a receiver that is behind (a slow
// store, a burst of WAL) uploads the next bytes only, in pieces beside
// each other, instead of sending its backlog many times over.
const maxResend = 256 << 10

// heldSeg is one WAL segment the receiver holds, from its first byte: the
// one filling, and older ones until they are archived whole.
type heldSeg struct {
	tli  pg.TimelineID
	no   pg.SegNo
	name string
	// buf holds the segment's bytes, nil once the segment needs them no
	// more in memory (see segBuf: readers may still hold it then).
	buf *segBuf

	// recv: bytes [0, recv) arrived (or were copied from the parent
	// timeline at a switch). durable: [0, durable) are durable where the
	// operator chose. stored: [0, stored) are in the repository as a chain
	// of pieces from byte 0 (or as the whole segment once archived).
	recv, durable, stored int64
	// have is how far a local copy read back after a restart reaches
	// (bytes streamed again from byte 0 overwrite it identically); it
	// counts only if the timeline turns out to have ended inside the
	// segment, when those bytes are the only copy of its tail.
	have int64
	// ended: the timeline ended inside this segment, which never
	// completes: its bytes are the timeline's tail.
	ended bool
	// queued: complete and durable, handed to the archiver; archived:
	// the whole segment is in the repository.
	queued, archived bool

	// Local durability: the file and how much of buf is written to it.
	file    *os.File
	written int64
	// Pieces in flight and acknowledged past stored.
	pieceEnd int64
	inflight int
	acked    []span
	// levels[i] are this run's stored pieces merged i times, in order, not
	// yet merged further; merging is a merge of mergeRun of them in flight.
	// A piece of level 0 may overlap the one before it (see pieceWorker).
	levels  [][]span
	merging bool
	// covered are stored pieces that pieces stored before them cover
	// whole: deleted with the next merge (or with the segment).
	covered []span
	// When the oldest byte not yet durable, and not yet stored, arrived.
	since, unstoredSince time.Time
	// pieceSince: when the oldest byte not yet in a piece arrived.
	pieceSince time.Time
}

type span struct{ start, end int64 }

// segBuf is the memory of one segment. Whoever reads or writes it outside
// the sink's lock (the stream writing into it, the local writer, piece
// uploads and merges, the archiver) holds a reference, taken and given
// back under the lock; the segment holds one while its buf points here.
// When the last is given back the memory goes back to the sink's pool for
// a later segment: never while an upload may still read it.
type segBuf struct {
	b    []byte
	refs int // under sink.mu
}

// Buffers come from the pool as a former segment left them: nothing reads
// a segment's bytes past recv (what arrived), which the stream writes
// before anything reads them, so they are never zeroed. A segment that is
// written out whole is complete; the tail of one that is not is stored
// only up to recv (pieces) and its local file is zero-filled ahead.

// newBufLocked returns a buffer with one reference, the segment's.
func (s *sink) newBufLocked() *segBuf {
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free[n-1] = nil
		s.free = s.free[:n-1]
		return &segBuf{b: b, refs: 1}
	}
	s.stats.buffers++
	return &segBuf{b: make([]byte, s.segSize), refs: 1}
}

// refLocked takes a reference to g's buffer for a use outside the lock.
func (s *sink) refLocked(g *heldSeg) *segBuf {
	g.buf.refs++
	return g.buf
}

// unrefLocked gives a reference back; the last one returns the memory to
// the pool (as many buffers as segments may be held; more are left to
// the garbage collector).
func (s *sink) unrefLocked(b *segBuf) {
	b.refs--
	switch {
	case b.refs > 0:
		return
	case b.refs < 0:
		panic("wal: a segment buffer given back twice")
	}
	if s.o.poison {
		// Tests: a reader that outlived its reference would see this.
		for i := range b.b {
			b.b[i] = poisonByte
		}
	}
	if len(s.free) < s.o.maxSegments {
		s.free = append(s.free, b.b)
	}
	b.b = nil
}

// poisonByte fills released buffers under sinkOptions.poison.
const poisonByte = 0xA5

// dropBufLocked gives back the segment's own reference to its buffer.
func (s *sink) dropBufLocked(g *heldSeg) {
	if g.buf != nil {
		s.unrefLocked(g.buf)
		g.buf = nil
	}
}

func (g *heldSeg) start(segSize uint32) pg.LSN { return g.no.Start(segSize) }

// sinkOptions configure a sink.
type sinkOptions struct {
	arch    sinkArchive
	cluster walarchive.ClusterInfo
	mode    Durability
	// dir holds the local copies (DurableLocal): <segment>.partial while it
	// fills, <segment> once complete until it is archived.
	dir string
	// maxInflight bounds the piece uploads at once (DurableRepository).
	maxInflight int
	// uploadDelay: with DurableLocal, bytes not in the repository after
	// this long are uploaded as a piece even while the stream flows.
	uploadDelay time.Duration
	// maxSegments bounds the segments held in memory; the stream waits.
	maxSegments int
	log         *slog.Logger
	// fatal stops the receiver: an archive that refuses what it was given.
	fatal func(error)
	// flushed is told when the durable position may have moved.
	flushed func()
	// syncByStream (DurableLocal only): the stream's goroutine calls syncLocal
	// once it has read all that arrived, as pg_receivewal does, so a
	// commit's WAL is written, synced and acknowledged without waking
	// another goroutine; write does not wake the local worker.
	syncByStream bool
	// poison (tests only) overwrites a segment buffer when its last
	// reference is given back, so that a read after it shows.
	poison bool
}

// sinkArchive is what the sink needs of the WAL archive
// (*walarchive.Archive; a test wraps it to hold an upload back).
type sinkArchive interface {
	PutPiece(ctx context.Context, ci walarchive.ClusterInfo, segment string, start int64, data []byte) (walarchive.PutResult, error)
	PutFrom(ctx context.Context, ci walarchive.ClusterInfo, name string, r io.Reader, size int64) (walarchive.PutResult, error)
	ListPieces(ctx context.Context, cluster uint64, segment string) ([]walarchive.Piece, error)
	DeletePieces(ctx context.Context, cluster uint64, pieces []walarchive.Piece) error
	ReadChain(ctx context.Context, cluster uint64, chain []walarchive.Piece, w io.Writer) (int64, error)
}

// sink holds what the stream delivers and makes it durable: in the local
// directory or in the repository, as the operator chose, and in the
// repository in any case (pieces, then whole segments through the same
// path wal-push uses). One goroutine writes into it (the stream); its
// workers run until the context given to run ends.
type sink struct {
	o       sinkOptions
	segSize uint32

	mu   sync.Mutex
	cond *sync.Cond
	segs []*heldSeg // stream order; the last one is filling
	// connected: a stream is up. lastRecv: when bytes last arrived.
	connected bool
	lastRecv  time.Time
	stopping  bool
	// posTLI and posLSN are where the next byte goes (set by begin, moved
	// by write). startPos is where the current stream began: the flush
	// position reported never goes below it.
	posTLI   pg.TimelineID
	posLSN   pg.LSN
	posSet   bool
	startTLI pg.TimelineID
	startPos pg.LSN
	// verifyTo: bytes streamed again before it (rewind) are compared with
	// those held, not appended.
	verifyTo pg.LSN
	// archivedTo is the end of the newest segment archived whole on the
	// current timeline.
	archivedTo pg.LSN
	stats      sinkStats
	// fromPieces are complete chains of pieces found in the archive
	// without their segment: archived from the pieces.
	fromPieces []walarchive.Stream
	// localDone are complete local files to archive, oldest first.
	localDone []string
	// free are segment buffers no one holds (see segBuf).
	free [][]byte

	work     chan struct{} // durability worker
	archWake chan struct{} // archiver
	// localMu: one syncLocal at a time. spare: a zero-filled file for the
	// next segment (DurableLocal).
	localMu sync.Mutex
	spare   chan string
	wg      sync.WaitGroup
}

type sinkStats struct {
	pieces, pieceBytes, segments, segmentBytes int64
	uploadFailures                             int64
	lastUploadErr                              string
	// buffers is how many segment buffers were allocated (the others
	// came from the pool).
	buffers int64
}

func newSink(o sinkOptions) *sink {
	if o.maxInflight <= 0 {
		o.maxInflight = 2
	}
	o.maxInflight = min(o.maxInflight, MaxInflight)
	if o.maxSegments <= 0 {
		o.maxSegments = 3
	}
	if o.uploadDelay <= 0 {
		o.uploadDelay = 5 * time.Second
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	// Only the local mode syncs; in the others the workers make WAL durable.
	o.syncByStream = o.syncByStream && o.mode == DurableLocal
	s := &sink{o: o, segSize: o.cluster.SegSize, work: make(chan struct{}, 1), archWake: make(chan struct{}, 1),
		spare: make(chan string, 1)}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// run starts the workers; they end when ctx does (see shutdown).
func (s *sink) run(ctx context.Context) {
	// What an earlier run left to archive (local files, whole chains).
	wake(s.archWake)
	s.wg.Go(func() { s.archiver(ctx) })
	if s.o.mode == DurableLocal {
		s.wg.Go(func() { s.localWorker(ctx) })
		s.wg.Go(func() { s.lazyPieces(ctx) })
	} else {
		s.wg.Go(func() { s.pieceWorker(ctx) })
	}
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		s.stopping = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
}

// wait blocks until the workers have ended (after their context).
func (s *sink) wait() { s.wg.Wait() }

// pos returns the next byte the stream must deliver, and on which
// timeline. ok is false before the first begin.
func (s *sink) pos() (pg.TimelineID, pg.LSN, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.posTLI, s.posLSN, s.posSet
}

// curLocked returns the segment filling, or nil.
func (s *sink) curLocked() *heldSeg {
	if len(s.segs) == 0 {
		return nil
	}
	return s.segs[len(s.segs)-1]
}

// newSegmentLocked appends an empty segment, waiting while too many are
// held in memory (repository durability: the archiver has not caught up).
func (s *sink) newSegmentLocked(ctx context.Context, tli pg.TimelineID, no pg.SegNo) (*heldSeg, error) {
	if s.inMemoryLocked() >= s.o.maxSegments {
		// The wait below ends when ctx does, not only when the workers
		// stop: the receiver ends a stream by its context.
		stop := context.AfterFunc(ctx, func() {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
		})
		defer stop()
	}
	for s.inMemoryLocked() >= s.o.maxSegments && !s.stopping && ctx.Err() == nil {
		if s.o.syncByStream {
			// The goroutine that syncs in this mode is the one waiting
			// here: the local worker syncs the complete segments instead
			// (with 1 MiB segments, a sync every MiB can leave two).
			wake(s.work)
		}
		s.cond.Wait()
	}
	if s.stopping || ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	g := &heldSeg{tli: tli, no: no, name: pg.SegmentName(tli, no, s.segSize), buf: s.newBufLocked()}
	s.segs = append(s.segs, g)
	return g, nil
}

func (s *sink) inMemoryLocked() int {
	n := 0
	for _, g := range s.segs {
		if g.buf != nil {
			n++
		}
	}
	return n
}

// prefixFunc returns the first n bytes of a segment from a copy known to
// be good (a complete local file, the archive).
type prefixFunc func(ctx context.Context, tli pg.TimelineID, seg pg.SegNo, n int64) ([]byte, error)

// begin sets where the next stream starts: at on timeline tli.
//
//   - On the timeline the sink stands on, at is where it stands (or the
//     start of a segment read back after a restart, streamed again).
//   - On a new timeline, at is the switch point, at or before where the
//     sink stands: WAL of the old timeline past it stays as that
//     timeline's tail. The new timeline's copy of the segment holding the
//     switch point starts with the old timeline's bytes up to it.
//   - With nothing held yet, at is a segment's start, or a point inside
//     one whose bytes up to it prefix supplies from timeline from (the
//     archive's pieces of the segment that was filling: already stored).
func (s *sink) begin(ctx context.Context, tli pg.TimelineID, at pg.LSN, from pg.TimelineID, prefix prefixFunc) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seg, off := at.Segment(s.segSize), int64(at.SegmentOffset(s.segSize))
	switch {
	case s.posSet && tli == s.posTLI:
		if at == s.posLSN {
			break
		}
		cur := s.curLocked()
		if cur == nil || cur.have == 0 || cur.tli != tli || cur.no != seg || off > cur.recv {
			return fmt.Errorf("stream would start at %s, the receiver stands at %s on timeline %d", at, s.posLSN, tli)
		}
		// Streaming again from the start of a segment read back after a
		// restart.
		cur.recv = off
	case s.posSet && tli < s.posTLI:
		return fmt.Errorf("timeline %d after timeline %d", tli, s.posTLI)
	case s.posSet:
		old := s.posTLI
		if at > s.posLSN {
			return fmt.Errorf("timeline %d begins at %s, past what the receiver has of timeline %d (%s)", tli, at, old, s.posLSN)
		}
		// Everything of the old timeline past the switch point, and the
		// segment it ends in, is its tail: it stays as it is.
		for _, g := range s.segs {
			end := g.start(s.segSize) + pg.LSN(max(g.recv, g.have))
			if g.tli == old && !g.queued && (end > at || (end == at && g.recv < int64(s.segSize))) {
				g.ended = true
				if g.have > g.recv {
					g.recv = g.have
				}
				g.have = 0
			}
		}
		if off == 0 {
			break
		}
		var b []byte
		for _, g := range s.segs {
			if g.tli == old && g.no == seg && g.buf != nil && g.recv >= off {
				b = bytes.Clone(g.buf.b[:off])
			}
		}
		if b == nil {
			if prefix == nil {
				return fmt.Errorf("no copy of %s up to %s for timeline %d", pg.SegmentName(old, seg, s.segSize), at, tli)
			}
			s.mu.Unlock()
			var err error
			b, err = prefix(ctx, old, seg, off)
			s.mu.Lock()
			if err != nil {
				return err
			}
		}
		g, err := s.newSegmentLocked(ctx, tli, seg)
		if err != nil {
			return err
		}
		copy(g.buf.b, b)
		g.recv = off
		g.since, g.unstoredSince = time.Now(), time.Now()
	default:
		if off == 0 {
			break
		}
		if prefix == nil {
			return fmt.Errorf("cannot start at %s: not at a segment boundary", at)
		}
		s.mu.Unlock()
		b, err := prefix(ctx, from, seg, off)
		s.mu.Lock()
		if err != nil {
			return err
		}
		g, err := s.newSegmentLocked(ctx, tli, seg)
		if err != nil {
			return err
		}
		copy(g.buf.b, b)
		g.recv = off
		if from == tli {
			// The archive's own pieces: stored and durable already; the
			// local copy is written from the buffer.
			g.durable, g.stored, g.pieceEnd = off, off, off
		}
		g.since, g.unstoredSince = time.Now(), time.Now()
	}
	s.posTLI, s.posLSN, s.posSet = tli, at, true
	s.startTLI, s.startPos = tli, at
	wake(s.work)
	return nil
}

// rewind moves the position back to from, inside the segment filling,
// whose bytes up to the current position stay: the stream from from on is
// compared with them until it reaches the old position, so that a server
// whose WAL differs from what the receiver stored (a copy of the cluster
// run as a primary on the same timeline) is caught instead of continued.
// It reports false when the segment does not hold the bytes from from on.
func (s *sink) rewind(from pg.LSN) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.curLocked()
	if cur == nil || cur.tli != s.posTLI || cur.buf == nil || cur.ended || cur.have > 0 ||
		from >= s.posLSN || from < cur.start(s.segSize) || s.posLSN != cur.start(s.segSize)+pg.LSN(cur.recv) {
		return false
	}
	s.verifyTo = s.posLSN
	s.posLSN = from
	s.startPos = min(s.startPos, from)
	return true
}

// ErrStreamDiffers: WAL streamed again differs from the bytes held.
var ErrStreamDiffers = errors.New("the server's WAL differs from what the receiver stored")

// write appends data, which starts at lsn on timeline tli, where the sink
// stands (a message may span segments).
func (s *sink) write(ctx context.Context, tli pg.TimelineID, lsn pg.LSN, data []byte) error {
	now := time.Now()
	for len(data) > 0 {
		s.mu.Lock()
		if s.verifyTo > s.posLSN && lsn == s.posLSN && tli == s.posTLI {
			cur := s.curLocked()
			n := min(int64(len(data)), int64(s.verifyTo-lsn))
			off := int64(lsn.SegmentOffset(s.segSize))
			same := bytes.Equal(cur.buf.b[off:off+n], data[:n])
			s.mu.Unlock()
			if !same {
				return fmt.Errorf("at %s on timeline %d: %w", lsn, tli, ErrStreamDiffers)
			}
			s.mu.Lock()
			s.posLSN += pg.LSN(n)
			s.mu.Unlock()
			data, lsn = data[n:], lsn+pg.LSN(n)
			continue
		}
		if !s.posSet || tli != s.posTLI || lsn != s.posLSN {
			p := s.posLSN
			s.mu.Unlock()
			return fmt.Errorf("WAL at %s on timeline %d does not follow the receiver's position %s on timeline %d", lsn, tli, p, s.posTLI)
		}
		seg, off := lsn.Segment(s.segSize), int64(lsn.SegmentOffset(s.segSize))
		cur := s.curLocked()
		if cur == nil || cur.tli != tli || cur.no != seg || cur.ended || cur.recv != off {
			if off != 0 {
				s.mu.Unlock()
				return fmt.Errorf("WAL at %s on timeline %d: the receiver holds no segment to continue", lsn, tli)
			}
			var err error
			if cur, err = s.newSegmentLocked(ctx, tli, seg); err != nil {
				s.mu.Unlock()
				return err
			}
		}
		buf := s.refLocked(cur)
		s.mu.Unlock()
		n := copy(buf.b[off:], data)
		s.mu.Lock()
		s.unrefLocked(buf)
		if cur.recv == cur.durable {
			cur.since = now
		}
		if cur.recv == cur.stored {
			cur.unstoredSince = now
		}
		if cur.recv == cur.pieceEnd {
			cur.pieceSince = now
		}
		cur.recv += int64(n)
		s.posLSN += pg.LSN(n)
		s.lastRecv = now
		s.mu.Unlock()
		data, lsn = data[n:], lsn+pg.LSN(n)
	}
	if !s.o.syncByStream {
		wake(s.work)
	}
	return nil
}

// setConnected records whether a stream is up: while it is not, pieces of
// whatever is durable locally go to the repository at once.
func (s *sink) setConnected(up bool) {
	s.mu.Lock()
	s.connected = up
	s.mu.Unlock()
	wake(s.work)
}

// flushPos returns the end of the WAL durable without a hole on timeline
// tli (never below where the current stream began).
func (s *sink) flushPos(tli pg.TimelineID) pg.LSN {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushPosLocked(tli)
}

func (s *sink) flushPosLocked(tli pg.TimelineID) pg.LSN {
	var out pg.LSN
	found := false
	for _, g := range s.segs {
		if g.tli != tli || g.ended {
			continue
		}
		out = g.start(s.segSize) + pg.LSN(g.durable)
		found = true
		if g.durable < g.recv || g.durable < int64(s.segSize) {
			break
		}
	}
	if !found {
		out = s.posLSN
	}
	if tli == s.startTLI && out < s.startPos {
		out = s.startPos
	}
	return out
}

// sinkStatus is what status reports of the sink.
type sinkStatus struct {
	Timeline                  pg.TimelineID
	Received, Flushed, Stored pg.LSN
	Archived                  pg.LSN
	// NotDurableSince and NotStoredSince: when the oldest byte not yet
	// durable (stored) arrived; zero when there is none.
	NotDurableSince, NotStoredSince time.Time
	PendingSegments                 int
	stats                           sinkStats
}

func (s *sink) status() sinkStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := sinkStatus{stats: s.stats, Archived: s.archivedTo}
	tli, p, ok := s.posTLI, s.posLSN, s.posSet
	if !ok {
		return st
	}
	st.Timeline, st.Received = tli, p
	st.Flushed = s.flushPosLocked(tli)
	st.Stored = p
	storedSet := false
	for _, g := range s.segs {
		if !g.archived {
			st.PendingSegments++
		}
		if g.tli != tli || g.ended {
			continue
		}
		if g.durable < g.recv && (st.NotDurableSince.IsZero() || g.since.Before(st.NotDurableSince)) {
			st.NotDurableSince = g.since
		}
		if !g.archived && g.stored < g.recv {
			if !storedSet {
				st.Stored, storedSet = g.start(s.segSize)+pg.LSN(g.stored), true
			}
			if st.NotStoredSince.IsZero() || g.unstoredSince.Before(st.NotStoredSince) {
				st.NotStoredSince = g.unstoredSince
			}
		}
	}
	if tli == s.startTLI && st.Stored < s.startPos {
		st.Stored = s.startPos
	}
	st.PendingSegments += len(s.localDone) + len(s.fromPieces)
	return st
}

// ackedLocked advances g.durable (repository) and g.stored over the
// pieces acknowledged without a hole.
func (s *sink) ackedLocked(g *heldSeg, sp span) {
	g.acked = append(g.acked, sp)
	slices.SortFunc(g.acked, func(a, b span) int { return int(a.start - b.start) })
	for len(g.acked) > 0 && g.acked[0].start <= g.stored {
		if a := g.acked[0]; a.end > g.stored {
			g.addLevel(0, a)
		} else {
			// Inside what later pieces stored already (an upload that
			// another, started after it from the same place, overtook).
			g.covered = append(g.covered, a)
		}
		g.stored = max(g.stored, g.acked[0].end)
		g.acked = g.acked[1:]
	}
	if g.stored < g.recv {
		g.unstoredSince = time.Now()
	}
	if s.o.mode == DurableRepository && g.stored > g.durable {
		g.durable = g.stored
		if g.durable < g.recv {
			g.since = time.Now()
		}
	}
}

// mergeRun is how many stored pieces of one level are merged into one of
// the next: a segment that fills slowly, a commit or two per piece, then
// holds at most about mergeRun pieces per level in the archive (a few
// dozen) instead of thousands, which restore_command would fetch one by
// one at the end of a recovery. Each byte is uploaded again once per
// level (two levels for 16 MiB of small pieces).
const mergeRun = 32

func (g *heldSeg) addLevel(l int, sp span) {
	for len(g.levels) <= l {
		g.levels = append(g.levels, nil)
	}
	g.levels[l] = append(g.levels[l], sp)
}

// mergeLocked picks a run of mergeRun pieces of one level to merge, if
// any segment has one and no merge of it is in flight, with the covered
// pieces to delete beside it.
func (s *sink) mergeLocked() (g *heldSeg, level int, run, covered []span, ok bool) {
	for _, x := range s.segs {
		if x.buf == nil || x.merging || x.queued || x.archived || x.ended {
			continue
		}
		for l, sps := range x.levels {
			if len(sps) >= mergeRun {
				return x, l, slices.Clone(sps[:mergeRun]), slices.Clone(x.covered), true
			}
		}
	}
	return nil, 0, nil, nil, false
}

// merge uploads run of g as one piece, then deletes the pieces it
// replaces and the covered ones (the chain of pieces reaches as far
// either way; a failure leaves both, which is as good).
func (s *sink) merge(ctx context.Context, g *heldSeg, level int, run, covered []span, data []byte) error {
	start := run[0].start
	if _, err := s.o.arch.PutPiece(ctx, s.o.cluster, g.name, start, data); err != nil {
		return err
	}
	old := make([]walarchive.Piece, 0, len(run)+len(covered))
	for _, sp := range slices.Concat(run, covered) {
		old = append(old, walarchive.Piece{Segment: g.name, Start: sp.start, End: sp.end})
	}
	err := s.o.arch.DeletePieces(ctx, s.o.cluster.SystemID, old)
	if err != nil {
		s.o.log.Warn("cannot delete pieces merged into one; they stay beside it", "segment", g.name, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(g.levels) > level && len(g.levels[level]) >= len(run) && g.levels[level][0] == run[0] {
		g.levels[level] = g.levels[level][len(run):]
	}
	g.addLevel(level+1, span{start, run[len(run)-1].end})
	if err == nil {
		// Only appended to meanwhile.
		g.covered = g.covered[len(covered):]
	}
	return nil
}

// uploadPiece stores bytes [start, end) of g as a piece, retrying until it
// is durable or ctx ends.
func (s *sink) uploadPiece(ctx context.Context, g *heldSeg, data []byte, start int64) error {
	backoff := 50 * time.Millisecond
	for {
		_, err := s.o.arch.PutPiece(ctx, s.o.cluster, g.name, start, data)
		if err == nil {
			s.mu.Lock()
			s.stats.pieces++
			s.stats.pieceBytes += int64(len(data))
			s.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if refused(err) {
			s.o.fatal(fmt.Errorf("store a piece of %s: %w", g.name, err))
			return err
		}
		s.mu.Lock()
		s.stats.uploadFailures++
		s.stats.lastUploadErr = err.Error()
		s.mu.Unlock()
		s.o.log.Warn("piece upload failed; retrying", "segment", g.name, "start", start, "bytes", len(data), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// refused reports an error that trying again cannot cure: the archive
// holds something else under the name, or the WAL is not this cluster's.
func refused(err error) bool {
	return errors.Is(err, walarchive.ErrConflict) || errors.Is(err, walarchive.ErrForeign) ||
		errors.Is(err, walarchive.ErrInvalidFile)
}

// pieceWorker (DurableRepository) uploads what arrived as pieces, up to
// maxInflight at once: while uploads are in flight the next bytes gather,
// so that one upload carries the commits of many transactions.
//
// A piece starts where the stored pieces end, not where the pieces in
// flight do (while that is at most maxResend bytes back): it carries
// again what the uploads before it carry, so that whichever upload the
// store acknowledges first makes everything up to its end durable. An
// upload that is slow (a PUT at the store's tail latency) is overtaken by
// the next one instead of holding back every commit behind it; that
// costs bytes sent twice, not requests.
func (s *sink) pieceWorker(ctx context.Context) {
	done := make(chan struct{}, s.o.maxInflight)
	inflight := 0
	// Uploads and merges run on goroutines that live as long as the
	// worker: a goroutine per upload started on a small stack and grew it
	// through the S3 client's call chain every time (a tenth of the
	// receiver's CPU in copystack). At most maxInflight jobs are out at
	// once, so a send never blocks.
	jobs := make(chan func(), s.o.maxInflight)
	var workers sync.WaitGroup
	for range s.o.maxInflight {
		workers.Go(func() {
			for job := range jobs {
				job()
			}
		})
	}
	defer func() {
		close(jobs)
		workers.Wait()
	}()
	for {
		s.mu.Lock()
		for inflight < s.o.maxInflight {
			var g *heldSeg
			for _, x := range s.segs {
				if x.buf != nil && x.pieceEnd < x.recv && !x.archived {
					g = x
					break
				}
			}
			if g == nil {
				break
			}
			start := g.stored
			if g.recv-start > maxResend {
				start = g.pieceEnd
			}
			end := min(g.recv, start+maxPiece)
			g.pieceEnd = end
			g.inflight++
			inflight++
			buf := s.refLocked(g)
			arrived, started := g.pieceSince, time.Now()
			if end < g.recv {
				g.pieceSince = started
			}
			jobs <- func() {
				err := s.uploadPiece(ctx, g, buf.b[start:end], start)
				took := time.Since(started)
				s.mu.Lock()
				s.unrefLocked(buf)
				g.inflight--
				advanced := false
				if err == nil {
					was := g.durable
					s.ackedLocked(g, span{start, end})
					s.settleLocked(g)
					advanced = g.durable > was
				}
				s.cond.Broadcast()
				s.mu.Unlock()
				if err == nil {
					s.o.flushed()
					// What a commit waits for in this receiver: its bytes
					// waiting for an upload to start, then the upload.
					s.o.log.Debug("piece stored", "segment", g.name, "start", start, "bytes", end-start,
						"waited", started.Sub(arrived), "upload", took, "advanced", advanced)
				}
				done <- struct{}{}
			}
		}
		// Merging only uses a slot no new WAL wants: under a loaded
		// store, requests beside the uploads slow every upload down.
		if g, level, run, covered, ok := s.mergeLocked(); ok && inflight < s.o.maxInflight {
			g.merging = true
			inflight++
			buf := s.refLocked(g)
			jobs <- func() {
				err := s.merge(ctx, g, level, run, covered, buf.b[run[0].start:run[len(run)-1].end])
				if err != nil && ctx.Err() == nil {
					s.o.log.Warn("merging pieces failed; trying again later", "segment", g.name, "err", err)
				}
				s.mu.Lock()
				s.unrefLocked(buf)
				g.merging = false
				s.mu.Unlock()
				done <- struct{}{}
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			for ; inflight > 0; inflight-- {
				<-done
			}
			return
		case <-done:
			inflight--
		case <-s.work:
		}
	}
}

// settleLocked hands a complete, durable segment to the archiver.
func (s *sink) settleLocked(g *heldSeg) {
	if g.queued || g.ended || g.durable < int64(s.segSize) {
		return
	}
	g.queued = true
	wake(s.archWake)
}

// localWorker (DurableLocal) writes what arrived to the segment's local
// file and fdatasyncs it; whatever arrives during one fdatasync is written
// and synced by the next (group commit). With syncByStream it syncs only
// what the stream left (when it ended) and what begin brought.
func (s *sink) localWorker(ctx context.Context) {
	go s.spareFiles(ctx, s.spare)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.work:
		}
		for ctx.Err() == nil {
			did, err := s.syncLocal(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.o.fatal(err)
				}
				return
			}
			if !did {
				break
			}
		}
	}
}

// syncLocal (DurableLocal) writes what arrived and is not yet written to
// the local files, fdatasyncs them, and tells flushed; it reports whether
// there was anything to write. One call at a time (localMu): the stream's
// goroutine (syncByStream) and the local worker both call it.
func (s *sink) syncLocal(ctx context.Context) (bool, error) {
	s.localMu.Lock()
	defer s.localMu.Unlock()
	type job struct {
		g        *heldSeg
		buf      *segBuf
		from, to int64
	}
	var jobs []job
	s.mu.Lock()
	for _, g := range s.segs {
		if g.buf != nil && g.written < g.recv {
			jobs = append(jobs, job{g, s.refLocked(g), g.written, g.recv})
		}
	}
	s.mu.Unlock()
	if len(jobs) == 0 {
		return false, nil
	}
	var err error
	for _, j := range jobs {
		if err == nil {
			if err = s.writeLocal(ctx, j.g, j.buf.b[j.from:j.to], j.from); err != nil {
				err = fmt.Errorf("write %s: %w", filepath.Join(s.o.dir, j.g.name+".partial"), err)
			}
		}
	}
	s.mu.Lock()
	for _, j := range jobs {
		s.unrefLocked(j.buf)
	}
	if err != nil {
		s.mu.Unlock()
		return false, err
	}
	for _, j := range jobs {
		j.g.written = j.to
		if j.to > j.g.durable {
			j.g.durable = j.to
		}
		if j.g.durable < j.g.recv {
			j.g.since = time.Now()
		}
	}
	s.mu.Unlock()
	s.o.flushed()
	for _, j := range jobs {
		if j.to == int64(s.segSize) {
			if err := s.completeLocal(j.g); err != nil {
				return false, err
			}
		}
	}
	return true, nil
}

// writeLocal writes data, g's bytes from offset from on, to its file and
// syncs it.
func (s *sink) writeLocal(ctx context.Context, g *heldSeg, data []byte, from int64) error {
	if g.file == nil {
		f, err := s.openLocal(ctx, g, s.spare)
		if err != nil {
			return err
		}
		g.file = f
	}
	if _, err := g.file.WriteAt(data, from); err != nil {
		return err
	}
	return unix.Fdatasync(int(g.file.Fd()))
}

// openLocal opens (or makes) the local file of a segment: an existing one
// read back after a restart, else a spare zero-filled file renamed, else a
// new one zero-filled now. Zero-filled and synced ahead, so that each
// fdatasync writes data blocks only, as pg_receivewal's padded files do.
func (s *sink) openLocal(ctx context.Context, g *heldSeg, spare chan string) (*os.File, error) {
	path := filepath.Join(s.o.dir, g.name+".partial")
	if f, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		if fi, err := f.Stat(); err == nil && fi.Size() == int64(s.segSize) {
			return f, nil
		}
		f.Close()
	}
	select {
	case sp := <-spare:
		if err := os.Rename(sp, path); err == nil {
			if err := syncDir(s.o.dir); err != nil {
				return nil, err
			}
			return os.OpenFile(path, os.O_RDWR, 0)
		}
	default:
	}
	if err := zeroFile(path, int64(s.segSize)); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR, 0)
}

// spareFiles keeps one zero-filled, synced file ready for the next segment.
func (s *sink) spareFiles(ctx context.Context, out chan string) {
	path := filepath.Join(s.o.dir, "spare.tmp")
	for ctx.Err() == nil {
		if err := zeroFile(path, int64(s.segSize)); err != nil {
			s.o.log.Warn("cannot prepare a spare segment file", "file", path, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case out <- path:
		}
		// Wait for the rename before making the next one.
		for ctx.Err() == nil {
			if _, err := os.Stat(path); err != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// zeroFile makes path a synced file of size zero bytes (through a
// temporary name, so that a crash leaves no short file under path).
func zeroFile(path string, size int64) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	zero := make([]byte, 1<<20)
	for off := int64(0); off < size && err == nil; off += int64(len(zero)) {
		_, err = f.Write(zero[:min(int64(len(zero)), size-off)])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// completeLocal renames a complete, synced local segment to its name and
// hands it to the archiver; its buffer is not needed any more.
func (s *sink) completeLocal(g *heldSeg) error {
	from := filepath.Join(s.o.dir, g.name+".partial")
	to := filepath.Join(s.o.dir, g.name)
	if g.file != nil {
		g.file.Close()
		g.file = nil
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("complete %s: %w", to, err)
	}
	if err := syncDir(s.o.dir); err != nil {
		return fmt.Errorf("complete %s: %w", to, err)
	}
	s.mu.Lock()
	s.dropBufLocked(g)
	g.queued = true
	s.cond.Broadcast()
	s.mu.Unlock()
	wake(s.archWake)
	return nil
}

// lazyPieces (DurableLocal) uploads pieces of what is durable locally but
// not in the repository yet: at once while no stream is up (the primary
// is gone: the repository must hold every acknowledged byte) or the
// timeline ended, after a second without new WAL, and after uploadDelay in
// any case. A segment that completes is archived whole instead.
func (s *sink) lazyPieces(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		s.mu.Lock()
		idle := !s.connected || now.Sub(s.lastRecv) >= time.Second
		for _, g := range s.segs {
			if g.buf == nil || g.queued || g.archived || g.inflight > 0 || g.stored >= g.durable {
				continue
			}
			if !idle && !g.ended && now.Sub(g.unstoredSince) < s.o.uploadDelay {
				continue
			}
			start, end := g.stored, min(g.durable, g.stored+maxPiece)
			buf := s.refLocked(g)
			g.inflight++
			wg.Go(func() {
				err := s.uploadPiece(ctx, g, buf.b[start:end], start)
				s.mu.Lock()
				s.unrefLocked(buf)
				g.inflight--
				if err == nil {
					s.ackedLocked(g, span{start, end})
					s.dropLocked()
				}
				s.cond.Broadcast()
				s.mu.Unlock()
			})
		}
		s.mu.Unlock()
	}
}

// dropLocked forgets segments that need nothing more: archived whole, or
// the tail of an ended timeline that is all in the repository.
func (s *sink) dropLocked() {
	keep := s.segs[:0]
	for i, g := range s.segs {
		last := i == len(s.segs)-1
		done := g.archived || (g.ended && g.stored >= g.recv && g.inflight == 0)
		if done && !last {
			s.dropBufLocked(g)
			if g.file != nil {
				g.file.Close()
				g.file = nil
			}
			if g.ended && s.o.mode == DurableLocal {
				os.Remove(filepath.Join(s.o.dir, g.name+".partial"))
			}
			continue
		}
		if done && last {
			s.dropBufLocked(g)
		}
		keep = append(keep, g)
	}
	clear(s.segs[len(keep):])
	s.segs = keep
}

// archiver uploads complete segments whole, oldest first, through the
// archive's Put (the path wal-push takes, so the object is the same and
// whatever else that path records is recorded), then deletes the
// segment's pieces and its local file.
func (s *sink) archiver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.archWake:
		}
		for ctx.Err() == nil {
			s.mu.Lock()
			var g *heldSeg
			for _, x := range s.segs {
				if x.queued && !x.archived {
					g = x
					break
				}
			}
			var local string
			if g == nil && len(s.localDone) > 0 {
				local = s.localDone[0]
			}
			var st walarchive.Stream
			hasStream := false
			if g == nil && local == "" && len(s.fromPieces) > 0 {
				st, hasStream = s.fromPieces[0], true
			}
			s.mu.Unlock()
			var err error
			switch {
			case g != nil:
				err = s.archiveSegment(ctx, g)
			case local != "":
				err = s.archiveLocalFile(ctx, local)
			case hasStream:
				err = s.archiveStream(ctx, st)
			default:
				err = errNothing
			}
			if err == errNothing {
				break
			}
			if err != nil {
				if ctx.Err() == nil {
					s.o.fatal(err)
				}
				return
			}
		}
	}
}

var errNothing = errors.New("nothing to archive")

// put archives one complete segment, retrying until it is durable (or
// identical already there) or ctx ends; a refusal stops the receiver.
func (s *sink) put(ctx context.Context, name string, open func() (io.Reader, error)) error {
	backoff := 100 * time.Millisecond
	for {
		r, err := open()
		if err != nil {
			return err
		}
		res, err := s.o.arch.PutFrom(ctx, s.o.cluster, name, r, int64(s.segSize))
		if c, ok := r.(io.Closer); ok {
			c.Close()
		}
		if err == nil {
			s.mu.Lock()
			s.stats.segments++
			s.stats.segmentBytes += res.Stored
			s.mu.Unlock()
			s.o.log.Debug("archived", "segment", name, "created", res.Created, "stored", res.Stored)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if refused(err) || errors.Is(err, walarchive.ErrCorrupt) {
			return fmt.Errorf("archive %s: %w", name, err)
		}
		s.mu.Lock()
		s.stats.uploadFailures++
		s.stats.lastUploadErr = err.Error()
		s.mu.Unlock()
		s.o.log.Warn("segment upload failed; retrying", "segment", name, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// cleanPieces deletes the pieces of an archived segment (best effort: the
// next run deletes what is left).
func (s *sink) cleanPieces(ctx context.Context, name string) {
	ps, err := s.o.arch.ListPieces(ctx, s.o.cluster.SystemID, name)
	if err == nil && len(ps) > 0 {
		err = s.o.arch.DeletePieces(ctx, s.o.cluster.SystemID, ps)
	}
	if err != nil && ctx.Err() == nil {
		s.o.log.Warn("cannot delete the pieces of an archived segment; the next start deletes them", "segment", name, "err", err)
	}
}

func (s *sink) archiveSegment(ctx context.Context, g *heldSeg) error {
	var err error
	s.mu.Lock()
	var buf *segBuf
	if g.buf != nil {
		buf = s.refLocked(g)
	}
	s.mu.Unlock()
	if buf != nil {
		err = s.put(ctx, g.name, func() (io.Reader, error) { return bytes.NewReader(buf.b), nil })
		s.mu.Lock()
		s.unrefLocked(buf)
		s.mu.Unlock()
	} else {
		path := filepath.Join(s.o.dir, g.name)
		err = s.put(ctx, g.name, func() (io.Reader, error) { return os.Open(path) })
		if err == nil {
			defer os.Remove(path)
		}
	}
	if err != nil {
		return err
	}
	s.cleanPieces(ctx, g.name)
	// A copy an earlier run left (its bytes were streamed again).
	os.Remove(filepath.Join(s.o.dir, g.name+".partial"))
	s.mu.Lock()
	g.archived = true
	g.stored = int64(s.segSize)
	if g.tli == s.startTLI {
		s.archivedTo = max(s.archivedTo, g.start(s.segSize)+pg.LSN(s.segSize))
	}
	if g != s.curLocked() {
		s.dropBufLocked(g)
	}
	s.dropLocked()
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

func (s *sink) archiveLocalFile(ctx context.Context, name string) error {
	path := filepath.Join(s.o.dir, name)
	if err := s.put(ctx, name, func() (io.Reader, error) { return os.Open(path) }); err != nil {
		return err
	}
	s.cleanPieces(ctx, name)
	os.Remove(path)
	s.mu.Lock()
	s.localDone = s.localDone[1:]
	s.mu.Unlock()
	return nil
}

func (s *sink) archiveStream(ctx context.Context, st walarchive.Stream) error {
	chain, end := walarchive.Chain(st.Pieces)
	if end != int64(s.segSize) {
		return fmt.Errorf("pieces of %s end at %d", st.Name, end)
	}
	err := s.put(ctx, st.Name, func() (io.Reader, error) {
		var b bytes.Buffer
		b.Grow(int(s.segSize))
		if _, err := s.o.arch.ReadChain(ctx, s.o.cluster.SystemID, chain, &b); err != nil {
			return nil, err
		}
		return &b, nil
	})
	if err != nil {
		return err
	}
	s.cleanPieces(ctx, st.Name)
	s.mu.Lock()
	s.fromPieces = s.fromPieces[1:]
	s.mu.Unlock()
	return nil
}

// localFiles lists the receiver's local segment files: complete ones and
// partial ones (name without ".partial"), each sorted.
func localFiles(dir string) (complete, partial []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		n := e.Name()
		f, err := pg.ParseWALFileName(n)
		if err != nil {
			continue
		}
		switch f.Kind {
		case pg.WALSegment:
			complete = append(complete, n)
		case pg.WALPartialSegment:
			partial = append(partial, strings.TrimSuffix(n, ".partial"))
		}
	}
	slices.Sort(complete)
	slices.Sort(partial)
	return complete, partial, nil
}

// localExtent returns how far a local partial file read back after a
// crash holds WAL: through the pages with a header for their place in the
// segment, without a gap, up to the last byte that is not zero. Bytes past
// the last fdatasync may be missing or only partly there; the file's
// bytes count only as the tail of a timeline that ended (see
// segment.have), where recovery's record checks stop at a torn record.
func localExtent(buf []byte, start pg.LSN, blockSize uint32) int64 {
	if blockSize == 0 {
		blockSize = pg.DefaultWALBlockSize
	}
	var end int64
	for off := int64(0); off+int64(blockSize) <= int64(len(buf)); off += int64(blockSize) {
		h, err := pg.ParseWALPageHeader(buf[off:])
		if err != nil || h.PageAddr != start+pg.LSN(off) || h.Magic == 0 {
			break
		}
		page := buf[off : off+int64(blockSize)]
		i := len(page) - 1
		for i >= 0 && page[i] == 0 {
			i--
		}
		end = off + int64(i) + 1
	}
	return end
}
