package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// restoreEnv is one repository (file:// or MinIO) with an identity the
// server user can read, and the tidemark binary that archives into it.
type restoreEnv struct {
	t        *testing.T
	bin      string
	url      string
	identity string
	env      []string          // for tidemark and the servers (S3 credentials)
	shared   string            // a directory the server user owns
	s3       *testenv.S3Server // the S3 server, for backends on one
}

func newRestoreEnv(t *testing.T, s3 bool) *restoreEnv {
	t.Helper()
	backend := "file"
	if s3 {
		backend = "s3"
	}
	return newBackendEnv(t, backend, repo.InitOptions{})
}

func (e *restoreEnv) repoArgs() []string {
	return []string{"--repo", e.url, "--identity", e.identity}
}

// archiveCommand is what the clusters of these tests archive with.
func (e *restoreEnv) archiveCommand() string {
	// PostgreSQL expands %-escapes in archive_command: the URL's own
	// percent-encoding must be doubled.
	return fmt.Sprintf("%s wal-push --repo '%s' --identity %s %%p", e.bin, strings.ReplaceAll(e.url, "%", "%%"), e.identity)
}

// cluster starts a cluster that archives into the repository.
func (e *restoreEnv) cluster(version int, settings map[string]string) *testenv.Cluster {
	s := map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand(), "archive_timeout": "0"}
	for k, v := range settings {
		s[k] = v
	}
	return testenv.NewCluster(e.t, testenv.PGConfig{Version: version, Settings: s, Env: e.env})
}

// tidemark runs a command and returns stdout, stderr and the exit code.
func (e *restoreEnv) tidemark(args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), e.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run tidemark %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

