package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestBenchRestore measures restore side by side with pgBackRest 2.45 on
// pgbench scale 100 plus a 10-million-row md5 table, both repositories in
// one MinIO over TLS: a full backup's restore, the restore of the newest of
// a full and three incrementals, a delta restore of a copy where about 1%
// of the pages differ, and the time from restore --target-time to a
// promoted server replaying at least 1 GiB of WAL, with and without
// wal-fetch's prefetch, with the time recovery waited on restore_command.
//
// About 20 minutes on 2 cores. TIDEMARK_BENCH_SCALE, TIDEMARK_BENCH_ROWS
// and TIDEMARK_BENCH_WAL_MIB shrink it for a try-out.
func TestBenchRestore(t *testing.T) {
	Enabled(t)
	scale := backupBenchInt(t, "TIDEMARK_BENCH_SCALE", 100)
	rows := backupBenchInt(t, "TIDEMARK_BENCH_ROWS", 10_000_000)
	walWant := int64(backupBenchInt(t, "TIDEMARK_BENCH_WAL_MIB", 1088)) << 20

	srv := testenv.MinIOTLS(t)
	tm := NewTidemark(t, srv, srv.NewBucket(t))
	// Load with archiving idle (WAL before the first backup is never
	// needed); archive into both repositories from then on.
	c := testenv.NewCluster(t, testenv.PGConfig{Version: 15, Env: srv.Env(), Settings: map[string]string{
		"archive_mode": "on", "archive_command": "true", "max_wal_size": "4GB", "shared_buffers": "256MB",
	}})
	t.Logf("loading pgbench scale %d and %d md5 rows", scale, rows)
	testenv.PGBenchInit(t, c, scale)
	testenv.LoadRandomTable(t, c, "md5", rows)
	c.Exec(t, "CHECKPOINT")
	size := c.QueryString(t, "SELECT sum(pg_database_size(datname)) FROM pg_database")
	br := NewPGBackRest(t, srv, srv.NewBucket(t), c, PGBackRestOptions{Extra: map[string]string{
		"repo1-bundle": "y", "repo1-block": "y", "beta": "y", "archive-timeout": "600",
	}})
	push := fmt.Sprintf("%s wal-push --repo %s --identity %s %%p", tm.Bin, shellQuote(strings.ReplaceAll(tm.URL, "%", "%%")), tm.Identity)
	c.Exec(t, "ALTER SYSTEM SET archive_command = "+restoreSQLLiteral(br.ArchiveCommand()+" && "+push))
	c.Exec(t, "SELECT pg_reload_conf()")
	rb := &restoreBench{t: t, c: c, tm: tm, br: br, shared: testenv.SharedDir(t)}
	rb.switchAndWait()

	tab := &Table{Title: "restore: pgbench scale " + strconv.Itoa(scale) + " + " + strconv.Itoa(rows) + " md5 rows, MinIO over TLS (seconds unless noted)",
		Columns: []string{"tidemark", "pgBackRest"}, Ratios: [][2]int{{0, 1}}}
	n, _ := strconv.ParseInt(size, 10, 64)
	tab.Add("data (MiB)", "%.0f", MiB(n), MiB(n))

	tmB := rb.tidemark("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--full")
	brB := rb.pgbackrest("backup", "--type=full")
	tab.Add("full backup", "%.1f", tmB.Wall.Seconds(), brB.Wall.Seconds())
	tmR, brR, _, _ := rb.restorePair("full", false)
	tab.Add("restore of the full backup", "%.1f", tmR.Wall.Seconds(), brR.Wall.Seconds())
	tab.Add("  peak RSS of the process tree (MiB)", "%.0f", MiB(tmR.PeakTreeRSS), MiB(brR.PeakTreeRSS))
	// restore writes with O_DIRECT by default; through the page cache, as
	// pgBackRest does, it costs more CPU, much more on this VM once the
	// cache grows (fresh pages fault in from the host).
	tmX := rb.restoreOne("full-cached", "--direct-io=false")
	tab.Add("restore of the full backup, --direct-io=false", "%.1f", tmX.Wall.Seconds(), brR.Wall.Seconds())

	for i := range 3 {
		testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Jobs: 2, Transactions: 10000, Builtin: "simple-update"})
		testenv.UpdateRandomRows(t, c, "md5", 0.01)
		// Both tools wait for their stop segment to be archived; let the
		// archiver catch up first so that whichever runs first does not
		// absorb the other's backlog (one archive_command feeds both).
		rb.switchAndWait()
		a := rb.tidemark("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString())
		b := rb.pgbackrest("backup", "--type=incr")
		tab.Add(fmt.Sprintf("incremental backup %d", i+1), "%.1f", a.Wall.Seconds(), b.Wall.Seconds())
	}
	tmI, brI, _, _ := rb.restorePair("incr", false)
	tab.Add("restore after 3 incrementals", "%.1f", tmI.Wall.Seconds(), brI.Wall.Seconds())
	tmIX := rb.restoreOne("incr-cached", "--direct-io=false")
	tab.Add("restore after 3 incrementals, --direct-io=false", "%.1f", tmIX.Wall.Seconds(), brI.Wall.Seconds())
	tmD, brD, tmDC, brDC := rb.restorePair("delta", true)
	tab.Add("delta restore, ~1% of pages differ, copy in the page cache", "%.1f", tmD.Wall.Seconds(), brD.Wall.Seconds())
	tab.Add("  delta / full restore (target <= 0.2)", "%.2f", tmD.Wall.Seconds()/tmI.Wall.Seconds(), brD.Wall.Seconds()/brI.Wall.Seconds())
	tab.Add("  tidemark fetched (MiB)", "%.1f", MiB(rb.lastFetched), math.NaN())
	if tmDC.Wall > 0 {
		tab.Add("delta restore, copy not in the page cache", "%.1f", tmDC.Wall.Seconds(), brDC.Wall.Seconds())
		tab.Add("  delta / full restore (target <= 0.2)", "%.2f", tmDC.Wall.Seconds()/tmI.Wall.Seconds(), brDC.Wall.Seconds()/brI.Wall.Seconds())
	}

	// At least 1 GiB of WAL after the newest backup: updates of a quarter
	// of the md5 table at a time (new tuples and full-page images).
	start := pgLSN(t, c.QueryString(t, "SELECT pg_current_wal_lsn()"))
	for k := 0; pgLSN(t, c.QueryString(t, "SELECT pg_current_wal_lsn()"))-start < walWant; k++ {
		c.Exec(t, "UPDATE md5 SET payload = md5(payload) WHERE id % 4 = $1", k%4)
	}
	walBytes := pgLSN(t, c.QueryString(t, "SELECT pg_current_wal_lsn()")) - start
	c.Exec(t, "CREATE TABLE pitr_mark (at timestamptz)")
	c.Exec(t, "INSERT INTO pitr_mark VALUES (clock_timestamp())")
	target := c.QueryString(t, "SELECT clock_timestamp()")
	c.Exec(t, "INSERT INTO pitr_mark VALUES (clock_timestamp())")
	rb.switchAndWait()
	tab.Add("WAL replayed by PITR (MiB)", "%.0f", MiB(walBytes), math.NaN())
	for _, prefetch := range []bool{true, false} {
		r := rb.pitr(target, prefetch)
		q := rb.pitrPGBackRest(target, prefetch)
		what := map[bool]string{true: "with prefetch (pgBackRest: archive-async)", false: "without prefetch (--no-spool; pgBackRest sync)"}[prefetch]
		tab.Add("PITR to promoted server, "+what, "%.1f", r.total.Seconds(), q.total.Seconds())
		tab.Add("  of which the restore", "%.1f", r.restore.Seconds(), q.restore.Seconds())
		tab.Add("  recovery waited on restore_command", "%.1f", r.wait.Seconds(), q.wait.Seconds())
		tab.Add("  of which in segment calls", "%.1f", r.segWait.Seconds(), q.segWait.Seconds())
		tab.Add("  segment calls", "%.0f", float64(r.segments), float64(q.segments))
		tab.Add("  history probes (not replay: timeline choice)", "%.0f", float64(r.calls-r.segments), float64(q.calls-q.segments))
		tab.Add("  per segment p50 after the first 3 (ms)", "%.0f", Millis(r.p50), Millis(q.p50))
		tab.Add("  per segment p99 after the first 3 (ms)", "%.0f", Millis(r.p99), Millis(q.p99))
		tab.Add("  segments over 50 ms after the first 3 (misses)", "%.0f", float64(r.slow), float64(q.slow))
		tab.Add("  time replay waited in those", "%.1f", r.slowWait.Seconds(), q.slowWait.Seconds())
		if prefetch {
			for _, c := range r.slowCalls {
				t.Logf("tidemark, with prefetch: slow %s", c)
			}
		}
	}
	// The same with the files written through the page cache: the server
	// starts with its data cached.
	rx := rb.pitr(target, true, "--direct-io=false")
	tab.Add("PITR to promoted server, with prefetch, --direct-io=false", "%.1f", rx.total.Seconds(), math.NaN())
	tab.Add("  of which the restore", "%.1f", rx.restore.Seconds(), math.NaN())
	// A drill of the newest backup to the same target: restore, replay,
	// pg_amcheck, checksums of every page, clean-up.
	d, rep := rb.drill(target)
	tab.Add("drill to the PITR target: whole run", "%.1f", d.Wall.Seconds(), math.NaN())
	tab.Add("  time to recover (restore + replay)", "%.1f", rep.RecoverSeconds, math.NaN())
	tab.Add("  of which the restore", "%.1f", rep.RestoreSeconds, math.NaN())
	tab.Add("  of which the replay", "%.1f", rep.ReplaySeconds, math.NaN())
	var out bytes.Buffer
	tab.Print(&out)
	t.Log(out.String())
	fmt.Print(out.String())
}

