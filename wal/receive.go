package wal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// ReceiveOptions configure a Receiver. Zero values take the defaults.
type ReceiveOptions struct {
	// ConnString reaches the primary (libpq keywords or URL; "" uses the
	// libpq environment). It may name several hosts: with
	// target_session_attrs=read-write the receiver connects to whichever
	// is the primary, and after a promotion follows the new one.
	// replication=true is added; application_name defaults to
	// DefaultApplicationName, the name synchronous_standby_names lists.
	ConnString string
	// Slot is the physical replication slot to stream from; CreateSlot
	// creates it on a server that lacks it (after a promotion too).
	Slot       string
	CreateSlot bool
	Durable    Durability
	// Dir is the receiver's directory: its lock, its state, its status
	// file and, with DurableLocal, the WAL it holds before uploading.
	Dir string
	// Cluster, when not zero, is the system identifier the server must
	// have. Dir pins the cluster of its first run in any case.
	Cluster uint64
	// StatusInterval is how often a status update goes to the server
	// without a reason (default 10s); a flush goes at once.
	StatusInterval time.Duration
	// MaxInflight bounds the piece uploads in flight (DurableRepository,
	// default 2, at most the package's MaxInflight).
	MaxInflight int
	// UploadDelay: with DurableLocal, bytes not yet in the repository are
	// uploaded as a piece after this long even while WAL keeps coming
	// (default 5s); at once when the stream stops.
	UploadDelay time.Duration
	// ShutdownTimeout bounds how long, once told to stop, the receiver
	// lets uploads in flight finish (default 30s).
	ShutdownTimeout time.Duration
	// RepoID is the repository's id, pinned in Dir's state.
	RepoID string
	Logger *slog.Logger
	// OnStatus receives the status about once a second (metrics).
	OnStatus func(ReceiveStatus)
	// OnCluster is told the cluster's facts once the first server
	// answered (the command sizes its memory limit from the segment size).
	OnCluster func(walarchive.ClusterInfo)
}

// ReceiveMemory is about what a receiver holds for a cluster with WAL
// segments of segSize bytes: the segments it buffers, and what archiving
// one whole segment takes (its compressed frames, the object).
func ReceiveMemory(segSize uint32) int64 { return int64(maxHeldSegments)*int64(segSize) + 24<<20 }

// maxHeldSegments bounds the segments a receiver holds in memory: the one
// filling and those waiting to be archived whole.
const maxHeldSegments = 3

// DefaultApplicationName is the application_name the receiver connects
// with unless the connection string sets one.
const DefaultApplicationName = "tidemark"

// Errors of a receiver that stops because it must not go on. Each is the
// cause of a *ReceiveRefusedError or wrapped with the subject.
var (
	// ErrReceiveRefused: the server, its slot or its history does not fit
	// what the receiver and the archive hold (another cluster, a history
	// that differs from the archived one, a logical slot, no slot).
	ErrReceiveRefused = errors.New("wal-receive refused")
	// ErrWALRemoved: the server no longer has WAL the receiver needs; the
	// archive would have a gap.
	ErrWALRemoved = errors.New("WAL the receiver needs is no longer on the server")
	// ErrReceiverRunning: another receiver holds the directory.
	ErrReceiverRunning = errors.New("another wal-receive uses this directory")
)

// ReceiveRefusedError is one line saying what does not fit and what to do.
// It matches ErrReceiveRefused, and walarchive.ErrForeign (another cluster)
// or walarchive.ErrConflict (a history that differs) when Kind says so.
type ReceiveRefusedError struct {
	Msg  string
	Kind error
}

func (e *ReceiveRefusedError) Error() string { return e.Msg }

func (e *ReceiveRefusedError) Unwrap() []error {
	if e.Kind != nil {
		return []error{ErrReceiveRefused, e.Kind}
	}
	return []error{ErrReceiveRefused}
}

func refusef(kind error, format string, args ...any) error {
	return &ReceiveRefusedError{Msg: fmt.Sprintf(format, args...), Kind: kind}
}

// fatalError marks an error that ends Run rather than a reconnect.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func isFatal(err error) bool {
	var fe *fatalError
	return errors.As(err, &fe) || errors.Is(err, ErrReceiveRefused) || errors.Is(err, ErrWALRemoved)
}

// Receiver streams WAL from a primary over the physical replication
// protocol into the repository's WAL archive, reporting to the server as
// flushed only what is durable where Options.Durable says. See docs/wal.md,
// "Streaming: wal-receive".
type Receiver struct {
	arch *walarchive.Archive
	opts ReceiveOptions
	log  *slog.Logger
	cfg  *pgconn.Config

	ci      walarchive.ClusterInfo // known after the first connection
	sink    *sink
	sinkCtx context.Context
	stop    context.CancelFunc
	fatal   chan error

	// Where a receiver with nothing held starts (from the archive).
	start struct {
		tli pg.TimelineID
		lsn pg.LSN
		ok  bool
	}
	// tails are local partial files of timelines the server's history
	// does not continue; pieces are uploaded from them.
	histories map[pg.TimelineID][]byte // verified against the archive

	kick   atomic.Pointer[chan struct{}] // the current stream's status goroutine
	sender atomic.Pointer[statusSender]  // the current stream's status updates
	abort  context.CancelFunc            // ends the stream after a fatal error of the sink

	mu sync.Mutex
	st ReceiveStatus
}

