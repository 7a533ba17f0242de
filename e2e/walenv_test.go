package e2e

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/location"
	"github.com/tidemarkdb/tidemark/wal"
)

// walRepo is a repository the WAL tests archive into, with what a server
// and the CLI need to reach it.
type walRepo struct {
	bin      string
	url      string
	identity string   // age identity file the server user can read
	env      []string // TIDEMARK_REPO, TIDEMARK_IDENTITY, S3 credentials
	s3       *testenv.S3Server
	bucket   string
	store    storage.Store
	repo     *repo.Repo
	arch     *walarchive.Archive
}

// newS3Repo makes a repository under "repo/" in a fresh bucket of srv.
func newS3Repo(t *testing.T, srv *testenv.S3Server) *walRepo {
	t.Helper()
	bucket := srv.NewBucket(t)
	w := &walRepo{s3: srv, bucket: bucket, url: srv.URL(bucket, "repo")}
	env := map[string]string{}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	st, err := location.Open(t.Context(), w.url, location.Options{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	w.init(t, st)
	w.env = append(w.env, srv.Env()...)
	return w
}

// newFSRepo makes a repository in a directory the server user can write.
func newFSRepo(t *testing.T) *walRepo {
	t.Helper()
	dir := filepath.Join(testenv.SharedDir(t), "repo")
	st, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	w := &walRepo{url: "file://" + dir}
	w.init(t, st)
	testenv.ChownToServer(t, dir)
	return w
}

func (w *walRepo) init(t *testing.T, st storage.Store) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "e2e")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(t.Context(), st, repo.InitOptions{Key: spec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	w.store, w.repo, w.arch = st, r, walarchive.FromRepo(r, walarchive.Options{})
	w.identity = writeIdentity(t, id)
	w.bin = testenv.Tidemark(t)
	w.env = []string{"TIDEMARK_REPO=" + w.url, "TIDEMARK_IDENTITY=" + w.identity}
}

// writeIdentity writes an age identity to a file the server user can read.
func writeIdentity(t *testing.T, id *age.X25519Identity) string {
	t.Helper()
	p := filepath.Join(testenv.SharedDir(t), "identity.txt")
	if err := os.WriteFile(p, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, p)
	return p
}

// archivingCluster starts a cluster whose archive_command is tidemark
// wal-push into w, with segMiB-MiB segments, keeping its WAL in pg_wal (so
// that tests can compare archived segments with the originals).
func (w *walRepo) archivingCluster(t *testing.T, version, segMiB int, extra map[string]string, env ...string) *testenv.Cluster {
	t.Helper()
	settings := map[string]string{
		"archive_mode":    "on",
		"archive_command": w.bin + " wal-push %p",
		"wal_keep_size":   "4GB",
	}
	for k, v := range extra {
		settings[k] = v
	}
	var args []string
	if segMiB != 16 {
		args = append(args, "--wal-segsize="+strconv.Itoa(segMiB))
	}
	return testenv.NewCluster(t, testenv.PGConfig{Version: version, Settings: settings,
		Env: append(append([]string(nil), w.env...), env...), InitdbArgs: args})
}

// result is one run of the tidemark binary.
type result struct {
	code           int
	stdout, stderr string
}

// run runs tidemark as the server user in dir with w's environment (and
// env after it, which wins).
func (w *walRepo) run(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := testenv.ServerCommand(ctx, t, append(append([]string(nil), w.env...), env...), w.bin, args...)
	if dir != "" {
		cmd.Dir = dir
	}
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	res := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run tidemark %v: %v", args, err)
	}
	return res
}

// agent is a running tidemark agent.
type agent struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startAgent starts `tidemark agent` for c as the server user and waits
// until it answers on its socket.
func (w *walRepo) startAgent(t *testing.T, c *testenv.Cluster, args ...string) *agent {
	t.Helper()
	a := &agent{log: &syncBuffer{}, done: make(chan struct{})}
	a.cmd = c.Command(context.Background(), w.bin, append([]string{"agent", "--pgdata", c.DataDir, "--log-level", "debug"}, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.stop(t)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
	sock := filepath.Join(c.DataDir, "tidemark-agent.sock")
	waitUntil(t, time.Minute, "the agent to listen on "+sock, func() bool {
		select {
		case <-a.done:
			t.Fatalf("the agent exited: %s", a.log.String())
		default:
		}
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return a
}

// stop sends SIGTERM and waits for a clean exit.
func (a *agent) stop(t *testing.T) {
	select {
	case <-a.done:
		return
	default:
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(time.Minute):
		a.cmd.Process.Kill()
		<-a.done
		t.Errorf("the agent did not stop on SIGTERM within a minute")
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 && code != -1 {
		t.Errorf("the agent exited with %d after SIGTERM", code)
	}
}

// kill kills the agent with SIGKILL, as a crash or OOM killer would.
func (a *agent) kill() {
	a.cmd.Process.Kill()
	<-a.done
}

// waitUntil polls cond until it holds or the limit passes.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// switchWAL writes a row and switches to a new segment; it returns the name
// of the segment it completed.
func switchWAL(t *testing.T, c *testenv.Cluster) string {
	t.Helper()
	c.Exec(t, "CREATE TABLE IF NOT EXISTS walswitch (i bigint); INSERT INTO walswitch VALUES (1)")
	return c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
}

type archiverStats struct {
	archived, failed int64
	lastArchived     string
	lastFailed       string
}

func stats(t *testing.T, c *testenv.Cluster) archiverStats {
	t.Helper()
	var s archiverStats
	c.QueryRow(t, `SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '')
		FROM pg_stat_archiver`).Scan(&s.archived, &s.failed, &s.lastArchived, &s.lastFailed)
	return s
}

// waitArchived waits until PostgreSQL reports segment name (or a later one)
// archived.
func waitArchived(t *testing.T, c *testenv.Cluster, name string) {
	t.Helper()
	waitUntil(t, 4*time.Minute, "PostgreSQL to archive "+name, func() bool {
		s := stats(t, c)
		return len(s.lastArchived) >= 24 && s.lastArchived[:24] >= name
	})
}

// listing is `tidemark wal list --json` for one cluster.
type listing struct {
	SystemID  string `json:"system_identifier"`
	SegSize   uint32 `json:"wal_segment_size"`
	Gaps      int    `json:"gaps"`
	Segments  uint64 `json:"segments"`
	Head      string `json:"head"`
	Timelines []struct {
		Timeline int      `json:"timeline"`
		First    string   `json:"first"`
		Last     string   `json:"last"`
		Segments uint64   `json:"segments"`
		Partial  []string `json:"partial"`
		Backup   []string `json:"backup"`
		History  bool     `json:"history"`
		Gaps     []struct {
			First, Last string
		} `json:"gaps"`
	} `json:"timelines"`
}

func (w *walRepo) list(t *testing.T, c *testenv.Cluster) listing {
	t.Helper()
	sysid := c.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	r := w.run(t, "", nil, "wal", "list", "--json", "--cluster", sysid)
	if r.code != 0 {
		t.Fatalf("wal list: exit %d: %s", r.code, r.stderr)
	}
	var out struct{ Clusters []listing }
	if err := fromJSON(r.stdout, "wal", &out); err != nil || len(out.Clusters) != 1 {
		t.Fatalf("wal list --json: %v\n%s", err, r.stdout)
	}
	return out.Clusters[0]
}

// checkNoGaps checks that timeline 1 is archived from its first segment
// through at least last, without a gap.
func checkNoGaps(t *testing.T, l listing, last string) {
	t.Helper()
	if l.Gaps != 0 {
		t.Fatalf("the archive has %d gaps: %+v", l.Gaps, l.Timelines)
	}
	if len(l.Timelines) == 0 || l.Timelines[0].Last < last {
		t.Fatalf("the archive ends before %s: %+v", last, l.Timelines)
	}
}

// gateProxy forwards TCP connections to an S3 server and can hold one
// upload in the middle of its body: the way to kill a process "mid-upload"
// without guessing at timing.
type gateProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	armed   bool
	after   int64         // bytes of a request to let through before holding
	held    chan struct{} // closed when an upload is held
	release chan struct{} // closed to drop the held connection
}

func newGateProxy(t *testing.T, target string) *gateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gateProxy{ln: ln, target: target, held: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go p.serve()
	return p
}

func (p *gateProxy) addr() string { return p.ln.Addr().String() }

// arm makes the next client-to-server stream that sends more than after
// bytes in one burst of writes stop there (an upload body: requests
// without a body are far smaller).
func (p *gateProxy) arm(after int64) {
	p.mu.Lock()
	p.armed, p.after = true, after
	p.mu.Unlock()
}

func (p *gateProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *gateProxy) handle(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	// A response from the server ends a request: count each request's
	// bytes on their own, even on a kept-alive connection.
	var answered atomic.Bool
	go func() {
		buf := make([]byte, 16<<10)
		for {
			n, err := s.Read(buf)
			if n > 0 {
				answered.Store(true)
				if _, werr := c.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		c.Close()
	}()
	buf := make([]byte, 16<<10)
	var sent int64
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if answered.Swap(false) {
				sent = 0
			}
			sent += int64(n)
			p.mu.Lock()
			hold := p.armed && sent > p.after
			if hold {
				p.armed = false
			}
			p.mu.Unlock()
			if hold {
				close(p.held)
				<-p.release
				c.Close()
				s.Close()
				return
			}
			if _, err := s.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	s.Close()
}

// stopPrefetcher ends the background prefetcher of a spool so that it does
// not write into directories the test is removing.
func stopPrefetcher(t *testing.T, spool string) {
	t.Helper()
	if !wal.StopPrefetcher(spool, 30*time.Second) {
		t.Errorf("the prefetcher of %s did not stop", spool)
	}
	// A prefetcher still writes its last log line into the spool after it
	// let go of the lock, and one that started but has not yet taken the
	// lock is not in the lock file: wait for every process prefetching into
	// this spool to be gone (or a zombie: the tests may be its subreaper).
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := prefetchersOf(spool)
		if len(pids) == 0 {
			return
		}
		sig := syscall.SIGTERM
		if time.Now().After(deadline) {
			sig = syscall.SIGKILL
		}
		for _, pid := range pids {
			syscall.Kill(pid, sig)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// prefetchersOf lists the live (not zombie) wal-prefetch processes whose
// --spool-dir is spool.
func prefetchersOf(spool string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !slices.Contains(args, "wal-prefetch") {
			continue
		}
		if i := slices.Index(args, "--spool-dir"); i < 0 || i+1 >= len(args) || args[i+1] != spool {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}
