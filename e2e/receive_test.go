package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage/location"
	"github.com/tidemarkdb/tidemark/wal"
)

// receiver is a running tidemark wal-receive.
type receiver struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	dir  string
}

// startReceiver starts tidemark wal-receive with directory dir against the
// hosts of conn, and waits until it streams.
func (e *restoreEnv) startReceiver(t *testing.T, conn, dir string, args ...string) *receiver {
	t.Helper()
	rc := e.launchReceiver(t, conn, dir, args...)
	waitUntil(t, time.Minute, "wal-receive to stream", func() bool {
		select {
		case <-rc.done:
			t.Fatalf("wal-receive exited: %s", rc.log.String())
		default:
		}
		st, err := wal.ReadReceiveStatus(dir)
		return err == nil && st.Connected
	})
	return rc
}

func (e *restoreEnv) launchReceiver(t *testing.T, conn, dir string, args ...string) *receiver {
	t.Helper()
	rc := &receiver{log: &syncBuffer{}, done: make(chan struct{}), dir: dir}
	all := append([]string{"wal-receive", "--pg-conn", conn, "--dir", dir, "--create-slot", "--status-interval", "1s", "--log-level", "debug"}, e.repoArgs()...)
	rc.cmd = exec.Command(e.bin, append(all, args...)...)
	rc.cmd.Env = append(os.Environ(), e.env...)
	rc.cmd.Stdout, rc.cmd.Stderr = rc.log, rc.log
	if err := rc.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { rc.cmd.Wait(); close(rc.done) }()
	t.Cleanup(func() {
		rc.kill()
		if t.Failed() {
			t.Logf("wal-receive log (last lines):\n%s", lastLines(rc.log.String(), 60))
		}
	})
	return rc
}

func (rc *receiver) status(t *testing.T) wal.ReceiveStatus {
	t.Helper()
	st, err := wal.ReadReceiveStatus(rc.dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitSync waits until the server counts the receiver as its synchronous
// standby on timeline tli.
func (rc *receiver) waitSync(t *testing.T, tli int) {
	t.Helper()
	waitUntil(t, 2*time.Minute, fmt.Sprintf("wal-receive to be the synchronous standby on timeline %d", tli), func() bool {
		st := rc.status(t)
		return st.Connected && st.SyncState == "sync" && int(st.Timeline) == tli
	})
}

// waitUploaded waits until the repository holds everything the receiver
// reported flushed.
func (rc *receiver) waitUploaded(t *testing.T) wal.ReceiveStatus {
	t.Helper()
	var st wal.ReceiveStatus
	waitUntil(t, 2*time.Minute, "wal-receive to upload what it flushed", func() bool {
		st = rc.status(t)
		return !st.Connected && st.Uploaded >= st.Flushed && st.Flushed > 0 && time.Since(st.Updated) < 3*time.Second
	})
	return st
}

// stop sends SIGTERM and expects a clean exit.
func (rc *receiver) stop(t *testing.T) {
	t.Helper()
	rc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rc.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("wal-receive did not stop on SIGTERM")
	}
	if code := rc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("wal-receive exited with %d after SIGTERM:\n%s", code, lastLines(rc.log.String(), 20))
	}
}

// kill ends the receiver with SIGKILL, as a crash would.
func (rc *receiver) kill() {
	select {
	case <-rc.done:
		return
	default:
	}
	rc.cmd.Process.Kill()
	<-rc.done
}

// exitCode waits for a receiver that must stop by itself.
func (rc *receiver) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-rc.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("wal-receive did not exit:\n%s", rc.log.String())
	}
	return rc.cmd.ProcessState.ExitCode()
}

// committers insert numbered rows into table rpo, each in its own
// transaction, from n connections, and record the ids whose COMMIT
// returned. They stop at the first error (the server went away).
type committers struct {
	mu    sync.Mutex
	acked []int64
	next  atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
	errs  atomic.Int64
}

