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
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

// heartbeatAgent starts `tidemark agent --heartbeat` beside c (as the
// server user), with extra flags: it archives and writes
// tidemark.heartbeat every second.
func (e *restoreEnv) heartbeatAgent(c *testenv.Cluster, extra ...string) {
	t := e.t
	t.Helper()
	cmd := c.Command(context.Background(), e.bin, append(append([]string{"agent", "--pgdata", c.DataDir, "--heartbeat", "1s",
		"--pg-conn", c.ConnString()}, e.repoArgs()...), extra...)...)
	cmd.Env = append(cmd.Env, e.env...)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})
	waitFor(t, func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_tables WHERE schemaname = 'tidemark' AND tablename = 'heartbeat'") == "1" &&
			c.QueryString(t, "SELECT count(*) FROM tidemark.heartbeat") == "1"
	})
}

// drillResult is one run of tidemark drill --json.
type drillResult struct {
	code   int
	stderr string
	rep    drill.Report
}

// drill runs tidemark drill of source's backups. --pgdata names the running
// source, whose server binaries the scratch cluster then uses (PostgreSQL
// 16 and later come from npm here, in no place a drill looks by itself).
func (e *restoreEnv) drill(source *testenv.Cluster, args ...string) drillResult {
	e.t.Helper()
	scratch := filepath.Join(e.shared, "scratch")
	os.MkdirAll(scratch, 0o755)
	out, errs, code := e.tidemark(append(append([]string{"drill", "--json", "--scratch-dir", scratch, "--timeout", "4m", "--log-level", "warn",
		"--pgdata", source.DataDir}, e.repoArgs()...), args...)...)
	var res drillResult
	res.code, res.stderr = code, errs
	if err := fromJSON(out, "drill", &res.rep); err != nil && code != 1 {
		e.t.Fatalf("drill --json printed %q (stderr %s): %v", out, errs, err)
	}
	// The scratch cluster is gone, whatever happened.
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		e.t.Errorf("the drill left %d entries in its scratch directory", len(ents))
	}
	return res
}

func check(rep drill.Report, name string) drill.CheckResult {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	return drill.CheckResult{}
}

// workload writes numbered batches for a while, so that there is WAL with
// commits (and heartbeats) after the backup.
func workload(t *testing.T, c *testenv.Cluster, batches int) {
	c.Exec(t, "CREATE TABLE IF NOT EXISTS w (batch int, payload text)")
	for i := range batches {
		c.Exec(t, "INSERT INTO w SELECT $1, md5(g::text) FROM generate_series(1, 200) g", i)
		time.Sleep(300 * time.Millisecond)
	}
}

// TestDrillHealthy: a drill of the newest backup to a random time passes
// every check, with the heartbeat proving the recovery point.
func TestDrillHealthy(t *testing.T) {
	for _, v := range []int{15, 16, 17, 18} {
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			e := backupEnv(t, true, 0)
			c := e.backupCluster(v, nil)
			e.heartbeatAgent(c)
			testenv.LoadRandomTable(t, c, "data", 20000)
			e.backup(c)
			workload(t, c, 10)
			switchAndWait(t, c)

			checks := filepath.Join(e.shared, "checks.sql")
			os.WriteFile(checks, []byte("SELECT count(*) = 20000 FROM data;\nSELECT count(*) > 0 FROM w\n"), 0o644)
			res := e.drill(c, "--check-sql", checks)
			if res.code != 0 || !res.rep.OK {
				t.Fatalf("drill exit %d: %s\n%+v", res.code, res.stderr, res.rep)
			}
			r := res.rep
			if r.Target.Kind != "time" || !r.Target.Random || r.RecoverSeconds <= 0 || r.RestoreSeconds <= 0 || r.ReplaySeconds <= 0 {
				t.Errorf("report: %+v", r)
			}
			for _, name := range []string{"recovery target", "heartbeat", "data pages", checks + ":1", checks + ":2"} {
				if ch := check(r, name); ch.Status != drill.Pass {
					t.Errorf("check %s: %+v", name, ch)
				}
			}
			if r.Proof != drill.ProofHeartbeat || !strings.Contains(r.Target.Stopped, "before ") {
				t.Errorf("proof %q, stopped %q", r.Proof, r.Target.Stopped)
			}
			if ch := check(r, "pg_amcheck"); ch.Status == drill.Fail {
				t.Errorf("pg_amcheck: %+v", ch)
			} else {
				t.Logf("pg_amcheck: %s: %s", ch.Status, ch.Detail)
			}
			t.Logf("report: %+v", r)
			if n, _ := e.count(drill.Prefix); n != 1 {
				t.Errorf("%d drill reports in the repository, want 1", n)
			}
		})
	}
}