// NewReceiver checks the options and returns a Receiver for the archive.
func NewReceiver(arch *walarchive.Archive, opts ReceiveOptions) (*Receiver, error) {
	if opts.Slot == "" {
		return nil, errors.New("a replication slot is needed (--slot)")
	}
	if !validSlotName(opts.Slot) {
		return nil, fmt.Errorf("slot name %q: PostgreSQL allows lower-case letters, digits and underscores only", opts.Slot)
	}
	if opts.Dir == "" {
		return nil, errors.New("the receiver needs a directory (--dir)")
	}
	if opts.Durable == 0 {
		opts.Durable = DurableLocal
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.MaxInflight > MaxInflight {
		return nil, fmt.Errorf("at most %d piece uploads in flight (--max-inflight %d)", MaxInflight, opts.MaxInflight)
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgconn.ParseConfig(opts.ConnString)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	if cfg.ValidateConnect != nil {
		// pgx checks target_session_attrs with SQL a walsender refuses;
		// the replication grammar has SHOW (in upper case).
		cfg.ValidateConnect = replicationValidator(cfg.ValidateConnect)
	}
	delete(cfg.RuntimeParams, "database")
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = DefaultApplicationName
	}
	// A cancelled context only sets a deadline: a cancel request would
	// end the walsender's stream, and the receiver decides itself when to
	// close.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	r := &Receiver{arch: arch, opts: opts, log: opts.Logger, cfg: cfg, fatal: make(chan error, 1),
		histories: map[pg.TimelineID][]byte{}}
	r.st.Durable = opts.Durable.String()
	r.st.Slot = opts.Slot
	r.st.PID = os.Getpid()
	r.st.CommitsWaiting = -1
	return r, nil
}

// replicationValidator replaces pgx's target_session_attrs check with
// one that works on a replication connection: read-write and primary want
// a server that is not read-only (not in recovery), read-only, standby
// and prefer-standby one that is.
func replicationValidator(v pgconn.ValidateConnectFunc) pgconn.ValidateConnectFunc {
	is := func(f pgconn.ValidateConnectFunc) bool {
		return reflect.ValueOf(v).Pointer() == reflect.ValueOf(f).Pointer()
	}
	wantReadOnly := false
	switch {
	case is(pgconn.ValidateConnectTargetSessionAttrsReadWrite), is(pgconn.ValidateConnectTargetSessionAttrsPrimary):
	case is(pgconn.ValidateConnectTargetSessionAttrsReadOnly), is(pgconn.ValidateConnectTargetSessionAttrsStandby),
		is(pgconn.ValidateConnectTargetSessionAttrsPreferStandby):
		wantReadOnly = true
	default:
		return nil
	}
	return func(ctx context.Context, c *pgconn.PgConn) error {
		res, err := c.Exec(ctx, "SHOW transaction_read_only").ReadAll()
		if err != nil {
			return err
		}
		if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
			return errors.New("SHOW transaction_read_only: unexpected result")
		}
		readOnly := string(res[0].Rows[0][0]) == "on"
		switch {
		case readOnly && !wantReadOnly:
			return errors.New("the server is read-only (a standby), target_session_attrs wants a primary")
		case !readOnly && wantReadOnly:
			return errors.New("the server is not read-only, target_session_attrs wants a standby")
		}
		return nil
	}
}

func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ApplicationName is the application_name the receiver connects with.
func (r *Receiver) ApplicationName() string { return r.cfg.RuntimeParams["application_name"] }

// receiverState is Dir/state.json: what a receiver's directory belongs to.
type receiverState struct {
	Format     int    `json:"format"`
	Cluster    uint64 `json:"cluster,string"`
	SegSize    uint32 `json:"wal_segment_size"`
	Repository string `json:"repository"`
	Slot       string `json:"slot"`
}

