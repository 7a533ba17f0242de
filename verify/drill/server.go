package drill

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tidemarkdb/tidemark/internal/osuser"
)

// makeScratch creates the scratch directory, owned by the server's user.
func (d *run) makeScratch() error {
	dir, err := os.MkdirTemp(d.o.ScratchDir, "tidemark-drill-")
	if err != nil {
		return fmt.Errorf("create a scratch directory in %s: %w (choose another with --scratch-dir)", d.o.ScratchDir, err)
	}
	d.scratch = dir
	d.pgdata = filepath.Join(dir, "data")
	d.sock = filepath.Join(dir, "sock")
	if err := os.Mkdir(d.sock, 0o700); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		name := d.o.PGUser
		if name == "" {
			name = "postgres"
		}
		o, err := osuser.Lookup(name)
		if err != nil {
			return fmt.Errorf("the server must not run as root, and there is no user %q to run it as: pass --pg-user", name)
		}
		if o.UID == 0 {
			return fmt.Errorf("--pg-user %s is root: PostgreSQL refuses to run as root", name)
		}
		d.owner = o
		for _, p := range []string{dir, d.sock} {
			if err := os.Chown(p, o.UID, o.GID); err != nil {
				return fmt.Errorf("give %s to %s: %w", p, name, err)
			}
		}
	}
	d.log.Info("drill: scratch directory", "dir", dir)
	return nil
}

// writeOwned writes a file in the scratch directory for the server.
func (d *run) writeOwned(p string, data []byte) error {
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return err
	}
	if d.owner != nil {
		return os.Chown(p, d.owner.UID, d.owner.GID)
	}
	return nil
}

// restore restores the snapshot into the scratch directory, moving every
// tablespace into it too: a drill must never write where production lives.
func (d *run) restore(ctx context.Context) error {
	tsmap := map[string]string{}
	for _, ts := range d.snap.Tablespaces {
		tsmap[ts.Path] = filepath.Join(d.scratch, "tablespaces", strconv.FormatUint(uint64(ts.OID), 10))
	}
	if d.o.Restore == nil || d.o.Fetch == nil {
		return errors.New("drill: no restore and restore_command to recover with")
	}
	req := RestoreRequest{PGData: d.pgdata, Cluster: d.rep.Cluster, Backup: d.snap.ID, Target: d.o.Target,
		TablespaceMap: tsmap, Owner: d.owner, RestoreCommand: d.o.Fetch.Line(d.pgdata), SpoolDir: d.o.Fetch.SpoolDir(d.pgdata),
		Logger: d.log, Now: d.o.Now}
	start := d.o.Now()
	res, err := d.o.Restore(ctx, req)
	d.rep.RestoreSeconds = d.o.Now().Sub(start).Seconds()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted while restoring: %w", err)
		}
		return d.fail(fmt.Errorf("restore of backup %s: %w", d.snap.ID, err))
	}
	d.rep.RestoredBytes, d.rep.RestoredFiles = res.Bytes, res.Files
	d.log.Info("drill: restored", "backup", d.snap.ID, "files", res.Files, "bytes", res.Bytes, "seconds", d.rep.RestoreSeconds)
	return nil
}

// server is the scratch cluster's postmaster.
type server struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
	mu   sync.Mutex
	err  error
}

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// defaultServerOptions are what a drill sets on the command line: no
// archiving, no network, the drill's own client authentication, nothing
// that could reach other servers or need files the scratch copy lacks, and
// a modest memory footprint.
func (d *run) defaultServerOptions() []string {
	return []string{
		"port=" + strconv.Itoa(d.port),
		"listen_addresses=",
		"unix_socket_directories=" + d.sock,
		"unix_socket_permissions=0700",
		"archive_mode=off",
		"hba_file=" + filepath.Join(d.scratch, "pg_hba.conf"),
		"ident_file=" + filepath.Join(d.scratch, "pg_ident.conf"),
		"ssl=off",
		// No read-only connections during recovery: nothing to check
		// then, and no need for the source's max_connections and friends.
		"hot_standby=off",
		"synchronous_standby_names=",
		"primary_conninfo=",
		"shared_buffers=256MB",
		"huge_pages=off",
		"logging_collector=off",
		"log_destination=stderr",
		"cluster_name=tidemark-drill",
		// The drill reads where recovery stopped from the log: in English.
		"lc_messages=C",
	}
}