// TestDrillTargets: drills to a transaction ID and to a restore point pass
// on a healthy repository, with the heartbeat as proof; made to recover
// elsewhere (the server told another target behind the drill's back), each
// fails, naming where it stopped instead.
func TestDrillTargets(t *testing.T) {
	e := backupEnv(t, true, 0)
	c := e.backupCluster(15, nil)
	e.heartbeatAgent(c)
	testenv.LoadRandomTable(t, c, "data", 10000)
	e.backup(c)
	workload(t, c, 3)
	c.Exec(t, "CREATE TABLE marks (name text)")
	early := c.QueryString(t, "INSERT INTO marks VALUES ('early') RETURNING pg_current_xact_id()")
	c.Exec(t, "SELECT pg_create_restore_point('early-point')")
	workload(t, c, 8) // beats in between: more than one interval plus slack
	xid := c.QueryString(t, "INSERT INTO marks VALUES ('target') RETURNING pg_current_xact_id()")
	c.Exec(t, "SELECT pg_create_restore_point('drill-point')")
	workload(t, c, 3)
	switchAndWait(t, c)

	checksFile := filepath.Join(e.shared, "marks.sql")
	os.WriteFile(checksFile, []byte("SELECT count(*) = 2 FROM marks"), 0o644)
	for _, tc := range []struct {
		name, flag, value, stopped, wrong, found string
	}{
		{"xid", "--target-xid", xid, "after transaction " + xid, "recovery_target_xid=" + early, "transaction " + xid + " is not started (the next ID is"},
		{"name", "--target-name", "drill-point", `at restore point "drill-point"`, "recovery_target_name=early-point", `stopped at restore point "early-point"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.drill(c, tc.flag, tc.value, "--check-sql", checksFile)
			if res.code != 0 || !res.rep.OK || res.rep.Proof != drill.ProofHeartbeat || !strings.Contains(res.rep.Target.Stopped, tc.stopped) {
				t.Fatalf("drill %s %s: exit %d, proof %q, stopped %q: %s\n%+v", tc.flag, tc.value, res.code, res.rep.Proof, res.rep.Target.Stopped, res.stderr, res.rep.Checks)
			}
			for _, name := range []string{"recovery target", "heartbeat", checksFile + ":1"} {
				if ch := check(res.rep, name); ch.Status != drill.Pass {
					t.Errorf("check %s: %+v", name, ch)
				}
			}
			t.Logf("%s: %s; %s", tc.name, check(res.rep, "recovery target").Detail, check(res.rep, "heartbeat").Detail)

			// The server recovers to the earlier point instead.
			res = e.drill(c, tc.flag, tc.value, "--pg-option", tc.wrong)
			if res.code != 6 || res.rep.OK || !strings.Contains(res.rep.Reason, "recovery target") || !strings.Contains(res.rep.Reason, tc.found) {
				t.Fatalf("drill recovered elsewhere (%s): exit %d, reason %q", tc.wrong, res.code, res.rep.Reason)
			}
			t.Logf("%s, recovered elsewhere: %s", tc.name, res.rep.Reason)
		})
	}
}

// TestDrillFailures: a false check, a missing WAL segment, a corrupt pack
// and a missing pack each fail the drill with a reason naming the object,
// and verify finds each of them too.
func TestDrillFailures(t *testing.T) {
	e := backupEnv(t, true, 256<<10)
	c := e.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "data", 20000)
	s := e.backup(c)
	workload(t, c, 4)
	switchAndWait(t, c)
	ctx := t.Context()
	st := e.store()

	// This source writes no heartbeat: a drill cannot prove where it
	// stopped, which fails it unless allowed.
	t.Run("unproven", func(t *testing.T) {
		res := e.drill(c)
		if res.code != 6 || res.rep.OK || res.rep.Proof != drill.ProofNone || !strings.Contains(res.rep.Reason, "not proven") {
			t.Fatalf("drill without a heartbeat: exit %d, proof %q, reason %q", res.code, res.rep.Proof, res.rep.Reason)
		}
		res = e.drill(c, "--allow-unproven")
		if res.code != 0 || res.rep.Proof != drill.ProofNone || check(res.rep, "heartbeat").Status != drill.Skipped {
			t.Fatalf("drill --allow-unproven: exit %d, proof %q: %+v", res.code, res.rep.Proof, res.rep)
		}
	})

	t.Run("check query false", func(t *testing.T) {
		checks := filepath.Join(e.shared, "false.sql")
		os.WriteFile(checks, []byte("SELECT count(*) = 1 FROM data"), 0o644)
		res := e.drill(c, "--check-sql", checks, "--allow-unproven")
		t.Logf("drill: %s", res.stderr)
		if res.code != 6 || res.rep.OK || !strings.Contains(res.rep.Reason, checks+":1") {
			t.Fatalf("drill with a false check: exit %d, reason %q", res.code, res.rep.Reason)
		}
	})

	// The segment holding the backup's start: without it the backup can
	// never become consistent.
	segName := walarchive.ClusterPrefix(s.Cluster)
	var segKey string
	for oi, err := range st.List(ctx, segName, "") {
		if err != nil {
			t.Fatal(err)
		}
		name := oi.Key[strings.LastIndexByte(oi.Key, '/')+1:]
		if len(name) == 24 && strings.HasSuffix(name, fmt.Sprintf("%08X", s.StartLSN/(16<<20)%256)) {
			segKey = oi.Key
		}
	}
	if segKey == "" {
		t.Fatal("no archived segment holds the backup's start")
	}
	segName = segKey[strings.LastIndexByte(segKey, '/')+1:]
	t.Run("WAL segment missing", func(t *testing.T) {
		saved := getObject(t, st, segKey)
		st.Delete(ctx, segKey)
		defer putObject(t, st, segKey, saved)
		res := e.drill(c)
		t.Logf("drill: %s", res.stderr)
		if res.code != 6 || !strings.Contains(res.rep.Reason, segName) {
			t.Fatalf("drill without %s: exit %d, reason %q, stderr %s", segName, res.code, res.rep.Reason, res.stderr)
		}
		p := e.verify(6)
		if !problemNames(p, segName) {
			t.Fatalf("verify does not name %s: %+v", segName, p.Problems)
		}
	})

	packs := e.keys("data/")
	victim := packs[len(packs)/2]
	t.Run("pack corrupt", func(t *testing.T) {
		saved := getObject(t, st, victim)
		bad := bytes.Clone(saved)
		bad[len(bad)/2] ^= 0x40
		putObject(t, st, victim, bad)
		defer putObject(t, st, victim, saved)
		res := e.drill(c)
		t.Logf("drill: %s", res.stderr)
		if res.code != 6 || !strings.Contains(res.rep.Reason, victim) {
			t.Fatalf("drill with %s corrupt: exit %d, reason %q, stderr %s", victim, res.code, res.rep.Reason, res.stderr)
		}
		// A listing shows nothing wrong; reading the data does.
		e.verify(0)
		p := e.verify(6, "--read-data")
		if !problemNames(p, victim) {
			t.Fatalf("verify --read-data does not name %s: %+v", victim, p.Problems)
		}
	})

	t.Run("pack missing", func(t *testing.T) {
		saved := getObject(t, st, victim)
		st.Delete(ctx, victim)
		defer putObject(t, st, victim, saved)
		res := e.drill(c)
		t.Logf("drill: %s", res.stderr)
		if res.code != 6 || !strings.Contains(res.rep.Reason, victim) {
			t.Fatalf("drill without %s: exit %d, reason %q, stderr %s", victim, res.code, res.rep.Reason, res.stderr)
		}
		p := e.verify(6)
		if !problemNames(p, victim) {
			t.Fatalf("verify does not name %s: %+v", victim, p.Problems)
		}
	})
	// Everything put back: all is well again.
	e.verify(0, "--read-data")
	if res := e.drill(c, "--allow-unproven"); res.code != 0 {
		t.Fatalf("drill after repairs: exit %d: %s", res.code, res.rep.Reason)
	}
	if n, _ := e.count(drill.Prefix); n < 7 {
		t.Errorf("%d drill reports stored, want one per drill", n)
	}
}

func getObject(t *testing.T, st interface {
	Get(context.Context, string) (io.ReadCloser, error)
}, key string) []byte {
	t.Helper()
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

func putObject(t *testing.T, st interface {
	Put(context.Context, string, io.ReaderAt, int64) error
}, key string, b []byte) {
	t.Helper()
	if err := st.Put(context.WithoutCancel(t.Context()), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

func (e *restoreEnv) keys(prefix string) []string {
	var out []string
	for oi, err := range e.store().List(e.t.Context(), prefix, "") {
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, oi.Key)
	}
	slices.Sort(out)
	return out
}

// verifyProblem is one problem of tidemark verify --json.
type verifyProblem struct {
	Kind      string   `json:"kind"`
	Object    string   `json:"object"`
	Message   string   `json:"message"`
	Snapshots []string `json:"snapshots"`
	Lost      []struct {
		Timeline uint32    `json:"timeline"`
		From     time.Time `json:"from"`
		To       time.Time `json:"to"`
	} `json:"lost_targets"`
}

// verifyReport is tidemark verify --json.
type verifyReport struct {
	Checked   []string        `json:"checked"`
	Problems  []verifyProblem `json:"problems"`
	Notes     []string        `json:"notes"`
	ReadPacks []string        `json:"read_packs"`
	Subset    *struct {
		Cycle         int     `json:"cycle"`
		From          float64 `json:"from"`
		To            float64 `json:"to"`
		CycleComplete bool    `json:"cycle_complete"`
	} `json:"subset"`
	WAL *struct {
		Cycle         int    `json:"cycle"`
		First         string `json:"first"`
		Last          string `json:"last"`
		Objects       int    `json:"objects"`
		CycleComplete bool   `json:"cycle_complete"`
	} `json:"wal_read"`
	Stats struct {
		Packs           int   `json:"packs"`
		PacksRead       int   `json:"packs_read"`
		WALObjectsRead  int64 `json:"wal_objects_read"`
		WALPagesChecked int64 `json:"wal_pages_checked"`
	} `json:"stats"`
}

// verify runs tidemark verify --json and checks its exit code.
func (e *restoreEnv) verify(wantCode int, args ...string) verifyReport {
	e.t.Helper()
	out, errs, code := e.tidemark(append(append([]string{"verify", "--json"}, e.repoArgs()...), args...)...)
	var rep verifyReport
	if err := fromJSON(out, "verify", &rep); err != nil {
		e.t.Fatalf("verify --json printed %q (stderr %s): %v", out, errs, err)
	}
	if code != wantCode {
		e.t.Fatalf("verify %v: exit %d, want %d: %s\n%+v", args, code, wantCode, errs, rep.Problems)
	}
	return rep
}

func problemNames(rep verifyReport, object string) bool {
	for _, p := range rep.Problems {
		if strings.Contains(p.Object, object) && len(p.Snapshots) > 0 {
			return true
		}
	}
	return false
}

// TestDrillInterrupted: SIGTERM during recovery stops the scratch server,
// removes the scratch directory and still stores a report.
func TestDrillInterrupted(t *testing.T) {
	e := backupEnv(t, false, 0)
	c := e.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "data", 20000)
	e.backup(c)
	workload(t, c, 3)
	switchAndWait(t, c)

	scratch := filepath.Join(e.shared, "scratch")
	os.MkdirAll(scratch, 0o755)
	cmd := exec.Command(e.bin, append([]string{"drill", "--scratch-dir", scratch}, e.repoArgs()...)...)
	cmd.Env = append(os.Environ(), e.env...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the scratch server to run, then interrupt.
	var pidFile string
	waitFor(t, func() bool {
		m, _ := filepath.Glob(filepath.Join(scratch, "tidemark-drill-*", "data", "postmaster.pid"))
		if len(m) > 0 {
			pidFile = m[0]
		}
		return pidFile != ""
	})
	b, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 9 {
		t.Fatalf("drill after SIGTERM: exit %d (%v), want 9 (interrupted)\n%s", code, err, out.String())
	}
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("scratch directory left after SIGTERM: %v", ents)
	}
	if pid > 0 && syscall.Kill(pid, 0) == nil {
		t.Errorf("the scratch server (pid %d) still runs after SIGTERM", pid)
	}
	if n, _ := e.count(drill.Prefix); n != 1 {
		t.Errorf("%d drill reports stored after SIGTERM, want 1", n)
	}
}