// Run receives WAL until ctx ends (then it lets uploads in flight finish for
// ShutdownTimeout and returns nil) or something refuses it (another cluster,
// a history that does not match, WAL gone from the server). A lost
// connection is not an error: it connects again, to whichever host is the
// primary then.
func (r *Receiver) Run(ctx context.Context) error {
	if err := os.MkdirAll(r.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("receiver directory: %w", err)
	}
	unlock, err := lockDir(r.opts.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	sinkCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r.sinkCtx, r.stop = sinkCtx, stop
	defer stop()
	go r.statusLoop(sinkCtx)
	// A refusal from the sink's workers (an archived segment that differs,
	// a local disk that fails) ends the stream at once.
	streamCtx, abort := context.WithCancel(ctx)
	defer abort()
	r.abort = abort

	backoff := 100 * time.Millisecond
	var runErr error
	for ctx.Err() == nil {
		err := r.session(streamCtx)
		select {
		case ferr := <-r.fatal:
			err = ferr
		default:
		}
		if err == nil || (ctx.Err() != nil && !isFatal(err)) {
			break
		}
		if isFatal(err) {
			runErr = err
			break
		}
		r.setErr(err)
		r.log.Warn("replication stream ended; connecting again", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case ferr := <-r.fatal:
			runErr = ferr
		case <-time.After(backoff):
		}
		if runErr != nil {
			break
		}
		backoff = min(2*backoff, 5*time.Second)
		if errors.Is(err, errStreamed) {
			backoff = 100 * time.Millisecond
		}
	}
	r.shutdown()
	r.writeStatus()
	return runErr
}

// errStreamed marks a session that streamed before it ended: the next
// attempt starts without waiting long.
var errStreamed = errors.New("stream ended")

// shutdown waits for the sink to make what it received durable, up to
// ShutdownTimeout, then stops its workers.
func (r *Receiver) shutdown() {
	if r.sink == nil {
		return
	}
	deadline := time.Now().Add(r.opts.ShutdownTimeout)
	for time.Now().Before(deadline) {
		st := r.sink.status()
		if st.Flushed >= st.Received && st.NotDurableSince.IsZero() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.stop()
	r.sink.wait()
}

// lockDir holds Dir/lock (flock) for the receiver's life.
func lockDir(dir string) (func(), error) {
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("receiver lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		pid, _ := os.ReadFile(p)
		return nil, fmt.Errorf("%s is held by pid %s: %w", p, strings.TrimSpace(string(pid)), ErrReceiverRunning)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

// session is one connection: identify the server, line its timeline up
// with what the receiver holds, and stream until the connection ends.
func (r *Receiver) session(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := pgconn.ConnectConfig(cctx, r.cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Ends the stream when ctx does: closing the socket unblocks the read.
	stopWatch := context.AfterFunc(ctx, func() { conn.Conn().Close() })
	defer stopWatch()
	server := conn.Conn().RemoteAddr().String()
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("IDENTIFY_SYSTEM on %s: %w", server, err)
	}
	sysid, err := strconv.ParseUint(sys.SystemID, 10, 64)
	if err != nil {
		return fmt.Errorf("IDENTIFY_SYSTEM on %s: system identifier %q: %w", server, sys.SystemID, err)
	}
	T := pg.TimelineID(sys.Timeline)
	if err := r.setup(ctx, conn, server, sysid, T); err != nil {
		return err
	}
	r.mu.Lock()
	r.st.Server, r.st.ServerTimeline, r.st.Connected = server, T, false
	r.mu.Unlock()
	hist, err := r.serverHistory(ctx, conn, server, T)
	if err != nil {
		return err
	}
	tli, at, err := r.reconcile(ctx, conn, hist, pg.LSN(sys.XLogPos))
	if err != nil {
		return err
	}
	streamed := false
	for {
		next, nextAt, err := r.stream(ctx, conn, server, tli, at, &streamed)
		if err != nil {
			if streamed && !isFatal(err) {
				return fmt.Errorf("%w: %w", errStreamed, err)
			}
			return err
		}
		// The timeline ended at nextAt: the server goes on with next.
		if err := r.archiveHistory(ctx, conn, server, next); err != nil {
			return err
		}
		r.log.Info("timeline switch", "from", tli, "to", next, "at", nextAt)
		if err := r.sink.begin(ctx, next, nextAt, 0, r.prefix); err != nil {
			return &fatalError{err}
		}
		tli, at = next, nextAt
	}
}

// setup checks the server against what the receiver knows (the cluster it
// was given, the one its directory is of) and, the first time, opens the
// directory's state and starts the sink.
func (r *Receiver) setup(ctx context.Context, conn *pgconn.PgConn, server string, sysid uint64, T pg.TimelineID) error {
	statePath := filepath.Join(r.opts.Dir, "state.json")
	var st receiverState
	haveState := readJSON(statePath, &st) == nil
	if r.opts.Cluster != 0 && sysid != r.opts.Cluster {
		return refusef(walarchive.ErrForeign, "refusing %s: it is cluster %d (system identifier), the receiver archives cluster %d (--cluster); "+
			"check the hosts in the connection string", server, sysid, r.opts.Cluster)
	}
	if haveState && st.Cluster != sysid {
		return refusef(walarchive.ErrForeign, "refusing slot %q on %s: the server is cluster %d, but %s belongs to a receiver of cluster %d; "+
			"check the hosts in the connection string, or give this cluster a directory of its own", r.opts.Slot, server, sysid, statePath, st.Cluster)
	}
	if haveState && st.Repository != "" && r.opts.RepoID != "" && st.Repository != r.opts.RepoID {
		return refusef(nil, "%s belongs to a receiver of repository %s, not %s: give each repository a directory of its own", statePath, st.Repository, r.opts.RepoID)
	}
	if r.sink != nil {
		if sysid != r.ci.SystemID {
			return refusef(walarchive.ErrForeign, "refusing %s: it is cluster %d, the receiver streamed cluster %d", server, sysid, r.ci.SystemID)
		}
		return nil
	}
	segSize, err := showSize(ctx, conn, "wal_segment_size")
	if err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	blockSize, err := showSize(ctx, conn, "wal_block_size")
	if err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	ci := walarchive.ClusterInfo{SystemID: sysid, SegSize: uint32(segSize), BlockSize: uint32(blockSize)}
	if err := pg.ValidateWALSegSize(uint64(ci.SegSize)); err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	if _, err := r.arch.EnsureCluster(ctx, ci); err != nil {
		if errors.Is(err, walarchive.ErrForeign) {
			return &fatalError{err}
		}
		return err
	}
	if !haveState {
		st = receiverState{Format: 1, Cluster: sysid, SegSize: ci.SegSize, Repository: r.opts.RepoID, Slot: r.opts.Slot}
		if err := writeJSONSynced(statePath, st); err != nil {
			return &fatalError{fmt.Errorf("write %s: %w", statePath, err)}
		}
	}
	r.ci = ci
	if r.opts.OnCluster != nil {
		r.opts.OnCluster(ci)
	}
	r.mu.Lock()
	r.st.Cluster = sysid
	r.mu.Unlock()
	walDir := filepath.Join(r.opts.Dir, "wal")
	if r.opts.Durable == DurableLocal {
		if err := os.MkdirAll(walDir, 0o700); err != nil {
			return &fatalError{err}
		}
	}
	r.sink = newSink(sinkOptions{arch: r.arch, cluster: ci, mode: r.opts.Durable, dir: walDir,
		maxInflight: r.opts.MaxInflight, uploadDelay: r.opts.UploadDelay, maxSegments: maxHeldSegments, log: r.log,
		fatal: func(err error) {
			select {
			case r.fatal <- &fatalError{err}:
			default:
			}
			r.abort()
		},
		flushed: r.poke, syncByStream: r.opts.Durable == DurableLocal})
	if err := r.recover(ctx, T); err != nil {
		return err
	}
	r.sink.run(r.sinkCtx)
	return nil
}

// poke sends the current stream's server a status update if the flush
// position moved: at once, from the goroutine that made WAL durable (the
// local writer, an upload), not through another goroutine's wake-up,
// which cost a commit a scheduling round trip and the receiver CPU.
func (r *Receiver) poke() {
	if ss := r.sender.Load(); ss != nil {
		ss.send(false)
	}
}

// showSize reads a size setting over the replication connection ("16MB",
// "8192").
func showSize(ctx context.Context, conn *pgconn.PgConn, name string) (uint64, error) {
	res, err := conn.Exec(ctx, "SHOW "+name).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("SHOW %s: %w", name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return 0, fmt.Errorf("SHOW %s: unexpected result", name)
	}
	return parseSetting(string(res[0].Rows[0][0]))
}

// parseSetting reads a size as SHOW prints it: a number with an optional
// unit (B, kB, MB, GB).
func parseSetting(v string) (uint64, error) {
	units := []struct {
		s string
		m uint64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}}
	mult := uint64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(v, u.s); ok {
			v, mult = rest, u.m
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("setting %q is not a size", v)
	}
	return n * mult, nil
}

// serverHistory reads the history of the server's timeline and archives
// it (and checks it against the archived copy).
func (r *Receiver) serverHistory(ctx context.Context, conn *pgconn.PgConn, server string, T pg.TimelineID) (pg.History, error) {
	if T <= 1 {
		return pg.History{Timeline: 1}, nil
	}
	if err := r.archiveHistory(ctx, conn, server, T); err != nil {
		return pg.History{}, err
	}
	h, err := pg.ParseHistory(T, r.histories[T])
	if err != nil {
		return pg.History{}, refusef(walarchive.ErrInvalidFile, "the history of timeline %d on %s: %v", T, server, err)
	}
	return h, nil
}

// archiveHistory fetches timeline tli's history file from the server and
// archives it, or checks that the archived one is the same file: two
// histories under one timeline number mean two clusters, or a copy of
// this one that was promoted on its own, write to one archive.
func (r *Receiver) archiveHistory(ctx context.Context, conn *pgconn.PgConn, server string, tli pg.TimelineID) error {
	if tli <= 1 {
		return nil
	}
	if _, ok := r.histories[tli]; ok {
		return nil
	}
	res, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY %d on %s: %w", tli, server, err)
	}
	name := pg.HistoryFileName(tli)
	have, _, err := r.arch.ReadFile(ctx, r.ci.SystemID, name)
	switch {
	case err == nil:
		if !bytes.Equal(have, res.Content) {
			key, _ := walarchive.Key(r.ci.SystemID, name)
			return refusef(walarchive.ErrConflict, "refusing %s: its history of timeline %d differs from the archived %s; "+
				"two servers of cluster %d promoted to the same timeline (a restored copy run as a primary?): "+
				"point the receiver at the cluster the archive follows, or archive the other one to another repository",
				server, tli, key, r.ci.SystemID)
		}
	case errors.Is(err, walarchive.ErrNotArchived):
		if _, err := r.arch.Put(ctx, r.ci, name, res.Content); err != nil {
			if refused(err) {
				return &fatalError{fmt.Errorf("archive %s from %s: %w", name, server, err)}
			}
			return fmt.Errorf("archive %s: %w", name, err)
		}
	default:
		return fmt.Errorf("read the archived %s: %w", name, err)
	}
	if _, err := pg.ParseHistory(tli, res.Content); err != nil {
		return refusef(walarchive.ErrInvalidFile, "the history of timeline %d on %s: %v", tli, server, err)
	}
	r.histories[tli] = res.Content
	return nil
}

// recover finds where a receiver with nothing in memory stands: the local
// files of an earlier run (DurableLocal), the archive's newest WAL and the
// pieces of the segment that was filling. It also queues what an earlier
// run left to archive and removes pieces of archived segments.
func (r *Receiver) recover(ctx context.Context, T pg.TimelineID) error {
	l, err := r.arch.List(ctx, r.ci.SystemID)
	if err != nil {
		return fmt.Errorf("list the WAL archive: %w", err)
	}
	s := r.sink
	segSize := r.ci.SegSize
	var stale []walarchive.Piece
	type pos struct {
		tli  pg.TimelineID
		lsn  pg.LSN
		tail *walarchive.Stream
	}
	var best pos
	better := func(p pos) bool { return p.tli > best.tli || (p.tli == best.tli && p.lsn > best.lsn) }
	for _, t := range l.Timelines {
		if n := len(t.Segments); n > 0 {
			if p := (pos{tli: t.Timeline, lsn: (t.Segments[n-1].Last + 1).Start(segSize)}); better(p) {
				best = p
			}
		}
		for i := range t.Streams {
			st := t.Streams[i]
			switch {
			case t.Has(st.Seg):
				stale = append(stale, st.Pieces...)
			case st.Complete:
				s.fromPieces = append(s.fromPieces, st)
				if p := (pos{tli: t.Timeline, lsn: (st.Seg + 1).Start(segSize)}); better(p) {
					best = p
				}
			case st.End > 0:
				if p := (pos{tli: t.Timeline, lsn: st.EndLSN(segSize), tail: &t.Streams[i]}); better(p) {
					best = p
				}
			}
		}
	}
	if len(stale) > 0 {
		if err := r.arch.DeletePieces(ctx, r.ci.SystemID, stale); err != nil {
			r.log.Warn("cannot delete pieces of archived segments", "err", err)
		}
	}
	// Local files of an earlier run, in either mode (it may have run with
	// --durable local): complete segments to archive, partial ones that
	// may hold acknowledged WAL not yet in the repository.
	if _, err := os.Stat(s.o.dir); err == nil {
		complete, partial, err := localFiles(s.o.dir)
		if err != nil {
			return &fatalError{fmt.Errorf("read %s: %w", s.o.dir, err)}
		}
		s.localDone = complete
		for _, name := range complete {
			f, _ := pg.ParseWALFileName(name)
			seg, err := f.SegNo(segSize)
			if err == nil && better(pos{tli: f.Timeline, lsn: (seg + 1).Start(segSize)}) {
				best = pos{tli: f.Timeline, lsn: (seg + 1).Start(segSize)}
			}
		}
		var curLocal *heldSeg
		for _, name := range partial {
			g, err := r.readLocal(name)
			if err != nil {
				return &fatalError{err}
			}
			if t := l.Timeline(g.tli); t != nil && t.Has(g.no) {
				os.Remove(filepath.Join(s.o.dir, name+".partial"))
				continue
			}
			if st, ok := timelineStream(l, g.tli, g.no); ok {
				g.stored, g.pieceEnd = st.End, st.End
			}
			p := pos{tli: g.tli, lsn: g.start(segSize) + pg.LSN(g.have)}
			if better(p) || (p.tli == best.tli && g.start(segSize) <= best.lsn && best.lsn <= p.lsn) {
				if curLocal != nil {
					r.endLocal(curLocal)
				}
				curLocal, best = g, p
				continue
			}
			r.endLocal(g)
		}
		if curLocal != nil {
			// Stream this segment again from its first byte; the file's
			// bytes count only if its timeline ended inside it.
			s.segs = append(s.segs, curLocal)
			s.posTLI, s.posLSN, s.posSet = curLocal.tli, curLocal.start(segSize), true
			s.startTLI, s.startPos = s.posTLI, s.posLSN
			r.log.Info("resuming from the local copy", "segment", curLocal.name, "bytes", curLocal.have)
			return nil
		}
	}
	switch {
	case best.tli == 0:
		r.log.Info("the archive holds no WAL of this cluster yet: starting at the server's position")
	case best.tail != nil:
		tail := *best.tail
		r.log.Info("resuming from the archive's pieces", "segment", tail.Name, "bytes", tail.End)
		return r.sink.begin(ctx, best.tli, best.lsn, best.tli, r.prefix)
	default:
		r.start.tli, r.start.lsn, r.start.ok = best.tli, best.lsn, true
		r.log.Info("starting after the archive's newest segment", "timeline", best.tli, "lsn", best.lsn)
	}
	return nil
}

func timelineStream(l *walarchive.Listing, tli pg.TimelineID, seg pg.SegNo) (walarchive.Stream, bool) {
	t := l.Timeline(tli)
	if t == nil {
		return walarchive.Stream{}, false
	}
	return t.Stream(seg)
}

// readLocal reads back a local partial file after a restart.
func (r *Receiver) readLocal(name string) (*heldSeg, error) {
	f, _ := pg.ParseWALFileName(name)
	seg, err := f.SegNo(r.ci.SegSize)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(r.sink.o.dir, name+".partial")
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	r.sink.mu.Lock()
	buf := r.sink.newBufLocked()
	r.sink.mu.Unlock()
	n, err := io.ReadFull(fh, buf.b)
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	// localExtent reads the whole buffer: a short file's tail is zeros.
	clear(buf.b[n:])
	g := &heldSeg{tli: f.Timeline, no: seg, name: name, buf: buf}
	g.have = localExtent(buf.b, seg.Start(r.ci.SegSize), r.ci.BlockSize)
	return g, nil
}

// endLocal keeps a local partial file of an earlier run that is not where
// the receiver resumes as the tail of its timeline: its bytes go to the
// repository as pieces.
func (r *Receiver) endLocal(g *heldSeg) {
	g.recv, g.durable, g.written = g.have, g.have, g.have
	g.ended = true
	g.have = 0
	g.pieceEnd = max(g.pieceEnd, g.stored)
	if g.recv > 0 {
		r.sink.segs = append([]*heldSeg{g}, r.sink.segs...)
	}
}

// prefix returns the first n bytes of segment seg of timeline tli from a
// copy that is known good: a complete local file, the archived segment, or
// the archive's pieces of it.
func (r *Receiver) prefix(ctx context.Context, tli pg.TimelineID, seg pg.SegNo, n int64) ([]byte, error) {
	name := pg.SegmentName(tli, seg, r.ci.SegSize)
	if b, err := os.ReadFile(filepath.Join(r.sink.o.dir, name)); err == nil && int64(len(b)) >= n {
		return b[:n], nil
	}
	b, _, err := r.arch.ReadFile(ctx, r.ci.SystemID, name)
	if err == nil && int64(len(b)) >= n {
		return b[:n], nil
	}
	if err != nil && !errors.Is(err, walarchive.ErrNotArchived) {
		return nil, err
	}
	ps, err := r.arch.ListPieces(ctx, r.ci.SystemID, name)
	if err != nil {
		return nil, err
	}
	chain, end := walarchive.Chain(ps)
	if end >= n {
		var buf bytes.Buffer
		if _, err := r.arch.ReadChain(ctx, r.ci.SystemID, chain, &buf); err != nil {
			return nil, err
		}
		return buf.Bytes()[:n], nil
	}
	return nil, fmt.Errorf("no copy of %s holds its first %d bytes (not archived, no pieces that far)", name, n)
}

// reconcile decides where the stream starts on this server: where the
// receiver stands if that is on the server's history, moving to the next
// timeline of that history where the receiver's timeline ended (and
// leaving what it holds past the switch point as the old timeline's tail).
func (r *Receiver) reconcile(ctx context.Context, conn *pgconn.PgConn, hist pg.History, serverPos pg.LSN) (pg.TimelineID, pg.LSN, error) {
	segSize := r.ci.SegSize
	tli, p, ok := r.sink.pos()
	if !ok {
		switch {
		case r.start.ok && hist.Contains(r.start.tli):
			tli, p = r.start.tli, r.start.lsn
		case r.start.ok:
			r.log.Warn("the archive's newest WAL is on a timeline the server's history does not contain; starting at the server's position",
				"archive_timeline", r.start.tli, "server_timeline", hist.Timeline)
			tli, p = hist.Timeline, serverPos.Segment(segSize).Start(segSize)
		default:
			tli, p = hist.Timeline, serverPos.Segment(segSize).Start(segSize)
		}
		r.start.ok = false
		if err := r.sink.begin(ctx, tli, p, tli, r.prefix); err != nil {
			return 0, 0, &fatalError{err}
		}
	}
	for {
		end, ok := hist.End(tli)
		if ok && p < end {
			// Stream a little of what is held again and compare it: the
			// server must have the same WAL before the receiver goes on.
			if from := max(p.Segment(segSize).Start(segSize), p-pg.LSN(verifyBytes)); from < p && r.sink.rewind(from) {
				return tli, from, nil
			}
			return tli, p, nil
		}
		if !ok {
			return 0, 0, refusef(walarchive.ErrConflict, "refusing the server's timeline %d: the receiver follows timeline %d, which its history (%s) does not contain; "+
				"the server is not the primary the receiver followed (another branch of this cluster's history?): check the hosts in the connection string",
				hist.Timeline, tli, strings.TrimSpace(strings.ReplaceAll(string(hist.Encode()), "\n", "; ")))
		}
		next := hist.TimelineOf(end)
		if err := r.archiveHistory(ctx, conn, "", next); err != nil {
			return 0, 0, err
		}
		if p > end {
			r.log.Warn("the receiver holds WAL of its timeline past where the server's timeline branched off; it stays in the archive as the old timeline's tail",
				"timeline", tli, "switch_point", end, "held_to", p, "next_timeline", next)
		}
		if err := r.sink.begin(ctx, next, end, tli, r.prefix); err != nil {
			return 0, 0, &fatalError{err}
		}
		tli, p = next, end
	}
}

// verifyBytes is how much of what it holds the receiver streams again and
// compares on connecting (a WAL page).
const verifyBytes = 8192

// stream runs START_REPLICATION from at on timeline tli and writes what
// arrives into the sink, until the connection ends (an error) or the
// timeline does (next and nextAt: where the server's next timeline begins).
func (r *Receiver) stream(ctx context.Context, conn *pgconn.PgConn, server string, tli pg.TimelineID, at pg.LSN, streamed *bool) (next pg.TimelineID, nextAt pg.LSN, err error) {
	if err := r.startReplication(ctx, conn, server, tli, at); err != nil {
		if t, lsn, ok := pglogrepl.IsErrEndTimeline(err); ok {
			return pg.TimelineID(t), pg.LSN(lsn), nil
		}
		return 0, 0, err
	}
	*streamed = true
	r.log.Info("streaming", "server", server, "timeline", tli, "from", at, "slot", r.opts.Slot)
	r.sink.setConnected(true)
	defer r.sink.setConnected(false)
	r.mu.Lock()
	r.st.Connected, r.st.Timeline, r.st.WALPID = true, tli, conn.PID()
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.st.Connected = false
		r.mu.Unlock()
	}()

	kick := make(chan struct{}, 1)
	r.kick.Store(&kick)
	defer r.kick.Store(nil)
	var lastMsg atomic.Int64
	lastMsg.Store(time.Now().UnixNano())
	sctx, stopSender := context.WithCancel(ctx)
	ss := &statusSender{ctx: sctx, conn: conn, tli: tli, sink: r.sink, log: r.log}
	r.sender.Store(ss)
	defer r.sender.Store(nil)
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		// Once it ends no update is sent (CopyDone may follow).
		defer ss.stop()
		r.sendStatus(sctx, ss, kick, &lastMsg)
	}()
	defer func() {
		stopSender()
		<-senderDone
	}()
	// unsynced counts the bytes written since the last syncLocal
	// (DurableLocal): they are synced once everything that arrived is read
	// (the read buffer is empty), or at syncEvery while WAL keeps coming.
	unsynced := 0
	for {
		if unsynced > 0 && (conn.Frontend().ReadBufferLen() == 0 || unsynced >= syncEvery) {
			unsynced = 0
			if _, err := r.sink.syncLocal(ctx); err != nil {
				return 0, 0, &fatalError{err}
			}
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			return 0, 0, fmt.Errorf("receive from %s: %w", server, err)
		}
		lastMsg.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return 0, 0, fmt.Errorf("from %s: %w", server, err)
				}
				if err := r.sink.write(ctx, tli, pg.LSN(x.WALStart), x.WALData); err != nil {
					if ctx.Err() != nil {
						// Stopping (or stopped by a worker's refusal, which
						// Run reports): not a refusal of this stream.
						return 0, 0, fmt.Errorf("from %s: %w", server, err)
					}
					if errors.Is(err, ErrStreamDiffers) {
						return 0, 0, refusef(walarchive.ErrConflict, "refusing %s: its WAL %v; it is not the server the receiver streamed from "+
							"(a copy of the cluster running as a primary on the same timeline?): check the hosts in the connection string", server, err)
					}
					return 0, 0, &fatalError{fmt.Errorf("from %s: %w", server, err)}
				}
				if r.sink.o.syncByStream {
					unsynced += len(x.WALData)
				}
				r.noteServer(pg.LSN(x.ServerWALEnd), x.ServerTime)
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return 0, 0, fmt.Errorf("from %s: %w", server, err)
				}
				r.noteServer(pg.LSN(k.ServerWALEnd), k.ServerTime)
				if k.ReplyRequested {
					wake(kick)
				}
			}
		case *pgproto3.CopyDone:
			// The timeline ended: the server says where the next begins.
			stopSender()
			<-senderDone
			res, err := pglogrepl.SendStandbyCopyDone(ctx, conn)
			if err != nil {
				return 0, 0, fmt.Errorf("end of timeline %d on %s: %w", tli, server, err)
			}
			if res == nil {
				return 0, 0, fmt.Errorf("end of timeline %d on %s: no next timeline", tli, server)
			}
			if _, p, _ := r.sink.pos(); p != pg.LSN(res.LSN) {
				r.log.Warn("timeline ended elsewhere than the stream", "timeline", tli, "switch_point", pg.LSN(res.LSN), "received_to", p)
			}
			return pg.TimelineID(res.Timeline), pg.LSN(res.LSN), nil
		case *pgproto3.ErrorResponse:
			pe := pgconn.ErrorResponseToPgError(m)
			if walRemoved(pe) {
				return 0, 0, fmt.Errorf("stream from %s on timeline %d: %s: %w; the archive would have a gap: "+
					"archive the missing WAL (archive_command) or take a new base backup, then start the receiver again",
					server, tli, pe.Message, ErrWALRemoved)
			}
			return 0, 0, fmt.Errorf("from %s: %w", server, pe)
		}
	}
}