// drillReport is the part of tidemark drill --json the benchmark reads.
type drillReport struct {
	OK             bool    `json:"ok"`
	Reason         string  `json:"reason"`
	RestoreSeconds float64 `json:"restore_seconds"`
	ReplaySeconds  float64 `json:"replay_seconds"`
	RecoverSeconds float64 `json:"recover_seconds"`
}

// drill runs tidemark drill of the newest backup to target in the shared
// directory and returns its measurement and report.
func (b *restoreBench) drill(target string) (Measurement, drillReport) {
	t := b.t
	cmd := exec.CommandContext(t.Context(), b.tm.Bin, "drill", "--json", "--target-time", target,
		"--scratch-dir", b.shared, "--log-level", "warn")
	cmd.Env = append(os.Environ(), b.tm.Env...)
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	m := Measure(cmd)
	var rep drillReport
	if err := json.Unmarshal(out.Bytes(), &struct {
		Drill any `json:"drill"`
	}{&rep}); err != nil || m.Err != nil || !rep.OK {
		t.Fatalf("tidemark drill: %v (report: %v, %s)\n%s%s", m.Err, err, rep.Reason, out.String(), errs.String())
	}
	return m, rep
}

// restoreBench holds what the restore benchmark's steps share.
type restoreBench struct {
	t           *testing.T
	c           *testenv.Cluster
	tm          *Tidemark
	br          *PGBackRest
	shared      string // directories the server user may use
	lastFetched int64  // bytes the last tidemark restore fetched
	restores    int    // tidemark restores run, naming their profiles
}