func startCommitters(t *testing.T, c *testenv.Cluster, n int) *committers {
	t.Helper()
	cm := &committers{stop: make(chan struct{})}
	for range n {
		conn, err := c.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		cm.wg.Go(func() {
			defer conn.Close(context.Background())
			for {
				select {
				case <-cm.stop:
					return
				default:
				}
				id := cm.next.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				_, err := conn.Exec(ctx, "INSERT INTO rpo VALUES ($1)", id)
				cancel()
				if err != nil {
					cm.errs.Add(1)
					return
				}
				cm.mu.Lock()
				cm.acked = append(cm.acked, id)
				cm.mu.Unlock()
			}
		})
	}
	return cm
}

func (cm *committers) count() int {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	return len(cm.acked)
}

// waitMore waits until n more commits returned than now.
func (cm *committers) waitMore(t *testing.T, n int) {
	t.Helper()
	want := cm.count() + n
	waitUntil(t, 2*time.Minute, fmt.Sprintf("%d commits", want), func() bool { return cm.count() >= want })
}

// halt stops the committers (after the server died they end by
// themselves) and returns the acknowledged ids.
func (cm *committers) halt() []int64 {
	close(cm.stop)
	cm.wg.Wait()
	cm.mu.Lock()
	defer cm.mu.Unlock()
	return slices.Clone(cm.acked)
}

// haltAsync is halt for committers blocked on a dead server: the ids
// acknowledged so far, without waiting for the blocked ones.
func (cm *committers) ackedSoFar() []int64 {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	return slices.Clone(cm.acked)
}

// rows returns the ids in table rpo.
func rows(t *testing.T, c *testenv.Cluster) map[int64]bool {
	t.Helper()
	conn, err := c.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rs, err := conn.Query(t.Context(), "SELECT id FROM rpo")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rs, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// checkAcked fails the test for every acknowledged id that is missing.
func checkAcked(t *testing.T, have map[int64]bool, acked []int64) {
	t.Helper()
	var missing []int64
	for _, id := range acked {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged commits are missing after the restore (first: %v)", len(missing), len(acked), missing[:min(10, len(missing))])
	}
	t.Logf("all %d acknowledged commits are there (%d rows recovered)", len(acked), len(have))
}

// syncCluster starts a cluster that archives with wal-push, with a table
// rpo; enableSync then makes wal-receive its synchronous standby.
func (e *restoreEnv) syncCluster(t *testing.T, version, segMiB int, extra map[string]string) *testenv.Cluster {
	t.Helper()
	s := map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand(), "archive_timeout": "0",
		"synchronous_commit": "on"}
	for k, v := range extra {
		s[k] = v
	}
	var args []string
	if segMiB != 16 {
		args = append(args, "--wal-segsize="+strconv.Itoa(segMiB))
	}
	c := testenv.NewCluster(t, testenv.PGConfig{Version: version, Settings: s, Env: e.env, InitdbArgs: args})
	c.Exec(t, "CREATE TABLE rpo (id bigint PRIMARY KEY)")
	return c
}

// enableSync names wal-receive in synchronous_standby_names: from now on
// a COMMIT returns only once the receiver reports its WAL flushed.
func enableSync(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = '"+wal.DefaultApplicationName+"'")
	c.Exec(t, "SELECT pg_reload_conf()")
}

func connString(cs ...*testenv.Cluster) string {
	var hosts, ports []string
	for _, c := range cs {
		hosts = append(hosts, "127.0.0.1")
		ports = append(ports, strconv.Itoa(c.Port))
	}
	return fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write connect_timeout=5",
		strings.Join(hosts, ","), strings.Join(ports, ","))
}

// restoreEnd restores the newest backup from the repository alone and
// recovers to the end of the archived WAL (along tli when not empty);
// it returns the recovered server.
func (e *restoreEnv) restoreEnd(t *testing.T, version int, name string, args ...string) *testenv.Cluster {
	t.Helper()
	d := e.target(name)
	e.restore(d, args...)
	r := e.start(version, d, false)
	waitRecovered(t, r)
	return r
}