func (r *Receiver) noteServer(end pg.LSN, at time.Time) {
	r.mu.Lock()
	if end > r.st.ServerWALEnd {
		r.st.ServerWALEnd = end
	}
	r.st.LastMessage = at
	r.mu.Unlock()
}

// startReplication starts streaming, creating the slot first if it is
// missing and CreateSlot allows.
func (r *Receiver) startReplication(ctx context.Context, conn *pgconn.PgConn, server string, tli pg.TimelineID, at pg.LSN) error {
	opts := pglogrepl.StartReplicationOptions{Timeline: int32(tli), Mode: pglogrepl.PhysicalReplication}
	for attempt := 0; ; attempt++ {
		err := pglogrepl.StartReplication(ctx, conn, r.opts.Slot, pglogrepl.LSN(at), opts)
		if err == nil {
			return nil
		}
		if _, _, ok := pglogrepl.IsErrEndTimeline(err); ok {
			return err
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			return fmt.Errorf("START_REPLICATION on %s: %w", server, err)
		}
		// The server follows an error with ReadyForQuery, which
		// StartReplication leaves unread.
		if err := drainToReady(ctx, conn); err != nil {
			return fmt.Errorf("START_REPLICATION on %s: %w", server, err)
		}
		switch {
		case pe.Code == "42704" && r.opts.CreateSlot && attempt == 0:
			sql := "CREATE_REPLICATION_SLOT " + r.opts.Slot + " PHYSICAL RESERVE_WAL"
			if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
				return fmt.Errorf("create the replication slot %q on %s: %w", r.opts.Slot, server, err)
			}
			r.log.Info("created the replication slot", "slot", r.opts.Slot, "server", server)
		case pe.Code == "42704":
			return refusef(nil, "the replication slot %q does not exist on %s: create it (SELECT pg_create_physical_replication_slot('%s', true)) "+
				"or pass --create-slot", r.opts.Slot, server, r.opts.Slot)
		case strings.Contains(pe.Message, "logical replication slot"):
			return refusef(nil, "refusing slot %q on %s: %s; give the receiver a physical slot of its own", r.opts.Slot, server, pe.Message)
		case walRemoved(pe):
			return fmt.Errorf("start at %s on timeline %d on %s: %s: %w; the archive would have a gap: "+
				"archive the missing WAL (archive_command) or take a new base backup, then start the receiver again",
				at, tli, server, pe.Message, ErrWALRemoved)
		case strings.Contains(pe.Message, "is not in this server's history"):
			return refusef(walarchive.ErrConflict, "refusing %s: %s: it is not on the history the receiver follows", server, pe.Message)
		default:
			return fmt.Errorf("START_REPLICATION at %s on timeline %d on %s: %w", at, tli, server, err)
		}
	}
}

