package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// The soak runs everything at once for a long while and then checks that
// nothing was lost: pgbench writes, the agent archives and writes the
// heartbeat, a ticker commits a numbered row every 100 ms, backups run every
// few minutes (some killed with SIGKILL part way), expire and gc run in a
// loop (gc with a short grace, so that it deletes while backups run), and,
// asked, wal-receive streams. Then: verify --read-data finds no problem,
// every kept snapshot restores and passes a drill, and point-in-time
// recovery to random times inside the retention window lands exactly: the
// ticks committed at or before the target are there, none after it.
//
// Not in CI: `make soak` runs it (TIDEMARK_SOAK=1), with the randomized
// incremental-equivalence test over many seeds (scripts/soak.sh).
// TIDEMARK_SOAK_DURATION (a Go duration, default 30m; `make soak SOAK=5m`
// proves the machinery in a short run), TIDEMARK_SOAK_PITR (default 20) and
// TIDEMARK_SOAK_SEED set its size and randomness; the pauses between
// backups and between maintenance runs shrink with a duration under ten
// minutes, so that a short run still takes several backups, kills one and
// runs gc. Where this build has `tidemark wal-receive` (issue 18), it
// streams beside the archiver throughout (TIDEMARK_SOAK_WAL_RECEIVE=0 turns
// it off, TIDEMARK_SOAK_WAL_RECEIVE_ARGS adds arguments); the report says
// whether it ran.
func TestSoak(t *testing.T) {
	if os.Getenv("TIDEMARK_SOAK") != "1" {
		t.Skip("soak: set TIDEMARK_SOAK=1 (make soak) to run it")
	}
	dur := 30 * time.Minute
	if v := os.Getenv("TIDEMARK_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			t.Fatalf("TIDEMARK_SOAK_DURATION=%q: want a duration of at least 1m, e.g. 30m", v)
		}
		dur = d
	}
	pitrs := soakInt(t, "TIDEMARK_SOAK_PITR", 20)
	seed := uint64(soakInt(t, "TIDEMARK_SOAK_SEED", int(time.Now().UnixNano()%1_000_000)))
	t.Logf("soak: %s, %d PITR checks, seed %d (TIDEMARK_SOAK_SEED reproduces the schedule)", dur, pitrs, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))

	e := backupEnv(t, true, 4<<20)
	c := e.backupCluster(17, map[string]string{
		"summarize_wal": "on", "track_commit_timestamp": "on",
		"checkpoint_timeout": "1min", "max_wal_size": "256MB",
	})
	e.heartbeatAgent(c)
	testenv.PGBenchInit(t, c, 10)
	c.Exec(t, "CREATE TABLE ticks (seq bigint PRIMARY KEY, at timestamptz NOT NULL)")
	e.backup(c, "--full")
	st := &soakStats{backups: 1, walReceive: "off"}

	ctx, stop := context.WithTimeout(t.Context(), dur)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
		stop()
	}
	wg.Go(func() { soakPGBench(ctx, c, dur, fail) })
	wg.Go(func() { soakTicks(ctx, c, st, fail) })
	wg.Go(func() { e.soakBackups(ctx, c, rng, dur, st, fail) })
	wg.Go(func() { e.soakMaintenance(ctx, dur, st, fail) })
	if os.Getenv("TIDEMARK_SOAK_WAL_RECEIVE") != "0" {
		dir := filepath.Join(e.shared, "wal-receive")
		wg.Go(func() { e.soakWALReceive(ctx, c, dir, st, fail) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Settle: a last backup, everything archived.
	e.backup(c)
	st.backups++
	switchAndWait(t, c)
	sum := e.verify(0, "--read-data")
	t.Logf("verify --read-data: %d packs and %d WAL objects read, no problem", sum.Stats.PacksRead, sum.Stats.WALObjectsRead)

	// Every kept snapshot restores and passes a drill.
	snaps := e.snapshots()
	for _, s := range snaps {
		// A loaded machine may delay a beat by seconds: the soak is about
		// losses, the drill tests hold the heartbeat to 5 s.
		res := e.drill(c, "--backup", s.ID, "--target", "immediate", "--heartbeat-slack", "30s")
		if res.code != 0 || !res.rep.OK || res.rep.Proof != "heartbeat" {
			t.Fatalf("drill of kept snapshot %s: exit %d, proof %q: %s\n%+v", s.ID, res.code, res.rep.Proof, res.rep.Reason, res.rep.Checks)
		}
		st.drills++
	}

	// PITR to random times inside the window: from the oldest kept
	// snapshot's stop, or the start of the window expire left (it keeps
	// only the WAL a snapshot needs to become consistent for snapshots kept
	// by --keep-last alone), to the last tick.
	type tick struct {
		seq int64
		at  time.Time // commit time
	}
	var ticks []tick
	rows, err := c.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	r, err := rows.Query(t.Context(), "SELECT seq, pg_xact_commit_timestamp(xmin) FROM ticks ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var k tick
		if err := r.Scan(&k.seq, &k.at); err != nil {
			t.Fatal(err)
		}
		ticks = append(ticks, k)
	}
	r.Close()
	rows.Close(t.Context())
	from, to := snaps[0].StopTime, ticks[len(ticks)-1].at
	if st.pitrFrom.After(from) {
		from = st.pitrFrom
	}
	from = from.Add(time.Second)
	t.Logf("PITR window: %s to %s", from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano))
	if !to.After(from) {
		t.Fatalf("no window to recover in: oldest kept snapshot stopped %s, last tick %s", snaps[0].StopTime, to)
	}
	for i := range pitrs {
		target := from.Add(time.Duration(rng.Int64N(int64(to.Sub(from))))).Truncate(time.Microsecond)
		var want tick
		n := 0
		for _, k := range ticks {
			if !k.at.After(target) {
				want, n = k, n+1
			}
		}
		dir := e.target(fmt.Sprintf("pitr-%d", i))
		e.restore(dir, "--target-time", target.UTC().Format(time.RFC3339Nano), "--target-action", "promote")
		p := e.start(17, dir, false)
		waitRecovered(t, p)
		var gotN, gotMax int64
		p.QueryRow(t, "SELECT count(*), coalesce(max(seq), 0) FROM ticks").Scan(&gotN, &gotMax)
		p.Stop()
		os.RemoveAll(dir)
		if gotN != int64(n) || gotMax != want.seq {
			t.Fatalf("PITR to %s: %d ticks up to %d, want %d up to %d (the last committed at %s)",
				target.Format(time.RFC3339Nano), gotN, gotMax, n, want.seq, want.at.Format(time.RFC3339Nano))
		}
		st.pitr++
	}

	_, packBytes := e.count("data/")
	report := fmt.Sprintf("soak of %s (seed %d): %d backups (%d killed with SIGKILL, %d refused while another ran), "+
		"%d expire runs (%d snapshots expired, %d refused while a backup ran), %d gc runs deleting %d packs (%s), "+
		"%d ticks committed, %d kept snapshots each restored and drilled, %d PITR checks exact, wal-receive %s; "+
		"verify --read-data clean (%d packs, %d WAL objects); %d data pack bytes left; losses: 0",
		dur, seed, st.backups, st.kills, st.backupsLocked, st.expires, st.expired, st.expiresLocked, st.gcs, st.gcDeleted,
		formatBytes(st.gcDeletedBytes), len(ticks), st.drills, st.pitr, st.walReceive, sum.Stats.PacksRead, sum.Stats.WALObjectsRead, packBytes)
	t.Log(report)
	fmt.Println(report)
}

type soakStats struct {
	mu                              sync.Mutex
	backups, kills, backupsLocked   int
	expires, expired, expiresLocked int
	gcs, gcDeleted                  int
	gcDeletedBytes                  int64
	ticks                           int64
	drills, pitr                    int
	pitrFrom                        time.Time // expire keeps WAL for recovery to any moment after it
	walReceive                      string
}

func (s *soakStats) add(f func(*soakStats)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

func soakInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a number", name, v)
	}
	return n
}

func formatBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// soakPGBench writes with pgbench at a steady rate until ctx ends.
func soakPGBench(ctx context.Context, c *testenv.Cluster, dur time.Duration, fail func(error)) {
	secs := int(dur/time.Second) + 60
	cmd := exec.CommandContext(ctx, c.ClientBin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres",
		"-n", "-b", "simple-update", "-c", "2", "-j", "2", "-R", "100", "-T", strconv.Itoa(secs), "postgres")
	cmd.Env = c.ClientEnv()
	out, err := cmd.CombinedOutput()
	if err != nil && ctx.Err() == nil {
		fail(fmt.Errorf("pgbench: %v\n%s", err, out))
	}
}

// soakTicks commits one numbered row every 100 ms until ctx ends.
func soakTicks(ctx context.Context, c *testenv.Cluster, st *soakStats, fail func(error)) {
	conn, err := c.Conn(context.WithoutCancel(ctx))
	if err != nil {
		fail(err)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	for seq := int64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		if _, err := conn.Exec(context.WithoutCancel(ctx), "INSERT INTO ticks VALUES ($1, clock_timestamp())", seq); err != nil {
			fail(fmt.Errorf("tick %d: %w", seq, err))
			return
		}
		st.add(func(s *soakStats) { s.ticks = seq })
	}
}

