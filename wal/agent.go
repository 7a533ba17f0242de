package wal

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// AgentOptions configure an Agent. Zero values take the defaults.
type AgentOptions struct {
	PGData string // the data directory whose pg_wal the agent archives
	Socket string // default DefaultSocket(PGData)
	// Parallel is how many files are uploaded at once (default 4). Memory
	// is bounded by Parallel times about one segment (walarchive reads a
	// file a chunk at a time); compression shares the CPUs among them,
	// oldest upload first.
	Parallel int
	// Rescan is how often archive_status is listed even without a change
	// notification, and failed uploads are reconsidered (default 1s).
	Rescan time.Duration
	// ShutdownTimeout is how long uploads in flight may finish after the
	// agent is told to stop (default 30s); then they are abandoned, which
	// is safe: an object is either complete in the store or absent.
	ShutdownTimeout time.Duration
	// MaxBackoff caps the wait before a failed upload is retried in the
	// background (default 1 min). A push request retries at once.
	MaxBackoff time.Duration
	// AheadPoll is how often the segment PostgreSQL is writing is looked
	// at to compress what is complete of it (default 10ms; negative: never).
	// Memory grows by up to two segments and their frames.
	AheadPoll time.Duration
	Logger    *slog.Logger
}

func (o *AgentOptions) fill() {
	if o.Socket == "" {
		o.Socket = DefaultSocket(o.PGData)
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Rescan <= 0 {
		o.Rescan = time.Second
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.AheadPoll == 0 {
		o.AheadPoll = 10 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Agent uploads the files PostgreSQL marked ready for archiving
// (pg_wal/archive_status/*.ready) ahead of PostgreSQL, in parallel, oldest
// first, and answers wal-push over a Unix socket as soon as the file asked
// for is durable. It never renames or deletes status files: PostgreSQL
// still calls archive_command for every file and marks it done itself, so
// nothing the agent does can make PostgreSQL skip a file.
//
// What it knows to be durable it keeps in memory only; after a restart it
// uploads what is ready again, and create-only writes turn the second upload
// of an identical file into a success.
type Agent struct {
	p         *Pusher
	opts      AgentOptions
	log       *slog.Logger
	walDir    string
	statusDir string
	pgdataFI  os.FileInfo

	comp *compressor // nil when not compressing ahead

	mu       sync.Mutex
	cond     *sync.Cond
	entries  map[string]*entry
	stopping bool
	// newest is the newest complete segment archive_status names (ready
	// or done): PostgreSQL writes the one after it.
	newest string

	stats   agentStats
	targets []targetStat // per repository, Pusher.Stores order
}

type agentStats struct {
	files, created, bytes, stored int64
	failures                      int64
	ahead                         int64 // pieces compressed ahead and used
	lastAt                        time.Time
}

// AgentStats is what an agent did since it started, for metrics.
type AgentStats struct {
	Files    int64 // files made durable (uploaded, or found already archived)
	Uploaded int64 // of them, uploaded by this agent
	Bytes    int64 // bytes of those files
	Stored   int64 // bytes stored for the uploaded ones (compressed, encrypted)
	Failures int64 // failed upload attempts
	// Queued is the files waiting for an upload or in one; Ready the
	// files PostgreSQL marked ready for archiving and has not seen
	// archived yet (its backlog, whatever the agent did).
	Queued, Ready int
	// LastArchived is when the agent last made a file durable.
	LastArchived time.Time
}

// Stats returns what the agent did so far. Safe to call while it runs.
func (a *Agent) Stats() AgentStats {
	a.mu.Lock()
	s := a.stats
	out := AgentStats{Files: s.files, Uploaded: s.created, Bytes: s.bytes, Stored: s.stored, Failures: s.failures, LastArchived: s.lastAt}
	for _, e := range a.entries {
		if e.state == statePending || e.state == stateRunning {
			out.Queued++
		}
	}
	a.mu.Unlock()
	if ents, err := os.ReadDir(a.statusDir); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".ready") {
				out.Ready++
			}
		}
	}
	return out
}

type entryState int

const (
	statePending entryState = iota
	stateRunning
	stateDurable
	stateFailed
)

// entry is one file the agent knows of. done is open while the file is
// pending or running and is closed when the attempt ends.
type entry struct {
	name    string
	history bool // a .history file: archived first, never held back
	seen    time.Time
	state   entryState
	// durable says, per repository (Pusher.Stores order), that it has the
	// file as read from the file res.file identifies: a retry pushes only
	// where it is false. The file is durable (state) once all are.
	durable   []bool
	urgent    bool // a client waits: goes first, ignores backoff and blocks
	waiters   int
	done      chan struct{}
	res       PushResult
	err       error
	permanent bool // the failure will repeat until someone intervenes
	attempts  int
	retryAt   time.Time
}

// NewAgent returns an agent that archives with p for the data directory
// opts.PGData.
func NewAgent(p *Pusher, opts AgentOptions) (*Agent, error) {
	opts.fill()
	fi, err := os.Stat(opts.PGData)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	a := &Agent{p: p, opts: opts, log: opts.Logger, pgdataFI: fi,
		walDir:    filepath.Join(opts.PGData, "pg_wal"),
		statusDir: filepath.Join(opts.PGData, "pg_wal", "archive_status"),
		entries:   map[string]*entry{}}
	a.cond = sync.NewCond(&a.mu)
	if _, err := os.Stat(a.statusDir); err != nil {
		return nil, fmt.Errorf("agent: %w (is %s a data directory?)", err, opts.PGData)
	}
	if opts.AheadPoll > 0 {
		a.comp = newCompressor(p.targets[0].arch, p.cluster, a.walDir, a.log)
	}
	return a, nil
}

// Run serves until ctx ends, then stops: no new uploads start, uploads in
// flight get ShutdownTimeout to finish, clients still waiting are told the
// agent is stopping (they upload themselves), and the socket is removed.
func (a *Agent) Run(ctx context.Context) error {
	unlock, err := a.lock()
	if err != nil {
		return err
	}
	defer unlock()
	ln, err := net.Listen("unix", a.opts.Socket)
	if err != nil {
		return fmt.Errorf("agent: listen on %s: %w (set --socket to a shorter path if it is longer than 107 bytes)", a.opts.Socket, err)
	}
	defer os.Remove(a.opts.Socket)
	if err := os.Chmod(a.opts.Socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("agent: %w", err)
	}
	a.log.Info("agent started", "pgdata", a.opts.PGData, "socket", a.opts.Socket,
		"cluster", a.p.cluster.SystemID, "parallel", a.opts.Parallel, "store", strings.Join(a.p.Stores(), ", "))

	// Uploads outlive ctx by up to ShutdownTimeout.
	upCtx, upCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer upCancel()
	if _, err := a.p.targets[0].arch.EnsureCluster(upCtx, a.p.cluster); err != nil {
		// Not fatal: the store may come back; every upload checks again.
		a.log.Warn("cannot check the cluster's archive yet", "err", err)
	}

	var workers sync.WaitGroup
	for range a.opts.Parallel {
		workers.Add(1)
		go func() {
			defer workers.Done()
			a.work(upCtx)
		}()
	}
	var serving sync.WaitGroup
	go a.accept(ctx, ln, &serving)
	if a.comp != nil {
		workers.Add(1)
		go func() {
			defer workers.Done()
			a.comp.run(ctx, a.opts.AheadPoll, a.aheadTarget)
		}()
	}
	wake := a.watch(ctx)
	a.scan()
	tick := time.NewTicker(a.opts.Rescan)
	defer tick.Stop()
	summary := time.NewTicker(time.Minute)
	defer summary.Stop()
	var last agentStats
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-wake:
			a.scan()
		case <-tick.C:
			a.scan()
		case <-summary.C:
			last = a.logSummary(last)
		}
	}

	a.log.Info("agent stopping", "in_flight_timeout", a.opts.ShutdownTimeout)
	ln.Close()
	a.mu.Lock()
	a.stopping = true
	a.cond.Broadcast()
	a.mu.Unlock()
	finished := make(chan struct{})
	go func() { workers.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(a.opts.ShutdownTimeout):
		a.log.Warn("abandoning uploads in flight; they are complete in the store or absent, and PostgreSQL keeps the files")
		upCancel()
		<-finished
	}
	a.mu.Lock()
	for _, e := range a.entries {
		if e.state == statePending {
			e.state, e.err = stateFailed, errShutdown
			close(e.done)
		}
	}
	a.mu.Unlock()
	serving.Wait()
	a.logSummary(last)
	a.log.Info("agent stopped")
	return nil
}