// walRemoved reports the walsender's "requested WAL segment ... has
// already been removed".
func walRemoved(pe *pgconn.PgError) bool {
	return pe.Code == "58P01" || strings.Contains(pe.Message, "has already been removed")
}

// drainToReady reads up to the server's ReadyForQuery.
func drainToReady(ctx context.Context, conn *pgconn.PgConn) error {
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return nil
		}
	}
}

// syncEvery bounds the WAL the stream's goroutine writes before it syncs
// (DurableLocal) while the server keeps sending: a commit never waits
// behind more than this, nor the segments held in memory (maxHeldSegments)
// behind a sync that never comes.
const syncEvery = 1 << 20

// sendStatus sends standby status updates: at once when the flush
// position moved (a synchronous commit waits for it), when the server
// asks, and every StatusInterval. The apply position is the flush
// position: nothing is ever applied beyond what is durable, and
// synchronous_commit = remote_apply then waits for exactly that. It closes
// the connection when nothing arrived for three intervals.
func (r *Receiver) sendStatus(ctx context.Context, ss *statusSender, kick chan struct{}, lastMsg *atomic.Int64) {
	tick := time.NewTicker(r.opts.StatusInterval)
	defer tick.Stop()
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-tick.C:
			forced = true
			if time.Since(time.Unix(0, lastMsg.Load())) > 3*r.opts.StatusInterval {
				r.log.Warn("nothing from the server for three status intervals; closing the connection", "interval", r.opts.StatusInterval)
				ss.conn.Conn().Close()
				return
			}
		}
		if !ss.send(forced) {
			return
		}
	}
}