// TestReceiveRPO0: wal-receive is the only synchronous standby; clients
// commit numbered rows; the primary is killed with -9 and its data
// directory deleted; a restore from the repository alone, recovered to the
// end of the archive, holds every row whose COMMIT returned. wal-push
// archives beside it all along: neither fails on the other's objects.
func TestReceiveRPO0(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		segMiB  int
		durable string
	}{
		// Each durability mode once, each version once: what differs
		// between versions (the WAL's bytes after a switch, the
		// walsender) is the same for both modes.
		{"pg15-local", 15, 1, "local"},
		{"pg17-repository", 17, 16, "repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRestoreEnv(t, true)
			c := e.syncCluster(t, tc.version, tc.segMiB, nil)
			e.backup(c)
			dir := filepath.Join(t.TempDir(), "recv")
			metrics := filepath.Join(t.TempDir(), "receive.prom")
			addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			rc := e.startReceiver(t, connString(c), dir, "--durable", tc.durable, "--metrics-file", metrics, "--metrics-listen", addr)
			enableSync(t, c)
			rc.waitSync(t, 1)
			e.checkReceiveStatus(t, c, dir, metrics, "http://"+addr+"/metrics")

			cm := startCommitters(t, c, 4)
			cm.waitMore(t, 300)
			// A switch mid-load: the receiver's segment must be the
			// one archive_command pushes, zero-filled tail and all.
			switchWAL(t, c)
			cm.waitMore(t, 300)
			if s := stats(t, c); s.failed != 0 {
				t.Errorf("archive_command failed %d times beside wal-receive (last %s)", s.failed, s.lastFailed)
			}
			c.Kill()
			acked := cm.ackedSoFar()
			if err := os.RemoveAll(c.DataDir); err != nil {
				t.Fatal(err)
			}
			rc.waitUploaded(t)
			rc.stop(t)
			cm.halt()

			r := e.restoreEnd(t, tc.version, "restored")
			checkAcked(t, rows(t, r), acked)
			// The last commits were in the segment the primary was
			// writing when it died: only wal-receive's pieces hold them.
			if log, _ := os.ReadFile(r.LogFile); !strings.Contains(string(log), "served the streamed tail") {
				t.Errorf("recovery did not use the receiver's tail; server log:\n%s", r.LogTail(30))
			}
			e.checkKeysDocumented()
		})
	}
}

// batch commits n rows of batch name into table t, one transaction each.
func batch(t *testing.T, c *testenv.Cluster, name string, n int) {
	t.Helper()
	for range n {
		c.Exec(t, "INSERT INTO t (batch) VALUES ($1)", name)
	}
}