var errShutdown = fmt.Errorf("agent is stopping: %w", context.Canceled)

// lock makes sure one agent serves a data directory: a second one would
// compete for the socket.
func (a *Agent) lock() (func(), error) {
	path := a.opts.Socket + ".lock"
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another agent is running for %s (it holds %s); stop it first", a.opts.PGData, path)
	}
	// We hold the lock: a socket file left by an agent killed with -9 is
	// stale.
	if err := os.Remove(a.opts.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		f.Close()
		return nil, fmt.Errorf("agent: remove stale socket: %w", err)
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return func() { os.Remove(path); f.Close() }, nil
}

// watch returns a channel that receives when archive_status changes. Without
// inotify the periodic rescan is all there is.
func (a *Agent) watch(ctx context.Context) <-chan struct{} {
	wake := make(chan struct{}, 1)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		a.log.Warn("inotify unavailable; polling archive_status", "every", a.opts.Rescan, "err", err)
		return wake
	}
	if _, err := unix.InotifyAddWatch(fd, a.statusDir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		a.log.Warn("inotify unavailable; polling archive_status", "every", a.opts.Rescan, "err", err)
		return wake
	}
	// A non-blocking descriptor in an *os.File reads through the runtime's
	// poller, and Close wakes a pending Read.
	f := os.NewFile(uintptr(fd), "inotify")
	context.AfterFunc(ctx, func() { f.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	return wake
}

// scan lists archive_status and queues every ready file the agent does not
// know yet; it forgets files that are no longer ready (PostgreSQL archived
// them).
func (a *Agent) scan() {
	ents, err := os.ReadDir(a.statusDir)
	if err != nil {
		a.log.Warn("list archive_status", "err", err)
		return
	}
	ready := make(map[string]bool, len(ents))
	newest := ""
	for _, de := range ents {
		name, isReady := strings.CutSuffix(de.Name(), ".ready")
		if !isReady {
			var isDone bool
			if name, isDone = strings.CutSuffix(de.Name(), ".done"); !isDone {
				continue
			}
		}
		f, err := pg.ParseWALFileName(name)
		if err != nil {
			continue
		}
		if f.Kind == pg.WALSegment && name > newest {
			newest = name
		}
		if isReady {
			ready[name] = true
		}
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if newest > a.newest {
		a.newest = newest
	}
	changed := false
	for name := range ready {
		e := a.entries[name]
		switch {
		case e == nil:
			a.entries[name] = a.newEntry(name)
			changed = true
		case e.state == stateFailed && !e.retryAt.After(now):
			e.requeue()
			changed = true
		}
	}
	for name, e := range a.entries {
		if !ready[name] && e.waiters == 0 && !e.urgent && e.state != stateRunning && e.state != statePending {
			delete(a.entries, name)
		}
	}
	if changed {
		a.cond.Broadcast()
	}
}

// aheadTarget is the segment PostgreSQL is writing, to compress ahead; ""
// while it is not known or while uploads are behind: more than the segment
// completed last waits.
func (a *Agent) aheadTarget() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.newest == "" || a.stopping {
		return ""
	}
	queued := 0
	for _, e := range a.entries {
		if !e.history && (e.state == statePending || e.state == stateRunning) {
			queued++
		}
	}
	if queued > 1 {
		return ""
	}
	next, err := nextSegment(a.newest, a.p.cluster.SegSize)
	if err != nil {
		return ""
	}
	return next
}

func (a *Agent) newEntry(name string) *entry {
	return &entry{name: name, history: strings.HasSuffix(name, ".history"), state: statePending, done: make(chan struct{}),
		seen: time.Now(), durable: make([]bool, len(a.p.targets))}
}

// requeue makes a finished entry pending again.
func (e *entry) requeue() {
	e.state = statePending
	e.err = nil
	e.done = make(chan struct{})
}

// next picks the file to upload next, under a.mu: a file a client waits for
// first, then history files, then the oldest name, skipping files whose
// retry time has not come and everything after a file that failed for good
// (uploading past it would only make a hole in the archive that PostgreSQL,
// stuck on that file, cannot fill).
func (a *Agent) next() *entry {
	now := time.Now()
	block := ""
	for _, e := range a.entries {
		// permanent stays set while the file is retried, until it succeeds.
		if e.permanent && e.state != stateDurable && !e.history && (block == "" || e.name < block) {
			block = e.name
		}
	}
	var best *entry
	better := func(e *entry) bool {
		switch {
		case best == nil:
			return true
		case e.urgent != best.urgent:
			return e.urgent
		case e.history != best.history:
			return e.history
		}
		return e.name < best.name
	}
	for _, e := range a.entries {
		if e.state != statePending {
			continue
		}
		if !e.urgent && (e.retryAt.After(now) || (!e.history && block != "" && e.name > block)) {
			continue
		}
		if better(e) {
			best = e
		}
	}
	return best
}

func (a *Agent) work(ctx context.Context) {
	for {
		a.mu.Lock()
		var e *entry
		for {
			if a.stopping {
				a.mu.Unlock()
				return
			}
			if e = a.next(); e != nil {
				break
			}
			a.cond.Wait()
		}
		e.state = stateRunning
		e.attempts++
		// A repository that was unreachable a moment ago is left out until
		// its backoff ends, so that while it is down each upload is not
		// held up by its retries and the other keeps up; a file a client
		// waits for tries it anyway.
		skip := slices.Clone(e.durable)
		var held error
		var heldUntil time.Time
		for i := range skip {
			if ts := a.targetStats(i); !skip[i] && !e.urgent && time.Now().Before(ts.downUntil) {
				skip[i], held, heldUntil = true, ts.err, ts.downUntil
			}
		}
		a.mu.Unlock()

		var ahead *walarchive.Ahead
		if a.comp != nil {
			ahead = a.comp.take(e.name)
		}
		var res PushResult
		var err error
		if slices.Contains(skip, false) {
			res, err = a.p.PushAheadTo(ctx, filepath.Join(a.walDir, e.name), ahead, skip)
		}

		a.mu.Lock()
		a.record(e, res, err)
		if err == nil && held != nil {
			err = held
			e.err = held
		}
		e.urgent = false
		if err == nil {
			e.state = stateDurable
			e.attempts = 0
			e.permanent = false
			a.stats.files++
			a.stats.bytes += res.Size
			a.stats.ahead += int64(res.Ahead)
			a.stats.lastAt = time.Now()
			if res.Created {
				a.stats.created++
				a.stats.stored += res.Stored
			}
		} else {
			e.state = stateFailed
			kind := errorKind(err)
			e.permanent = kind == KindConflict || kind == KindForeign || kind == KindInvalid || kind == KindCorrupt
			e.retryAt = time.Now().Add(backoff(e.attempts, a.opts.MaxBackoff))
			if heldUntil.After(e.retryAt) {
				e.retryAt = heldUntil
			}
			a.stats.failures++
		}
		close(e.done)
		a.cond.Broadcast()
		a.mu.Unlock()

		switch {
		case err == nil:
			a.log.Debug("archived", "file", e.name, "created", res.Created, "bytes", res.Size,
				"stored", res.Stored, "ahead", res.Ahead, "elapsed", res.Elapsed)
		case errors.Is(err, context.Canceled):
		case e.permanent:
			a.log.Error("cannot archive; later files wait until this is resolved", "file", e.name, "err", err)
		default:
			a.log.Warn("upload failed; will retry", "file", e.name, "attempt", e.attempts, "err", err)
		}
	}
}

// record notes in which repositories a push made the file durable, and
// what to tell a client that asks. The caller holds a.mu.
func (a *Agent) record(e *entry, res PushResult, err error) {
	ok := false
	for i, tr := range res.Targets {
		if ts := a.targetStats(i); tr.Err != nil && storage.IsUnavailable(tr.Err) {
			ts.fails++
			ts.downUntil, ts.err = time.Now().Add(backoff(ts.fails, a.opts.MaxBackoff)), tr.Err
		} else if tr.Err == nil && !tr.Skipped {
			ts.fails, ts.downUntil, ts.err = 0, time.Time{}, nil
		}
		if !tr.Skipped && tr.Err == nil {
			if !ok && slices.Contains(e.durable, true) && res.file != e.res.file {
				// Another file under the name than the one archived before:
				// what the other repository has is of that one.
				clear(e.durable)
			}
			ok = true
			e.durable[i] = true
			a.targetStats(i).last = time.Now()
		}
	}
	if ok || e.res.Name == "" {
		e.res = res
	}
	e.err = err
	if err == nil || !slices.Contains(e.durable, true) {
		return
	}
	for _, tr := range res.Targets {
		if tr.Err != nil {
			// One repository has it, the other not yet: PostgreSQL waits,
			// and the other's lag grows.
			a.log.Warn("a repository lacks a file the other has; will retry", "file", e.name, "store", tr.Store, "err", tr.Err)
		}
	}
}

// targetStats returns the counters of repository i. The caller holds a.mu.
func (a *Agent) targetStats(i int) *targetStat {
	for len(a.targets) <= i {
		a.targets = append(a.targets, targetStat{})
	}
	return &a.targets[i]
}

// targetStat is what the agent tracks per repository.
type targetStat struct {
	last time.Time // when it last made a file durable there
	// fails counts the pushes in a row that found it unreachable; until
	// downUntil only files a client waits for are pushed to it, and err
	// is the last failure.
	fails     int
	downUntil time.Time
	err       error
}

// Lag is how far one repository is behind what PostgreSQL has ready.
type Lag struct {
	Store string
	// Files is the number of ready files the repository lacks, and Oldest
	// how long the oldest of them has waited since the agent saw it.
	Files  int
	Oldest time.Duration
	// LastArchived is when the agent last made a file durable there.
	LastArchived time.Time
}

// Lag reports, per repository (Pusher.Stores order), how far it is behind.
// With two repositories, PostgreSQL waits for the one further behind.
func (a *Agent) Lag() []Lag {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Lag, len(a.p.targets))
	for i, t := range a.p.targets {
		out[i] = Lag{Store: t.store, LastArchived: a.targetStats(i).last}
	}
	for _, e := range a.entries {
		if e.state == stateDurable {
			continue
		}
		for i, d := range e.durable {
			if d {
				continue
			}
			out[i].Files++
			out[i].Oldest = max(out[i].Oldest, now.Sub(e.seen))
		}
	}
	return out
}