// statusSender sends one stream's standby status updates; the stream's
// status goroutine and whoever makes WAL durable (poke) share it, one
// update at a time.
type statusSender struct {
	ctx  context.Context
	conn *pgconn.PgConn
	tli  pg.TimelineID
	sink *sink
	log  *slog.Logger

	mu                   sync.Mutex
	stopped              bool
	lastWrite, lastFlush pg.LSN
}

// send sends an update if a position moved, or forced; it reports false
// once updates have stopped (the stream ended, or one failed: the
// connection is then closed, and the stream ends with an error).
func (ss *statusSender) send(forced bool) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.stopped {
		return false
	}
	_, write, _ := ss.sink.pos()
	flush := ss.sink.flushPos(ss.tli)
	if !forced && write == ss.lastWrite && flush == ss.lastFlush {
		return true
	}
	err := pglogrepl.SendStandbyStatusUpdate(ss.ctx, ss.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(write), WALFlushPosition: pglogrepl.LSN(flush),
		WALApplyPosition: pglogrepl.LSN(max(flush, 1)), ReplyRequested: forced})
	if err != nil {
		ss.stopped = true
		if ss.ctx.Err() == nil {
			ss.log.Warn("status update failed", "err", err)
			ss.conn.Conn().Close()
		}
		return false
	}
	ss.lastWrite, ss.lastFlush = write, flush
	return true
}

// stop ends the updates; one in flight is finished first.
func (ss *statusSender) stop() {
	ss.mu.Lock()
	ss.stopped = true
	ss.mu.Unlock()
}

// readJSON and writeJSONSynced read and write small state files.
func writeJSONSynced(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
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
	return err
}