// soakBackups takes a backup every one to four minutes (every 30 s to 2
// minutes in a 5-minute soak), every fourth one full; the second and about
// a third of the others are killed with SIGKILL after a random moment.
func (e *restoreEnv) soakBackups(ctx context.Context, c *testenv.Cluster, rng *rand.Rand, dur time.Duration, st *soakStats, fail func(error)) {
	pause := min(time.Minute, max(20*time.Second, dur/10))
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause + time.Duration(rng.Int64N(int64(3*pause)))):
		}
		args := append([]string{"backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--log-level", "warn"}, e.repoArgs()...)
		if i%4 == 0 {
			args = append(args, "--full")
		}
		kill := rng.IntN(3) == 0 || i == 2
		killAfter := time.Duration(200+rng.IntN(2500)) * time.Millisecond
		cmd := exec.Command(e.bin, args...)
		cmd.Env = append(os.Environ(), e.env...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			fail(err)
			return
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		killed := false
		if kill {
			select {
			case err = <-done:
			case <-time.After(killAfter):
				killed = cmd.Process.Signal(syscall.SIGKILL) == nil
				err = <-done
			}
		} else {
			err = <-done
		}
		var ee *exec.ExitError
		switch {
		case killed && errors.As(err, &ee) && !ee.Exited():
			st.add(func(s *soakStats) { s.kills++ })
		case err == nil:
			st.add(func(s *soakStats) { s.backups++ })
		case errors.As(err, &ee) && ee.ExitCode() == 5:
			// expire held the cluster's backup lease.
			st.add(func(s *soakStats) { s.backupsLocked++ })
		default:
			fail(fmt.Errorf("backup %d: %v\n%s", i, err, out.String()))
			return
		}
	}
}