func (b *restoreBench) tidemark(args ...string) Measurement {
	b.t.Helper()
	level := "warn"
	if dir := os.Getenv("TIDEMARK_BENCH_CPUPROFILE"); dir != "" && args[0] == "restore" {
		// A profiled run also logs its phases (layout, fetch, sync).
		b.restores++
		args = append(args, "--cpuprofile", filepath.Join(dir, fmt.Sprintf("tidemark-restore-%d.prof", b.restores)))
		level = "info"
	}
	cmd := exec.CommandContext(b.t.Context(), b.tm.Bin, append(args, "--log-level", level)...)
	cmd.Env = append(os.Environ(), b.tm.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	m := Measure(cmd)
	if m.Err != nil {
		b.t.Fatalf("tidemark %s: %v\n%s", strings.Join(args, " "), m.Err, out.String())
	}
	if args[0] == "restore" {
		b.t.Logf("tidemark %s: %s\n%s", args[0], m.Wall.Round(10*time.Millisecond), out.String())
		b.lastFetched = parseFetched(out.String())
	}
	return m
}

func (b *restoreBench) pgbackrest(args ...string) Measurement {
	b.t.Helper()
	cmd := b.br.Command(b.t.Context(), b.c, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	m := Measure(cmd)
	if m.Err != nil {
		b.t.Fatalf("pgbackrest %s: %v\n%s", strings.Join(args, " "), m.Err, out.String())
	}
	return m
}

// restorePair restores the newest backup with each tool into a fresh
// directory and times it. With delta, each first restores a copy, starts
// it, changes about 1% of its pages and stops it; the timed restore is
// then --delta over the copy: first with the copy's files in the page
// cache, as a former primary that just stopped has them; then, where the
// benchmark may drop the caches (root), diverged again and with nothing
// cached, as after a reboot. cold is zero without that.
func (b *restoreBench) restorePair(name string, delta bool) (tm, br, tmCold, brCold Measurement) {
	t := b.t
	tmDir, brDir := filepath.Join(b.shared, name+"-tm"), filepath.Join(b.shared, name+"-br")
	defer os.RemoveAll(tmDir)
	defer os.RemoveAll(brDir)
	os.Mkdir(brDir, 0o700)
	testenv.ChownToServer(t, brDir)
	tmArgs := []string{"restore", "--pgdata", tmDir, "--target", "immediate", "--target-action", "promote"}
	brArgs := []string{"restore", "--pg1-path=" + brDir, "--type=immediate", "--target-action=promote"}
	if !delta {
		settle()
		tm = b.tidemark(tmArgs...)
		settle()
		return tm, b.pgbackrest(brArgs...), tmCold, brCold
	}
	b.tidemark(tmArgs...)
	b.pgbackrest(brArgs...)
	tmArgs = append(tmArgs, "--delta")
	brArgs = append(brArgs, "--delta")
	b.diverge(tmDir)
	b.diverge(brDir)
	syncDisks()
	warmDir(t, tmDir)
	tm = b.tidemark(tmArgs...)
	warmDir(t, brDir)
	br = b.pgbackrest(brArgs...)
	if !canDropCaches() {
		return tm, br, tmCold, brCold
	}
	b.diverge(tmDir)
	b.diverge(brDir)
	dropCaches()
	tmCold = b.tidemark(tmArgs...)
	dropCaches()
	brCold = b.pgbackrest(brArgs...)
	return tm, br, tmCold, brCold
}

// warmDir reads every file under dir, so that the page cache holds it.
func warmDir(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(io.Discard, f)
		return err
	})
	if err != nil {
		t.Fatalf("read %s into the page cache: %v", dir, err)
	}
}