// TestReceiveFailover: a primary, a streaming standby and wal-receive as
// the synchronous standby, given both hosts. The standby falls behind (it
// is stopped) while the primary commits batch c; the primary is killed and
// the standby promoted; writing goes on. The receiver follows onto
// timeline 2 without a gap and keeps timeline 1's tail, which holds c.
// Recovery to a time before the failover on timeline 1 and to a time after
// it on timeline 2 land exactly; the end of timeline 1 has c, the end of
// timeline 2 does not; wal list shows the fork.
func TestReceiveFailover(t *testing.T) {
	e := newRestoreEnv(t, true)
	p := e.syncCluster(t, 15, 1, map[string]string{"wal_keep_size": "256MB"})
	p.Exec(t, "CREATE TABLE t (id serial, batch text)")
	e.backup(p)

	sdir := filepath.Join(testenv.SharedDir(t), "standby")
	bb := p.Command(t.Context(), p.ClientBin("pg_basebackup"), "-D", sdir, "-R", "-X", "stream", "-c", "fast",
		"-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "postgres")
	if out, err := bb.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	s := testenv.AdoptDataDir(t, 15, sdir, testenv.PGConfig{Env: e.env,
		Settings: map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}})
	rc := e.startReceiver(t, connString(p, s), filepath.Join(t.TempDir(), "recv"), "--durable", "repository")
	enableSync(t, p)
	s.Exec(t, "SELECT 1")
	rc.waitSync(t, 1)

	batch(t, p, "a", 5)
	tA := p.QueryString(t, "SELECT clock_timestamp()")
	batch(t, p, "b", 5)
	end := p.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	waitUntil(t, time.Minute, "the standby to replay batch b", func() bool {
		return s.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", end) == "t"
	})
	s.Stop()
	batch(t, p, "c", 5)
	p.Kill()

	s.Start()
	s.Promote()
	enableSync(t, s)
	rc.waitSync(t, 2)
	batch(t, s, "d", 5)
	tD := s.QueryString(t, "SELECT clock_timestamp()")
	batch(t, s, "e", 5)
	sEnd := s.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	waitUntil(t, time.Minute, "the receiver to store timeline 2 up to "+sEnd, func() bool {
		st := rc.status(t)
		return st.Timeline == 2 && st.Uploaded.String() >= sEnd && len(st.Uploaded.String()) >= len(sEnd)
	})
	s.Kill()
	rc.stop(t)

	l := e.walList(t)
	if tl := l.timeline(2); tl == nil || tl.BranchedFrom != 1 || tl.ForkLSN == "" {
		t.Errorf("wal list does not show where timeline 2 branched off: %+v", l.Timelines)
	}
	if tl := l.timeline(1); tl == nil || tl.Streamed == nil || tl.Streamed.PastFork <= 0 {
		t.Errorf("wal list does not show timeline 1's tail past the fork: %+v", l.Timelines)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"before-failover-tl1", []string{"--target-time", tA, "--target-timeline", "1", "--target-action", "promote"}, "a:5"},
		{"end-tl1", []string{"--target-timeline", "1"}, "a:5,b:5,c:5"},
		{"after-failover-tl2", []string{"--target-time", tD, "--target-timeline", "latest", "--target-action", "promote"}, "a:5,b:5,d:5"},
		{"end-tl2", []string{"--target-timeline", "latest"}, "a:5,b:5,d:5,e:5"},
	} {
		r := e.restoreEnd(t, 15, tc.name, tc.args...)
		if got := batches(t, r); got != tc.want {
			t.Errorf("%s: recovered %s, want %s", tc.name, got, tc.want)
		}
		r.Stop()
	}
}

// walListJSON is the part of wal list --json these tests read.
type walListing struct {
	Timelines []walListTimeline `json:"timelines"`
	Gaps      int               `json:"gaps"`
}

type walListTimeline struct {
	Timeline     int    `json:"timeline"`
	Last         string `json:"last"`
	BranchedFrom int    `json:"branched_from"`
	ForkLSN      string `json:"fork_lsn"`
	Streamed     *struct {
		Segment  string `json:"segment"`
		End      string `json:"end_lsn"`
		PastFork int64  `json:"bytes_past_fork"`
	} `json:"streamed"`
	Gaps []struct{ First, Last string } `json:"gaps"`
}

func (l walListing) timeline(n int) *walListTimeline {
	for i := range l.Timelines {
		if l.Timelines[i].Timeline == n {
			return &l.Timelines[i]
		}
	}
	return nil
}

// walList is tidemark wal list --json of the repository's one cluster.
func (e *restoreEnv) walList(t *testing.T) walListing {
	t.Helper()
	out := e.mustTidemark(append([]string{"wal", "list", "--json"}, e.repoArgs()...)...)
	var v struct{ Clusters []walListing }
	if err := fromJSON(out, "wal", &v); err != nil || len(v.Clusters) != 1 {
		t.Fatalf("wal list --json: %v\n%s", err, out)
	}
	return v.Clusters[0]
}