// backoff is the wait before the n-th background retry.
func backoff(n int, ceiling time.Duration) time.Duration {
	d := time.Second << min(n-1, 10)
	return min(d, ceiling)
}

func (a *Agent) logSummary(last agentStats) agentStats {
	a.mu.Lock()
	s := a.stats
	queued := 0
	for _, e := range a.entries {
		if e.state == statePending || e.state == stateRunning {
			queued++
		}
	}
	a.mu.Unlock()
	if s != last || queued > 0 {
		a.log.Info("archive progress", "files", s.files-last.files, "uploaded", s.created-last.created,
			"bytes", s.bytes-last.bytes, "stored_bytes", s.stored-last.stored, "failures", s.failures-last.failures,
			"pieces_compressed_ahead", s.ahead-last.ahead,
			"queued", queued)
		if len(a.p.targets) > 1 {
			for _, l := range a.Lag() {
				a.log.Info("archive lag", "store", l.Store, "files", l.Files, "oldest", l.Oldest.Round(time.Second),
					"last_archived", l.LastArchived.Format(time.RFC3339))
			}
		}
	}
	return s
}

func (a *Agent) accept(ctx context.Context, ln net.Listener, serving *sync.WaitGroup) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				a.log.Warn("agent socket accept", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return
		}
		serving.Add(1)
		go func() {
			defer serving.Done()
			defer conn.Close()
			a.serve(conn)
		}()
	}
}