// soakMaintenance runs expire and gc every 90 s (more often in a soak
// under twelve minutes), as the maintenance timer does daily: a window of a
// third of the soak and the last 3 (the last one under ten minutes), gc
// with a grace of two minutes (a sixth of a shorter soak) so that it
// deletes what expire and killed backups left.
func (e *restoreEnv) soakMaintenance(ctx context.Context, dur time.Duration, st *soakStats, fail func(error)) {
	within := fmt.Sprintf("%dm", max(1, int(dur/time.Minute)/3))
	// A short soak takes a handful of backups: keeping the last 3 would
	// expire none, and gc would have nothing to delete but what killed
	// backups left.
	last := "3"
	if dur < 10*time.Minute {
		last = "1"
	}
	every := min(90*time.Second, max(20*time.Second, dur/8))
	grace := min(2*time.Minute, max(30*time.Second, dur/6)).String()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		out, code := e.soakRun(ctx, append([]string{"expire", "--json", "--keep-within", within, "--keep-last", last}, e.repoArgs()...)...)
		switch code {
		case 0:
			var res struct {
				Clusters []struct {
					Snapshots []struct {
						Keep     bool      `json:"keep"`
						PITR     bool      `json:"pitr"`
						StopTime time.Time `json:"stop_time"`
					} `json:"snapshots"`
				} `json:"clusters"`
			}
			if err := fromJSON(out, "expire", &res); err != nil {
				fail(fmt.Errorf("expire --json printed %q: %v", out, err))
				return
			}
			n := 0
			var pitrFrom time.Time // the oldest stop from which recovery to any later moment stays possible
			for _, cl := range res.Clusters {
				for _, s := range cl.Snapshots {
					if !s.Keep {
						n++
					}
					if s.Keep && s.PITR && (pitrFrom.IsZero() || s.StopTime.Before(pitrFrom)) {
						pitrFrom = s.StopTime
					}
				}
			}
			st.add(func(s *soakStats) {
				s.expires++
				s.expired += n
				if pitrFrom.After(s.pitrFrom) {
					s.pitrFrom = pitrFrom
				}
			})
		case 5:
			st.add(func(s *soakStats) { s.expiresLocked++ })
		case -1:
			return // the soak ended
		default:
			fail(fmt.Errorf("expire: exit %d: %s", code, out))
			return
		}
		out, code = e.soakRun(ctx, append([]string{"gc", "--json", "--grace", grace}, e.repoArgs()...)...)
		switch code {
		case 0:
		case -1:
			return
		default:
			fail(fmt.Errorf("gc: exit %d: %s", code, out))
			return
		}
		var res struct {
			Deleted struct {
				Packs int   `json:"packs"`
				Bytes int64 `json:"bytes"`
			} `json:"deleted"`
		}
		if err := fromJSON(out, "gc", &res); err != nil {
			fail(fmt.Errorf("gc --json printed %q: %v", out, err))
			return
		}
		st.add(func(s *soakStats) { s.gcs++; s.gcDeleted += res.Deleted.Packs; s.gcDeletedBytes += res.Deleted.Bytes })
	}
}

// soakRun runs tidemark to the end and returns
// its stdout (and stderr after a failure) and exit code, -1 for a failure
// once ctx has ended (the soak is over). Unlike e.tidemark
// it is safe outside the test's goroutine.
func (e *restoreEnv) soakRun(ctx context.Context, args ...string) (string, int) {
	cmd := exec.Command(e.bin, append(args, "--log-level", "warn")...)
	cmd.Env = append(os.Environ(), e.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case ctx.Err() != nil:
		return out.String(), -1
	case errors.As(err, &ee) && ee.Exited():
		return out.String() + errb.String(), ee.ExitCode()
	}
	return fmt.Sprintf("%v: %s", err, errb.String()), 1
}

// soakWALReceive streams WAL with tidemark wal-receive where this build has
// it (the flags of branch receive, issue 18), from its own slot into its
// directory dir and the repository, until ctx ends.
func (e *restoreEnv) soakWALReceive(ctx context.Context, c *testenv.Cluster, dir string, st *soakStats, fail func(error)) {
	if out, err := exec.Command(e.bin, "wal-receive", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--dir") {
		st.add(func(s *soakStats) { s.walReceive = "not in this build" })
		return
	}
	args := append([]string{"wal-receive", "--pg-conn", c.ConnString(), "--dir", dir, "--create-slot"}, e.repoArgs()...)
	args = append(args, strings.Fields(os.Getenv("TIDEMARK_SOAK_WAL_RECEIVE_ARGS"))...)
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), e.env...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	out, err := cmd.CombinedOutput()
	if ctx.Err() == nil {
		fail(fmt.Errorf("wal-receive exited during the soak: %v\n%s", err, out))
		return
	}
	st.add(func(s *soakStats) { s.walReceive = "streamed throughout" })
}