// TestReceiveKill9: the receiver killed with -9 mid-segment and started
// again: synchronous commits wait meanwhile and resume, the archive has no
// gap, nothing fails on what the first run stored, and a restore to the
// end has every acknowledged commit.
func TestReceiveKill9(t *testing.T) {
	for _, durable := range []string{"local", "repository"} {
		t.Run(durable, func(t *testing.T) {
			e := newRestoreEnv(t, true)
			c := e.syncCluster(t, 15, 1, nil)
			e.backup(c)
			dir := filepath.Join(t.TempDir(), "recv")
			rc := e.startReceiver(t, connString(c), dir, "--durable", durable)
			enableSync(t, c)
			rc.waitSync(t, 1)
			cm := startCommitters(t, c, 4)
			cm.waitMore(t, 300)
			var st wal.ReceiveStatus
			waitUntil(t, time.Minute, "the receiver to stand inside a segment", func() bool {
				st = rc.status(t)
				return st.Flushed.SegmentOffset(1<<20) != 0 && time.Since(st.Updated) < time.Second
			})
			rc.kill()
			t.Logf("killed the receiver at %s (received %s, uploaded %s)", st.Flushed, st.Received, st.Uploaded)
			before := cm.count()
			rc2 := e.startReceiver(t, connString(c), dir, "--durable", durable)
			rc2.waitSync(t, 1)
			cm.waitMore(t, 300)
			t.Logf("%d commits before the kill, %d after the restart", before, cm.count()-before)
			switchWAL(t, c)
			cm.waitMore(t, 100)
			c.Kill()
			acked := cm.ackedSoFar()
			rc2.waitUploaded(t)
			rc2.stop(t)
			cm.halt()
			if strings.Contains(rc2.log.String(), "level=ERROR") || strings.Contains(rc2.log.String(), "never overwritten") {
				t.Errorf("the restarted receiver failed on what the first one stored:\n%s", lastLines(rc2.log.String(), 30))
			}
			if l := e.walList(t); l.Gaps != 0 {
				t.Errorf("the archive has %d gaps: %+v", l.Gaps, l.Timelines)
			}
			r := e.restoreEnd(t, 15, "restored")
			checkAcked(t, rows(t, r), acked)
		})
	}
}

// TestReceiveStoreDown: with --durable repository, the object store goes
// down for a while: commits wait (none returns), nothing acknowledged is
// lost, and the backlog drains once the store is back.
func TestReceiveStoreDown(t *testing.T) {
	e := newRestoreEnv(t, true)
	c := e.syncCluster(t, 15, 1, nil)
	e.backup(c)
	rc := e.startReceiver(t, connString(c), filepath.Join(t.TempDir(), "recv"), "--durable", "repository")
	enableSync(t, c)
	rc.waitSync(t, 1)
	cm := startCommitters(t, c, 4)
	cm.waitMore(t, 200)

	e.s3.Stop()
	waitUntil(t, time.Minute, "commits to wait for the receiver", func() bool {
		st := rc.status(t)
		return st.CommitsWaiting > 0 && st.UploadFailures > 0
	})
	during := cm.count()
	time.Sleep(2 * time.Second)
	if n := cm.count(); n != during {
		t.Errorf("%d commits returned while the object store was down", n-during)
	}
	if err := e.s3.Start(); err != nil {
		t.Fatal(err)
	}
	cm.waitMore(t, 200)
	waitUntil(t, 2*time.Minute, "the backlog to drain", func() bool {
		st := rc.status(t)
		return st.UploadLagBytes == 0 && st.LagBytes < 1<<20
	})
	c.Kill()
	acked := cm.ackedSoFar()
	rc.waitUploaded(t)
	rc.stop(t)
	cm.halt()
	r := e.restoreEnd(t, 15, "restored")
	checkAcked(t, rows(t, r), acked)
}