const dropCachesPath = "/proc/sys/vm/drop_caches"

// canDropCaches reports whether the benchmark may empty the page cache.
func canDropCaches() bool {
	f, err := os.OpenFile(dropCachesPath, os.O_WRONLY, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// dropCaches writes dirty pages out and empties the page cache.
func dropCaches() {
	syncDisks()
	_ = os.WriteFile(dropCachesPath, []byte("3\n"), 0)
}

// syncDisks flushes dirty pages before a timed restore, so that neither
// tool pays for the writeback of what ran before it.
func syncDisks() { _ = exec.Command("sync").Run() }

// settle prepares a timed run: dirty pages written out and, where the
// benchmark may (root), the page cache emptied, so that every run starts
// from the same state. On this VM the state of the page cache moved each
// tool's time by up to 2x: pgBackRest's buffered restore took 4.0-9.0 s
// of the same backup, and with 10 GiB cached tidemark's CPU time for the
// same restore doubled.
func settle() {
	if canDropCaches() {
		dropCaches()
		return
	}
	syncDisks()
}

// restoreOne restores the newest backup with tidemark alone into a fresh
// directory, with extra arguments, and times it.
func (b *restoreBench) restoreOne(name string, extra ...string) Measurement {
	dir := filepath.Join(b.shared, name+"-tm")
	defer os.RemoveAll(dir)
	settle()
	return b.tidemark(append([]string{"restore", "--pgdata", dir, "--target", "immediate", "--target-action", "promote"}, extra...)...)
}

// diverge starts a restored directory, changes about 1% of the pages of the
// two big tables (a contiguous 1% of their rows) and stops it.
func (b *restoreBench) diverge(dir string) {
	t := b.t
	c := testenv.AdoptDataDir(t, 15, dir, testenv.PGConfig{Env: b.tm.Env, Settings: map[string]string{"archive_mode": "off"}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	if err := c.WaitRecoveryDone(ctx); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "UPDATE md5 SET payload = md5(payload) WHERE id <= (SELECT max(id) / 100 FROM md5)")
	c.Exec(t, "UPDATE pgbench_accounts SET filler = 'diverged' WHERE aid <= (SELECT max(aid) / 100 FROM pgbench_accounts)")
	c.Exec(t, "CHECKPOINT")
	c.Stop()
}

// switchAndWait completes the current segment and waits until both
// repositories have it.
func (b *restoreBench) switchAndWait() {
	t, c := b.t, b.c
	c.Exec(t, "SELECT pg_logical_emit_message(false, 'bench', 'switch')")
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	deadline := time.Now().Add(15 * time.Minute)
	for {
		last := c.QueryString(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if len(last) >= 24 && last[:24] >= seg {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("segment %s not archived (last %s)", seg, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type pitrResult struct {
	total, wait time.Duration
	restore     time.Duration // of total, the restore command
	p50, p99    time.Duration // of segment calls after the first 3
	calls       int
	segments    int           // calls for a WAL segment (the rest probe .history files)
	segWait     time.Duration // spent in those
	slow        int           // segment calls after the first 3 over 50 ms: the prefetcher had not spooled the file
	slowWait    time.Duration // spent in those
	slowCalls   []string      // which ones, for the log
}

// pitr restores with tidemark to target, starts the server and waits until
// it promoted, with restore_command timed call by call.
func (b *restoreBench) pitr(target string, prefetch bool, extra ...string) pitrResult {
	dir := filepath.Join(b.shared, fmt.Sprintf("pitr-%v-%d", prefetch, len(extra)))
	defer os.RemoveAll(dir)
	defer os.RemoveAll(dir + ".tidemark-spool")
	settle()
	start := time.Now()
	restore := b.tidemark(append([]string{"restore", "--pgdata", dir, "--target-time", target, "--target-action", "promote"}, extra...)...)
	res := b.recoverTimed(dir, start, restore.Wall, func(cmd string) string {
		if !prefetch {
			// No spool: no fast path in front of wal-fetch either.
			if _, rest, ok := strings.Cut(cmd, " || "); ok {
				cmd = rest
			}
			return strings.Replace(cmd, " wal-fetch ", " wal-fetch --no-spool ", 1)
		}
		// The prefetcher logs each download (spool/prefetch.log).
		return strings.Replace(cmd, " wal-fetch ", " wal-fetch --log-level debug ", 1)
	})
	if prefetch && res.slow > 0 {
		if log, err := os.ReadFile(filepath.Join(dir+".tidemark-spool", "prefetch.log")); err == nil {
			b.t.Logf("prefetch.log of a PITR with %d slow calls:\n%s", res.slow, log)
		}
	}
	return res
}

// pitrPGBackRest is pitr with pgBackRest: restore --type=time, and
// archive-get with archive-async (its prefetch into the spool) or without.
func (b *restoreBench) pitrPGBackRest(target string, async bool) pitrResult {
	t := b.t
	dir := filepath.Join(b.shared, fmt.Sprintf("pitr-br-%v", async))
	defer os.RemoveAll(dir)
	defer os.RemoveAll(filepath.Join(b.br.Dir, "spool", "archive"))
	os.Mkdir(dir, 0o700)
	testenv.ChownToServer(t, dir)
	settle()
	start := time.Now()
	restore := b.pgbackrest("restore", "--pg1-path="+dir, "--type=time", "--target="+target, "--target-action=promote")
	return b.recoverTimed(dir, start, restore.Wall, func(cmd string) string {
		if !strings.Contains(cmd, " archive-get ") {
			t.Fatalf("pgBackRest wrote no archive-get restore_command: %s", cmd)
		}
		if async {
			cmd = strings.Replace(cmd, " archive-get ", " --archive-async archive-get ", 1)
		}
		return cmd
	})
}

// recoverTimed wraps the restore_command that a restore wrote into dir
// (changed by edit) in a CommandTimer, whole (a command line may be more
// than one command), starts the server, waits until it promoted, checks
// that it landed on the target and returns the timings, counted from start.
func (b *restoreBench) recoverTimed(dir string, start time.Time, restore time.Duration, edit func(string) string) pitrResult {
	t := b.t
	ct, err := NewCommandTimer(testenv.SharedDir(t))
	if err != nil {
		t.Fatal(err)
	}
	auto := filepath.Join(dir, "postgresql.auto.conf")
	conf, err := os.ReadFile(auto)
	if err != nil {
		t.Fatal(err)
	}
	s, err := wrapRestoreCommand(string(conf), func(cmd string) string {
		return ct.Script + " -c " + shellQuote(edit(cmd)) + " %f %p"
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auto, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	c := testenv.AdoptDataDir(t, 15, dir, testenv.PGConfig{Env: b.tm.Env, Settings: map[string]string{"archive_mode": "off"}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	if err := c.WaitRecoveryDone(ctx); err != nil {
		t.Fatal(err)
	}
	res := pitrResult{total: time.Since(start), restore: restore}
	if n := c.QueryString(t, "SELECT count(*) FROM pitr_mark"); n != "1" {
		t.Errorf("PITR landed with %s marker rows, want 1", n)
	}
	c.Stop()
	calls, err := ct.Calls()
	if err != nil {
		t.Fatal(err)
	}
	// PostgreSQL names the file it asks for RECOVERYXLOG when it is a
	// segment and RECOVERYHISTORY when it is a timeline history file; the
	// latter are probes that choose the timeline (at start and at
	// promotion), which no prefetch can answer: a new .history file may
	// appear in the archive at any time.
	var warm []time.Duration
	for _, call := range calls {
		res.wait += call.Duration()
		if !strings.HasSuffix(call.Arg, "RECOVERYXLOG") {
			continue
		}
		res.segments++
		res.segWait += call.Duration()
		if res.segments <= 3 {
			continue
		}
		warm = append(warm, call.Duration())
		if call.Duration() > 50*time.Millisecond {
			res.slow++
			res.slowWait += call.Duration()
			res.slowCalls = append(res.slowCalls, fmt.Sprintf("segment call %d at +%s: %s, status %d",
				res.segments, call.Start.Sub(start).Round(time.Millisecond), call.Duration().Round(time.Millisecond), call.Status))
		}
	}
	res.calls = len(calls)
	res.p50, res.p99 = Percentile(warm, 50), Percentile(warm, 99)
	return res
}

// wrapRestoreCommand replaces the restore_command setting in conf (the
// text of postgresql.auto.conf) with wrap of its value.
func wrapRestoreCommand(conf string, wrap func(string) string) (string, error) {
	const prefix = "restore_command = '"
	i := strings.Index(conf, prefix)
	if i < 0 {
		return "", fmt.Errorf("no restore_command in:\n%s", conf)
	}
	// The value: up to the first quote that is not doubled, with the
	// configuration file's backslash escapes.
	var v strings.Builder
	j := i + len(prefix)
	for ; j < len(conf); j++ {
		c := conf[j]
		if c == '\\' && j+1 < len(conf) {
			j++
			v.WriteByte(conf[j])
			continue
		}
		if c == '\'' {
			if j+1 < len(conf) && conf[j+1] == '\'' {
				v.WriteByte('\'')
				j++
				continue
			}
			break
		}
		v.WriteByte(c)
	}
	if j >= len(conf) {
		return "", fmt.Errorf("unterminated restore_command in:\n%s", conf)
	}
	w := strings.ReplaceAll(strings.ReplaceAll(wrap(v.String()), `\`, `\\`), "'", "''")
	return conf[:i] + prefix + w + "'" + conf[j+1:], nil
}

// parseFetched reads "fetched N MiB" from restore's output, in bytes.
func parseFetched(out string) int64 {
	i := strings.Index(out, "fetched ")
	if i < 0 {
		return 0
	}
	f := strings.Fields(out[i+len("fetched "):])
	if len(f) < 2 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	mult := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[strings.TrimSuffix(f[1], ";")]
	return int64(v * mult)
}

func pgLSN(t *testing.T, s string) int64 {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || errors.Join(err1, err2) != nil {
		t.Fatalf("LSN %q", s)
	}
	return int64(h<<32 | l)
}

// restoreSQLLiteral quotes a string as an SQL literal.
func restoreSQLLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