func (e *restoreEnv) mustTidemark(args ...string) string {
	e.t.Helper()
	out, errs, code := e.tidemark(args...)
	if code != 0 {
		e.t.Fatalf("tidemark %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// backup takes a backup of c and returns the new snapshot.
func (e *restoreEnv) backup(c *testenv.Cluster, extra ...string) *repo.Snapshot {
	e.t.Helper()
	before := len(e.snapshots())
	args := append([]string{"backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)
	e.mustTidemark(append(args, extra...)...)
	snaps := e.snapshots()
	if len(snaps) != before+1 {
		e.t.Fatalf("backup made %d snapshots", len(snaps)-before)
	}
	return snaps[len(snaps)-1]
}

func (e *restoreEnv) snapshots() []*repo.Snapshot {
	e.t.Helper()
	st, err := location.Open(e.t.Context(), e.url, location.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := os.ReadFile(e.identity)
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := repo.Open(e.t.Context(), st, ids, repo.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Close()
	snaps, err := r.Snapshots(e.t.Context(), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return snaps
}

// target is a fresh restore target the server user may use.
func (e *restoreEnv) target(name string) string {
	return filepath.Join(e.shared, name)
}

// restore runs tidemark restore into dir and fails the test unless it
// succeeds.
func (e *restoreEnv) restore(dir string, args ...string) string {
	e.t.Helper()
	return e.mustTidemark(append(append([]string{"restore", "--pgdata", dir}, e.repoArgs()...), args...)...)
}

// start starts a restored directory without archiving (so that it does not
// add a timeline to the test's archive unless asked).
func (e *restoreEnv) start(version int, dir string, archive bool) *testenv.Cluster {
	e.t.Helper()
	s := map[string]string{"archive_mode": "off"}
	if archive {
		s = map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}
	}
	return testenv.AdoptDataDir(e.t, version, dir, testenv.PGConfig{Settings: s, Env: e.env})
}

// switchAndWait ends the current WAL segment and waits until it is
// archived, so that everything written so far is recoverable.
func switchAndWait(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	// A record first, so that the switch always completes a segment (with
	// nothing written since the last switch, pg_switch_wal does nothing).
	c.Exec(t, "SELECT pg_logical_emit_message(false, 'tidemark-test', 'switch')")
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for {
		last := c.QueryString(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if len(last) >= 24 && last[:24] >= seg {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("segment %s not archived (last archived %q); server log:\n%s", seg, last, c.LogTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func batches(t *testing.T, c *testenv.Cluster) string {
	return c.QueryString(t, "SELECT coalesce(string_agg(batch || ':' || n, ',' ORDER BY batch), '') FROM (SELECT batch, count(*) n FROM t GROUP BY batch) s")
}

func waitPaused(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for c.QueryString(t, "SELECT pg_get_wal_replay_pause_state()") != "paused" {
		if ctx.Err() != nil {
			t.Fatalf("recovery did not pause at the target; server log:\n%s", c.LogTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitRecovered(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := c.WaitRecoveryDone(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreTargets restores to a time, a transaction ID, a named restore
// point, an LSN and immediate, each with another target action, and checks
// that exactly the batches committed before each target are there.
func TestRestoreTargets(t *testing.T) {
	for _, tc := range []struct {
		version int
		s3      bool
	}{{15, false}, {16, true}, {17, true}, {18, false}} {
		t.Run(fmt.Sprintf("pg%d/s3=%v", tc.version, tc.s3), func(t *testing.T) {
			e := newRestoreEnv(t, tc.s3)
			c := e.cluster(tc.version, nil)
			c.Exec(t, "CREATE TABLE t (id serial, batch text)")
			e.backup(c)
			ins := func(b string) { c.Exec(t, "INSERT INTO t (batch) SELECT $1 FROM generate_series(1, 10)", b) }

			ins("a")
			afterA := c.QueryString(t, "SELECT clock_timestamp()")
			ins("b")
			xidB := c.QueryString(t, "SELECT xmin FROM t WHERE batch = 'b' LIMIT 1")
			c.Exec(t, "SELECT pg_create_restore_point('before-c')")
			ins("c")
			lsnC := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
			ins("d")
			switchAndWait(t, c)

			// A time between a and b; pause there (PostgreSQL's default).
			dir := e.target("time")
			out := e.restore(dir, "--target-time", afterA)
			if !strings.Contains(out, "recovery_target_action = 'pause'") || !strings.Contains(out, "recovery_target_timeline = '1'") {
				t.Errorf("restore output lacks the explicit settings:\n%s", out)
			}
			r := e.start(tc.version, dir, false)
			waitPaused(t, r)
			if got := batches(t, r); got != "a:10" {
				t.Errorf("target time %s: batches %s, want a:10", afterA, got)
			}
			r.Stop()

			// An xid, inclusive: b is there; promote.
			dir = e.target("xid")
			e.restore(dir, "--target-xid", xidB, "--target-action", "promote")
			r = e.start(tc.version, dir, false)
			waitRecovered(t, r)
			if got := batches(t, r); got != "a:10,b:10" {
				t.Errorf("target xid %s: batches %s", xidB, got)
			}
			r.Stop()

			// A named restore point; promote.
			dir = e.target("name")
			e.restore(dir, "--target-name", "before-c", "--target-action", "promote")
			r = e.start(tc.version, dir, false)
			waitRecovered(t, r)
			if got := batches(t, r); got != "a:10,b:10" {
				t.Errorf("target name: batches %s", got)
			}
			r.Stop()

			// An LSN taken after c committed; shut down there.
			dir = e.target("lsn")
			e.restore(dir, "--target-lsn", lsnC, "--target-action", "shutdown")
			code, log := runServer(t, c.Bin("postgres"), dir, e.env)
			if code != 0 || !strings.Contains(log, "shutdown at recovery target") {
				t.Fatalf("server with recovery_target_action=shutdown exited %d:\n%s", code, log)
			}
			cf, err := pg.ReadControlFileAt(dir)
			if err != nil || cf.State != pg.DBShutdownedInRecovery {
				t.Fatalf("after shutdown at the target: %v %v", cf, err)
			}
			// Started again with promote, it recovers to the same target.
			f, err := os.OpenFile(filepath.Join(dir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("recovery_target_action = 'promote'\n")
			f.Close()
			r = e.start(tc.version, dir, false)
			waitRecovered(t, r)
			if got := batches(t, r); got != "a:10,b:10,c:10" {
				t.Errorf("target lsn %s: batches %s", lsnC, got)
			}
			r.Stop()
		})
	}
}

// runServer runs postgres (bin) on dir until it exits by itself and
// returns its exit code and output.
func runServer(t *testing.T, bin, dir string, env []string) (int, string) {
	t.Helper()
	testenv.ChownToServer(t, dir)
	os.Chmod(dir, 0o700)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	sock := testenv.SharedDir(t)
	cmd := testenv.ServerCommand(ctx, t, env, bin, "-D", dir, "-c", "port="+strconv.Itoa(testenv.FreePort(t)),
		"-c", "listen_addresses=", "-c", "unix_socket_directories="+sock, "-c", "archive_mode=off")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatal("condition not reached in time")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRestorePrefetchFastPath recovers through the restore_command that
// restore writes: the prefetcher links the segments it verified into the
// spool's ready directory and the command's mv takes them from there
// without starting tidemark. Recovery lands on its target, and the
// prefetcher's log shows segments taken by mv and each downloaded once.
func TestRestorePrefetchFastPath(t *testing.T) {
	e := newRestoreEnv(t, true)
	c := e.cluster(17, nil)
	c.Exec(t, "CREATE TABLE t (id serial, batch text, pad text)")
	e.backup(c)
	start := c.QueryString(t, "SELECT pg_current_wal_lsn() - '0/0'")
	for c.QueryString(t, "SELECT (pg_current_wal_lsn() - '0/0' - "+start+" > 12 * 16 * 1024 * 1024)::int") != "1" {
		c.Exec(t, "INSERT INTO t (batch, pad) SELECT 'a', md5(g::text) FROM generate_series(1, 100000) g")
	}
	target := c.QueryString(t, "SELECT clock_timestamp()")
	c.Exec(t, "INSERT INTO t (batch) VALUES ('b')")
	switchAndWait(t, c)
	want := c.QueryString(t, "SELECT count(*) FROM t WHERE batch = 'a'")

	dir := e.target("fast")
	out := e.restore(dir, "--target-time", target, "--target-action", "promote")
	if !strings.Contains(out, "restore_command = 'mv -f ../fast.tidemark-spool/ready-") || !strings.Contains(out, " --spool-token ") {
		t.Fatalf("restore_command without the fast path:\n%s", out)
	}
	r := e.start(17, dir, false)
	waitRecovered(t, r)
	if got := r.QueryString(t, "SELECT count(*) FILTER (WHERE batch = 'a') || ',' || count(*) FILTER (WHERE batch = 'b') FROM t"); got != want+",0" {
		t.Fatalf("recovered a,b rows %s, want %s,0", got, want)
	}
	r.Stop()

	// The server is gone: the prefetcher exits and says what it did.
	log := filepath.Join(dir+".tidemark-spool", "prefetch.log")
	var done string
	waitFor(t, func() bool {
		b, _ := os.ReadFile(log)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "prefetcher: done") {
				done = l
			}
		}
		return done != ""
	})
	var downloads, taken int
	for _, f := range strings.Fields(done) {
		if v, ok := strings.CutPrefix(f, "downloads="); ok {
			downloads, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(f, "taken_by_mv="); ok {
			taken, _ = strconv.Atoi(v)
		}
	}
	if taken == 0 || taken > downloads || downloads > 16 {
		b, _ := os.ReadFile(log)
		t.Fatalf("%d segments taken by mv of %d downloads (12 segments of WAL replayed):\n%s", taken, downloads, b)
	}
	t.Logf("%s", done)
}

// TestRestoreTimelines: a restore promoted to timeline 2, written to and
// backed up; then a restore to a point on timeline 2 (the default, the
// newest backup's timeline) and one to a point on timeline 1 after the
// branch (explicitly).
func TestRestoreTimelines(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, nil)
	c.Exec(t, "CREATE TABLE t (id serial, batch text)")
	c.Exec(t, "INSERT INTO t (batch) VALUES ('base')")
	e.backup(c)
	c.Exec(t, "INSERT INTO t (batch) VALUES ('one')")
	lsnOne := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	switchAndWait(t, c)

	// Branch: recover to just after 'one', promote to timeline 2, archive.
	b := e.target("branch")
	e.restore(b, "--target-lsn", lsnOne, "--target-action", "promote")
	br := e.start(15, b, true)
	waitRecovered(t, br)
	if tli := br.QueryString(t, "SELECT timeline_id FROM pg_control_checkpoint()"); tli != "2" {
		br.Exec(t, "CHECKPOINT")
	}
	br.Exec(t, "INSERT INTO t (batch) VALUES ('two')")
	s2 := e.backup(br)
	if s2.StopTimeline != 2 {
		t.Fatalf("backup of the branch on timeline %d", s2.StopTimeline)
	}
	br.Exec(t, "INSERT INTO t (batch) VALUES ('two-after')")
	lsnTwo := br.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	br.Exec(t, "INSERT INTO t (batch) VALUES ('two-late')")
	switchAndWait(t, br)

	// Timeline 1 goes on past the branch point.
	c.Exec(t, "INSERT INTO t (batch) VALUES ('one-after')")
	lsnOneAfter := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	c.Exec(t, "INSERT INTO t (batch) VALUES ('one-late')")
	switchAndWait(t, c)

	d := e.target("on-two")
	out := e.restore(d, "--target-lsn", lsnTwo, "--target-action", "promote")
	if !strings.Contains(out, "timeline 2") {
		t.Errorf("restore did not recover along timeline 2:\n%s", out)
	}
	r := e.start(15, d, false)
	waitRecovered(t, r)
	if got := batches(t, r); got != "base:1,one:1,two:1,two-after:1" {
		t.Errorf("timeline 2: %s", got)
	}
	r.Stop()

	d = e.target("on-one")
	out = e.restore(d, "--target-lsn", lsnOneAfter, "--target-timeline", "1", "--target-action", "promote")
	if !strings.Contains(out, "recovery_target_timeline = '1'") {
		t.Errorf("restore did not pin timeline 1:\n%s", out)
	}
	r = e.start(15, d, false)
	waitRecovered(t, r)
	if got := batches(t, r); got != "base:1,one:1,one-after:1" {
		t.Errorf("timeline 1: %s", got)
	}
	r.Stop()
}

// TestRestoreDeltaFormerPrimary: the old primary keeps writing after a
// branch was promoted; a delta restore turns it into a copy of the branch,
// fetching only what differs.
func TestRestoreDeltaFormerPrimary(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(17, map[string]string{"summarize_wal": "on"})
	testenv.PGBenchInit(t, c, 5)
	c.Exec(t, "CREATE TABLE t (id serial, batch text)")
	c.Exec(t, "INSERT INTO t (batch) VALUES ('base')")
	s := e.backup(c)
	switchAndWait(t, c)

	b := e.target("new-primary")
	e.restore(b, "--target", "immediate", "--target-action", "promote")
	br := e.start(17, b, true)
	waitRecovered(t, br)
	br.Exec(t, "INSERT INTO t (batch) VALUES ('new')")
	switchAndWait(t, br)
	want := testenv.DatabaseFingerprint(t, br)
	br.Stop()

	// The former primary diverges, then is stopped.
	c.Exec(t, "INSERT INTO t (batch) VALUES ('diverged')")
	c.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100")
	switchAndWait(t, c)

	_, errs, code := e.tidemark(append([]string{"restore", "--pgdata", c.DataDir, "--delta"}, e.repoArgs()...)...)
	if code != 8 || !strings.Contains(errs, "is running on") {
		t.Errorf("delta onto a running server: exit %d, %s", code, errs)
	}
	c.Stop()
	// Without a target, recovery replays all of timeline 2 and promotes.
	out := e.restore(c.DataDir, "--delta", "--target-timeline", "2")
	t.Logf("delta restore:\n%s", out)
	fetched := parseFetched(t, out)
	if fetched <= 0 || fetched >= s.Stats.LogicalBytes/2 {
		t.Errorf("delta fetched %d bytes of a %d-byte backup", fetched, s.Stats.LogicalBytes)
	}
	r := e.start(17, c.DataDir, false)
	waitRecovered(t, r)
	if got := testenv.DatabaseFingerprint(t, r); got != want {
		t.Errorf("delta restore differs from the new primary")
	}
	if got := batches(t, r); got != "base:1,new:1" {
		t.Errorf("former primary after delta: %s", got)
	}
}

// parseFetched reads "fetched N MiB" from restore's output, in bytes.
func parseFetched(t *testing.T, out string) int64 {
	t.Helper()
	i := strings.Index(out, "fetched ")
	if i < 0 {
		t.Fatalf("no fetched bytes in:\n%s", out)
	}
	f := strings.Fields(out[i+len("fetched "):])
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatalf("fetched %q: %v", f[0], err)
	}
	mult := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[strings.TrimSuffix(f[1], ";")]
	return int64(v * mult)
}

// TestRestoreTablespaces restores a cluster with a tablespace moved
// elsewhere, refuses its original location while the original holds it,
// and restores it in place once that is free.
func TestRestoreTablespaces(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, nil)
	loc := filepath.Join(e.shared, "ts1")
	os.Mkdir(loc, 0o700)
	testenv.ChownToServer(t, loc)
	c.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+loc+"'")
	c.Exec(t, "CREATE TABLE t (id serial, batch text) TABLESPACE ts1")
	c.Exec(t, "INSERT INTO t (batch) SELECT 'x' FROM generate_series(1, 1000)")
	e.backup(c)
	switchAndWait(t, c)
	want := testenv.TableChecksum(t, c, "t")

	_, errs, code := e.tidemark(append([]string{"restore", "--pgdata", e.target("in-place")}, e.repoArgs()...)...)
	if code != 8 || !strings.Contains(errs, loc) {
		t.Errorf("restore onto the live tablespace: exit %d, %s", code, errs)
	}

	moved := filepath.Join(e.shared, "ts1-moved")
	d := e.target("moved")
	e.restore(d, "--tablespace-map", loc+"="+moved, "--target", "immediate", "--target-action", "promote")
	if l, _ := os.Readlink(filepath.Join(d, "pg_tblspc", tablespaceOID(t, c))); l != moved {
		t.Errorf("pg_tblspc link points to %q", l)
	}
	r := e.start(15, d, false)
	waitRecovered(t, r)
	if got := testenv.TableChecksum(t, r, "t"); got != want {
		t.Errorf("moved tablespace: %s, want %s", got, want)
	}
	if got := r.QueryString(t, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"); got != moved {
		t.Errorf("tablespace location %s", got)
	}
	r.Stop()

	c.Stop()
	os.RemoveAll(loc)
	d = e.target("in-place")
	e.restore(d, "--target", "immediate", "--target-action", "promote")
	r = e.start(15, d, false)
	waitRecovered(t, r)
	if got := testenv.TableChecksum(t, r, "t"); got != want {
		t.Errorf("tablespace in place: %s, want %s", got, want)
	}
}

func tablespaceOID(t *testing.T, c *testenv.Cluster) string {
	return c.QueryString(t, "SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
}

// TestRestoreIncrementalChain restores the newest of a full and two
// incremental backups and compares it with the source at that point.
func TestRestoreIncrementalChain(t *testing.T) {
	e := newRestoreEnv(t, true)
	c := e.cluster(17, map[string]string{"summarize_wal": "on"})
	testenv.PGBenchInit(t, c, 5)
	testenv.LoadRandomTable(t, c, "md5", 20000)
	e.backup(c)
	for i := range 2 {
		testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Transactions: 300})
		testenv.UpdateRandomRows(t, c, "md5", 0.05)
		c.Exec(t, "DELETE FROM md5 WHERE id % 7 = $1", i)
		c.Exec(t, "VACUUM md5")
		if s := e.backup(c); s.Type != repo.SnapshotIncremental {
			t.Errorf("backup %d is %s", i+2, s.Type)
		}
	}
	want := testenv.DatabaseFingerprint(t, c)
	switchAndWait(t, c)

	d := e.target("chain")
	e.restore(d, "--backup", "latest", "--target", "immediate", "--target-action", "promote")
	r := e.start(17, d, false)
	waitRecovered(t, r)
	if got := testenv.DatabaseFingerprint(t, r); got != want {
		t.Errorf("restored chain differs from the source")
	}
}

// TestRestoreRefusals checks each refusal: one line saying what to do, exit
// code 8, nothing written.
func TestRestoreRefusals(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, nil)
	c.Exec(t, "CREATE TABLE t (id serial, batch text)")
	before := c.QueryString(t, "SELECT clock_timestamp() - interval '1 hour'")
	e.backup(c)
	c.Exec(t, "INSERT INTO t (batch) VALUES ('a')")
	switchAndWait(t, c)
	future := c.QueryString(t, "SELECT clock_timestamp() + interval '1 hour'")

	nonEmpty := e.target("non-empty")
	os.Mkdir(nonEmpty, 0o700)
	os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o600)
	cases := []struct {
		name string
		dir  string
		args []string
		want string
	}{
		{"not empty", nonEmpty, nil, "is not empty: pass --delta"},
		{"running server", c.DataDir, []string{"--delta"}, "is running on"},
		{"before the oldest backup", e.target("early"), []string{"--target-time", before}, "earlier than the end of the oldest backup"},
		{"past the archive", e.target("late"), []string{"--target-time", future}, "the last recoverable time is"},
	}
	if os.Geteuid() == 0 {
		small := filepath.Join(e.shared, "small")
		os.Mkdir(small, 0o700)
		if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=4m"); err == nil {
			t.Cleanup(func() { syscall.Unmount(small, syscall.MNT_DETACH) })
			testenv.ChownToServer(t, small)
			cases = append(cases, struct {
				name string
				dir  string
				args []string
				want string
			}{"no space", filepath.Join(small, "pgdata"), nil, "not enough free space"})
		} else {
			t.Logf("no tmpfs for the disk-space refusal: %v", err)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ents, _ := os.ReadDir(tc.dir)
			_, errs, code := e.tidemark(append(append([]string{"restore", "--pgdata", tc.dir}, e.repoArgs()...), tc.args...)...)
			if code != 8 {
				t.Errorf("exit %d, want 8: %s", code, errs)
			}
			lines := strings.Split(strings.TrimSpace(errs), "\n")
			if last := lines[len(lines)-1]; !strings.Contains(last, tc.want) {
				t.Errorf("message %q lacks %q", last, tc.want)
			}
			if after, _ := os.ReadDir(tc.dir); len(after) != len(ents) {
				t.Errorf("refused restore wrote into %s", tc.dir)
			}
		})
	}
}

// TestRestoreInterrupted kills a restore midway: PostgreSQL refuses to
// start the directory, tidemark refuses to restore into it again without
// --delta, and --delta finishes it.
func TestRestoreInterrupted(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, nil)
	testenv.PGBenchInit(t, c, 10)
	e.backup(c)
	switchAndWait(t, c)
	want := testenv.DatabaseFingerprint(t, c)

	d := e.target("killed")
	cmd := exec.Command(e.bin, append(append([]string{"restore", "--pgdata", d, "--parallel", "1"}, e.repoArgs()...), "--target", "immediate", "--target-action", "promote")...)
	cmd.Env = append(os.Environ(), e.env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once a good part of the data has been written: the restore has
	// laid out every file (sparse) and is fetching.
	waitFor(t, func() bool {
		var n int64
		filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.Type().IsRegular() {
				var st syscall.Stat_t
				if syscall.Stat(p, &st) == nil {
					n += st.Blocks * 512
				}
			}
			return nil
		})
		return n > 40<<20
	})
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if _, err := os.Stat(filepath.Join(d, "global", "pg_control")); err == nil {
		t.Skip("the restore finished before it was killed")
	}

	if code, log := runServer(t, c.Bin("postgres"), d, e.env); code == 0 {
		t.Fatalf("PostgreSQL on an interrupted restore: exit %d\n%s", code, log)
	} else {
		t.Logf("PostgreSQL refused: %s", strings.TrimSpace(log))
	}

	_, errs, code := e.tidemark(append([]string{"restore", "--pgdata", d}, e.repoArgs()...)...)
	if code != 8 || !strings.Contains(errs, "interrupted") {
		t.Errorf("restore into the interrupted directory: exit %d, %s", code, errs)
	}
	e.restore(d, "--delta", "--target", "immediate", "--target-action", "promote")
	r := e.start(15, d, false)
	waitRecovered(t, r)
	if got := testenv.DatabaseFingerprint(t, r); got != want {
		t.Errorf("finished restore differs from the source")
	}
}

// TestRestoreDeltaSummedWindow: a delta restore over a copy that differs in
// one page of a window the incremental summed without reading it whole
// (the page is its base slot's, which the backup never read: the sum came
// from the fetched base) rewrites that page: a sum that did not cover
// exactly what the restore writes would keep the wrong copy.
func TestRestoreDeltaSummedWindow(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, map[string]string{"autovacuum": "off"})
	c.Exec(t, `CREATE TABLE sparse (id int, v text) WITH (fillfactor = 50);
INSERT INTO sparse SELECT g, repeat('x', 200) FROM generate_series(1, 7000) g`)
	c.Exec(t, "VACUUM FREEZE sparse")
	c.Exec(t, "CHECKPOINT")
	rel := c.QueryString(t, "SELECT pg_relation_filepath('sparse')")
	e.backup(c)
	// 24 pages of the first window, 5 apart: read one by one, stored as
	// deltas on the window's base slot (as in backup's
	// TestWindowSumsFromBase).
	var tids []string
	for p := 0; p < 120; p += 5 {
		tids = append(tids, fmt.Sprintf(`"(%d,1)"`, p))
	}
	c.Exec(t, "UPDATE sparse SET v = repeat('y', 200) WHERE ctid = ANY('{"+strings.Join(tids, ",")+"}'::tid[])")
	c.Exec(t, "CHECKPOINT")
	if s := e.backup(c); s.Type != repo.SnapshotIncremental {
		t.Fatalf("second backup is %s", s.Type)
	}
	switchAndWait(t, c)

	args := []string{"--target", "immediate", "--target-action", "promote"}
	want := e.target("fresh")
	e.restore(want, args...)
	d := e.target("copy")
	e.restore(d, args...)
	delta := func() string {
		t.Helper()
		out, errs, code := e.tidemark(append(append([]string{"restore", "--pgdata", d, "--delta"}, e.repoArgs()...), args...)...)
		if code != 0 {
			t.Fatalf("delta restore: exit %d\n%s%s", code, out, errs)
		}
		return errs
	}
	// Over the intact copy the window is kept by its sum, not proved by
	// its deltas (which fetches the patches).
	if errs := delta(); logCount(t, errs, "kept_pages_by_sum") < 128 || logCount(t, errs, "kept_pages_by_deltas") != 0 {
		t.Errorf("delta restore over an intact copy, want the table's first window kept by its sum:\n%s", errs)
	}
	f, err := os.OpenFile(filepath.Join(d, rel), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("stale"), 8192+4000); err != nil { // page 1: not changed since the full
		t.Fatal(err)
	}
	f.Close()
	if errs := delta(); logCount(t, errs, "fetched_delta_pages")+logCount(t, errs, "fetched_part_pages")+logCount(t, errs, "fetched_whole_pages") == 0 {
		t.Errorf("delta restore over a stale page fetched nothing:\n%s", errs)
	}
	got, err := os.ReadFile(filepath.Join(d, rel))
	if err != nil {
		t.Fatal(err)
	}
	exp, err := os.ReadFile(filepath.Join(want, rel))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, exp) {
		t.Fatalf("%s after the delta restore differs from a fresh restore (page 1 kept stale: %v)", rel, bytes.Contains(got, []byte("stale")))
	}
}

// logCount returns the number logged as key=N in a command's log.
func logCount(t *testing.T, log, key string) int64 {
	t.Helper()
	i := strings.Index(log, " "+key+"=")
	if i < 0 {
		t.Fatalf("no %s in the log:\n%s", key, log)
	}
	v, err := strconv.ParseInt(strings.Fields(log[i+len(key)+2:])[0], 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return v
}