// TestReceiveRefusals: a slot of another cluster, a server whose system
// identifier differs from the one the receiver archives, and a server
// whose timeline history differs from the archived one are each refused
// with one line and exit code 8, and nothing in the archive changes.
func TestReceiveRefusals(t *testing.T) {
	e := newRestoreEnv(t, true)
	a := e.syncCluster(t, 15, 1, map[string]string{"wal_keep_size": "256MB"})
	sysA := a.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	b := testenv.NewCluster(t, testenv.PGConfig{Version: 15})
	sysB := b.QueryString(t, "SELECT system_identifier FROM pg_control_system()")
	dir := filepath.Join(t.TempDir(), "recv")
	rc := e.startReceiver(t, connString(a), dir)
	rc.stop(t)

	refused := func(name string, rc *receiver, want string) {
		t.Helper()
		code := rc.exitCode(t)
		lines := strings.Split(strings.TrimSpace(rc.log.String()), "\n")
		last := lines[len(lines)-1]
		if code != 8 || !strings.HasPrefix(last, "tidemark: ") || !strings.Contains(last, want) {
			t.Errorf("%s: exit %d, last line %q; want exit 8 and a line saying %q", name, code, last, want)
		}
	}
	// The directory of A's receiver, pointed at B, which has a slot of
	// that name.
	b.Exec(t, "SELECT pg_create_physical_replication_slot('tidemark')")
	refused("slot of another cluster", e.launchReceiver(t, connString(b), dir), "refusing slot \"tidemark\"")
	// A new directory, told which cluster to archive.
	refused("--cluster", e.launchReceiver(t, connString(b), filepath.Join(t.TempDir(), "recv2"), "--cluster", sysA), "it is cluster "+sysB)
	if n, _ := e.countKeys(t, "wal/"+sysB+"/"); n != 0 {
		t.Errorf("%d objects of cluster %s were archived", n, sysB)
	}

	// Two copies of A promoted on their own, at different points: the
	// first archives its history of timeline 2; a receiver pointed at
	// the second is refused.
	clone := func(name string) *testenv.Cluster {
		d := filepath.Join(testenv.SharedDir(t), name)
		bb := a.Command(t.Context(), a.ClientBin("pg_basebackup"), "-D", d, "-R", "-X", "stream", "-c", "fast",
			"-h", "127.0.0.1", "-p", strconv.Itoa(a.Port), "-U", "postgres")
		if out, err := bb.CombinedOutput(); err != nil {
			t.Fatalf("pg_basebackup: %v\n%s", err, out)
		}
		return testenv.AdoptDataDir(t, 15, d, testenv.PGConfig{Env: e.env,
			Settings: map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}})
	}
	x := clone("x")
	x.Promote()
	x.Exec(t, "CHECKPOINT")
	key := "wal/" + sysA + "/history/00000002.history"
	waitUntil(t, time.Minute, "the first copy to archive its history", func() bool {
		n, _ := e.countKeys(t, key)
		return n == 1
	})
	archived := e.getObject(t, key)
	a.Exec(t, "CREATE TABLE more AS SELECT 1")
	y := clone("y")
	y.Exec(t, "SELECT 1")
	y.Promote()
	refused("history", e.launchReceiver(t, connString(y), filepath.Join(t.TempDir(), "recv3")), "differs from the archived")
	if !bytes.Equal(e.getObject(t, key), archived) {
		t.Errorf("the archived history of timeline 2 changed")
	}
}