func (a *Agent) serve(conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(conn, maxMessage).ReadSlice('\n')
	if err != nil {
		return
	}
	conn.SetReadDeadline(time.Time{})
	var req Request
	resp := Response{}
	if err := json.Unmarshal(line, &req); err != nil || req.V != ProtocolVersion {
		resp = Response{Kind: KindInvalid, Error: fmt.Sprintf("bad request (protocol version %d, this agent speaks %d)", req.V, ProtocolVersion)}
	} else {
		resp = a.handle(req)
	}
	b, _ := json.Marshal(resp)
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	conn.Write(append(b, '\n'))
}

func (a *Agent) handle(req Request) Response {
	switch req.Op {
	case "ping":
		return Response{OK: true, PGData: a.opts.PGData, Cluster: a.p.cluster.SystemID}
	case "push":
	default:
		return Response{Kind: KindInvalid, Error: fmt.Sprintf("unknown op %q", req.Op)}
	}
	if fi, err := os.Stat(req.PGData); err != nil || !os.SameFile(fi, a.pgdataFI) {
		return Response{Kind: KindPGData, Error: fmt.Sprintf("this agent archives %s, not %s", a.opts.PGData, req.PGData)}
	}
	if len(req.Stores) > 0 && !slices.Equal(req.Stores, a.p.Stores()) {
		return Response{Kind: KindInvalid, Error: fmt.Sprintf("this agent archives to %s, wal-push to %s: give the agent the same repo and repo2",
			strings.Join(a.p.Stores(), " and "), strings.Join(req.Stores, " and "))}
	}
	if req.Name != filepath.Base(req.Name) {
		return Response{Kind: KindInvalid, Error: fmt.Sprintf("%q is not a file name", req.Name)}
	}
	if _, err := pg.ParseWALFileName(req.Name); err != nil {
		return Response{Kind: KindInvalid, Error: err.Error()}
	}
	resp := a.push(req.Name)
	a.log.Debug("answered wal-push", "file", req.Name, "ok", resp.OK, "result", resp.Result, "kind", resp.Kind)
	return resp
}