// replay starts PostgreSQL on the restored directory and waits until it has
// recovered to the target and promoted.
func (d *run) replay(ctx context.Context, bin string) error {
	if err := d.writeOwned(filepath.Join(d.scratch, "pg_hba.conf"), []byte("local all all trust\n")); err != nil {
		return err
	}
	if err := d.writeOwned(filepath.Join(d.scratch, "pg_ident.conf"), nil); err != nil {
		return err
	}
	// A cluster whose configuration lives outside PGDATA (Debian's
	// /etc/postgresql) is restored without postgresql.conf.
	conf := filepath.Join(d.pgdata, "postgresql.conf")
	if _, err := os.Stat(conf); errors.Is(err, fs.ErrNotExist) {
		if err := d.writeOwned(conf, []byte("# written by tidemark drill: the backup has no postgresql.conf\n")); err != nil {
			return err
		}
	}
	d.port = 20000 + d.o.Rand.IntN(40000)
	args := []string{"-D", d.pgdata}
	for _, o := range append(d.defaultServerOptions(), d.o.ServerOptions...) {
		args = append(args, "-c", o)
	}
	logPath := filepath.Join(d.scratch, "postgres.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Dir = d.pgdata
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = serverEnv(d.o.Env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if d.owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(d.owner.UID), Gid: uint32(d.owner.GID)}
	}
	start := d.o.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	s := &server{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.done)
	}()
	d.srv = s
	d.log.Info("drill: PostgreSQL started; recovering", "bin", bin, "pgdata", d.pgdata, "log", logPath, "target", d.rep.Target.Kind)

	deadline := start.Add(d.o.Timeout)
	for {
		if s.exited() {
			return d.fail(fmt.Errorf("PostgreSQL %d exited during recovery: %s", d.rep.PGMajor, logReason(logPath)))
		}
		if ok, err := d.promoted(ctx); ok {
			break
		} else if err != nil && ctx.Err() == nil {
			d.log.Debug("drill: not ready yet", "err", err)
		}
		if d.o.Now().After(deadline) {
			return d.fail(fmt.Errorf("recovery did not finish within %s (--timeout): %s", d.o.Timeout, logReason(logPath)))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted during recovery: %w", ctx.Err())
		case <-s.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
	d.rep.ReplaySeconds = d.o.Now().Sub(start).Seconds()
	d.rep.RecoverSeconds = d.rep.RestoreSeconds + d.rep.ReplaySeconds
	d.rep.Target.Reached = stopLine(logPath)
	d.log.Info("drill: recovered and promoted", "replay_seconds", d.rep.ReplaySeconds, "reached", d.rep.Target.Reached)
	return nil
}

// serverEnv is the drill's environment without libpq's variables (which
// would point restore_command's helpers or the server elsewhere), plus
// extra.
func serverEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// connString reaches the scratch server over its socket.
func (d *run) connString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s connect_timeout=5 sslmode=disable", d.sock, d.port, quoteConnValue(d.o.DBUser), quoteConnValue(db))
}

func quoteConnValue(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

// promoted reports whether the server accepts connections and has left
// recovery.
func (d *run) promoted(ctx context.Context) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, d.connString(d.o.DBName))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return false, err
	}
	return !inRecovery, nil
}

// stop shuts the server down: fast, then immediate, then killed.
func (d *run) stop() error {
	s := d.srv
	if s == nil || s.exited() {
		return nil
	}
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, 2 * time.Minute}, {syscall.SIGQUIT, 30 * time.Second}, {syscall.SIGKILL, 30 * time.Second}} {
		s.cmd.Process.Signal(step.sig)
		select {
		case <-s.done:
			if step.sig != syscall.SIGINT {
				return fmt.Errorf("PostgreSQL did not shut down cleanly (needed %s)", step.sig)
			}
			return nil
		case <-time.After(step.wait):
		}
	}
	return errors.New("PostgreSQL did not exit after SIGKILL")
}

// cleanup stops the server, ends the WAL prefetcher restore_command left,
// and removes the scratch directory (kept after a failure with
// KeepOnFailure).
func (d *run) cleanup(failed bool) {
	if err := d.stop(); err != nil {
		d.log.Warn("drill: stopping PostgreSQL", "err", err)
	}
	if d.o.Fetch != nil {
		d.o.Fetch.StopPrefetcher(d.pgdata)
	}
	if failed && d.o.KeepOnFailure {
		d.log.Warn("drill: failed; scratch directory kept for inspection (--keep-on-failure)", "dir", d.scratch)
		return
	}
	if err := removeAllSettled(d.scratch); err != nil {
		d.log.Warn("drill: could not remove the scratch directory", "dir", d.scratch, "err", err)
	}
}

// removeAllSettled removes dir, trying again for a few seconds when it
// fails: a restore_command the stopped server had started, or the
// prefetcher's last move, can still create a file in the scratch directory
// while it is being removed (RemoveAll then fails with "directory not
// empty"; TestDrillInterrupted saw it).
func removeAllSettled(dir string) error {
	var err error
	for range 20 {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

// logReason returns the server log's FATAL or PANIC lines (or its last
// lines), for a one-line failure reason.
func logReason(path string) string {
	lines := logLines(path)
	var fatal []string
	for _, l := range lines {
		if strings.Contains(l, "FATAL:") || strings.Contains(l, "PANIC:") {
			fatal = append(fatal, strings.TrimSpace(l))
		}
	}
	if len(fatal) == 0 {
		fatal = lines[max(0, len(lines)-3):]
	}
	return strings.Join(fatal[max(0, len(fatal)-3):], " | ")
}

// stopLine returns the log line where recovery said it stopped.
func stopLine(path string) string {
	for _, l := range logLines(path) {
		if i := strings.Index(l, "recovery stopping"); i >= 0 {
			return strings.TrimSpace(l[i:])
		}
	}
	for _, l := range logLines(path) {
		if i := strings.Index(l, "consistent recovery state reached"); i >= 0 {
			return strings.TrimSpace(l[i:])
		}
	}
	return ""
}

func logLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