// countKeys counts the objects under prefix in the repository's store.
func (e *restoreEnv) countKeys(t *testing.T, prefix string) (int, int64) {
	t.Helper()
	st, err := location.Open(t.Context(), e.url, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, size := 0, int64(0)
	for oi, err := range st.List(t.Context(), prefix, "") {
		if err != nil {
			t.Fatal(err)
		}
		n++
		size += oi.Size
	}
	return n, size
}

func (e *restoreEnv) getObject(t *testing.T, key string) []byte {
	t.Helper()
	st, err := location.Open(t.Context(), e.url, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := st.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkReceiveStatus checks what an operator reads of a receiver that is
// the synchronous standby of an idle c: --status, --status --json, the
// metrics file and the metrics endpoint, against the server's own view
// and each other; and that the metrics it exports are those
// docs/operations.md documents.
func (e *restoreEnv) checkReceiveStatus(t *testing.T, c *testenv.Cluster, dir, file, url string) {
	t.Helper()
	// Idle: the receiver has flushed all the server wrote.
	end := c.QueryString(t, "SELECT pg_current_wal_flush_lsn()")
	var st wal.ReceiveStatus
	waitUntil(t, time.Minute, "the receiver's status to catch up with "+end, func() bool {
		out := e.mustTidemark("wal-receive", "--dir", dir, "--status", "--json")
		if err := fromJSON(out, "wal_receive", &st); err != nil {
			t.Fatalf("wal-receive --status --json: %v\n%s", err, out)
		}
		return st.Flushed.String() == end && st.Uploaded > 0 && st.SlotActive != nil && st.CommitsWaiting >= 0
	})
	if st.LagBytes != 0 || st.SyncState != "sync" || !*st.SlotActive || st.Received < st.Flushed {
		t.Errorf("wal-receive --status --json of an idle server at %s: %+v", end, st)
	}
	waitUntil(t, time.Minute, "the server to see the receiver flushed to "+end, func() bool {
		return c.QueryString(t, "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = $1", wal.DefaultApplicationName) == end
	})
	out := e.mustTidemark("wal-receive", "--dir", dir, "--status")
	for _, want := range []string{"streaming from", "sync_state sync", "flushed  " + end, "commits waiting for a synchronous standby: 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("wal-receive --status lacks %q:\n%s", want, out)
		}
	}
	cl := []string{"cluster", strconv.FormatUint(st.Cluster, 10)}
	var ep, tf families
	waitUntil(t, time.Minute, "the metrics to show the flushed position", func() bool {
		var err error
		if ep, err = scrape(t, url); err != nil {
			return false
		}
		if _, err := os.Stat(file); err != nil {
			return false
		}
		tf = readMetricsFile(t, file)
		// The file is rewritten every 5 s: wait for one written since
		// the server counted the receiver as synchronous.
		a, _ := ep.value("tidemark_receive_flushed_lsn", cl...)
		b, _ := tf.value("tidemark_receive_flushed_lsn", cl...)
		sa, _ := ep.value("tidemark_receive_sync", cl...)
		sb, _ := tf.value("tidemark_receive_sync", cl...)
		return a == float64(st.Flushed) && b == float64(st.Flushed) && sa == 1 && sb == 1
	})
	for what, f := range map[string]families{"endpoint": ep, "metrics file": tf} {
		f.want(t, what, "tidemark_receive_connected", 1, cl...)
		f.want(t, what, "tidemark_receive_sync", 1, cl...)
		f.want(t, what, "tidemark_receive_slot_active", 1, cl...)
		f.want(t, what, "tidemark_receive_timeline", 1, cl...)
		f.want(t, what, "tidemark_receive_lag_bytes", 0, cl...)
		f.want(t, what, "tidemark_receive_commits_waiting", 0, cl...)
		if v, _ := f.value("tidemark_receive_uploaded_lsn", cl...); v <= 0 || v > float64(st.Flushed) {
			t.Errorf("%s: uploaded LSN %v, flushed %v", what, v, float64(st.Flushed))
		}
	}
	if _, ok := ep.value("process_resident_memory_bytes"); !ok {
		t.Errorf("endpoint: no process_resident_memory_bytes")
	}
	// TestMetrics holds every other command's metrics to the documentation;
	// the receiver's are held here.
	documented := map[string]bool{}
	for _, name := range documentedMetrics(t) {
		if strings.HasPrefix(name, "tidemark_receive_") {
			documented[name] = true
			if _, ok := ep[name]; !ok {
				t.Errorf("docs/operations.md documents %s, which wal-receive does not export", name)
			}
		}
	}
	for name := range ep {
		if strings.HasPrefix(name, "tidemark_") && !documented[name] {
			t.Errorf("wal-receive exports %s, which docs/operations.md (Metrics) does not document", name)
		}
	}
}