// push answers one request: at once if the file is durable and unchanged,
// else once an upload (started now if need be, ahead of everything else) is
// done.
func (a *Agent) push(name string) Response {
	path := filepath.Join(a.walDir, name)
	a.mu.Lock()
	e := a.entries[name]
	if e == nil {
		e = a.newEntry(name)
		a.entries[name] = e
	}
	e.waiters++
	defer func() {
		a.mu.Lock()
		e.waiters--
		a.mu.Unlock()
	}()
	triggered := false
	for attempt := 0; ; attempt++ {
		if a.stopping && e.state != stateRunning && e.state != stateDurable {
			a.mu.Unlock()
			return Response{Kind: KindShutdown, Error: errShutdown.Error()}
		}
		switch e.state {
		case stateDurable:
			res := e.res
			a.mu.Unlock()
			id, err := statID(path)
			if err == nil && id == res.file {
				result := "durable"
				if triggered {
					result = "exists"
					if res.Created {
						result = "created"
					}
				}
				return Response{OK: true, Result: result}
			}
			if err != nil {
				return Response{Kind: errorKind(err), Error: fmt.Sprintf("%s: %v", path, err)}
			}
			if attempt >= 3 {
				return Response{Kind: KindInvalid, Error: fmt.Sprintf("%s: %v", path, ErrFileChanged)}
			}
			// Another file under the name than the one archived: check it.
			a.mu.Lock()
			if e.state == stateDurable {
				e.requeue()
				clear(e.durable)
				e.urgent = true
				triggered = true
				a.cond.Broadcast()
			}
			continue
		case stateFailed:
			if !triggered {
				// A request retries at once: the store may be back, or
				// someone fixed the cause.
				e.requeue()
				e.urgent = true
				triggered = true
				a.cond.Broadcast()
				continue
			}
			err := e.err
			a.mu.Unlock()
			return Response{Kind: errorKind(err), Error: oneLine(err.Error())}
		case statePending:
			e.urgent = true
			triggered = true
			a.cond.Broadcast()
		case stateRunning:
			triggered = true
		}
		done := e.done
		a.mu.Unlock()
		<-done
		a.mu.Lock()
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
