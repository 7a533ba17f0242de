package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
// of the pages differ (the copy in the page cache, and cold), and the time
// from restore --target-time to a promoted server replaying at least 1 GiB
// of WAL, with and without wal-fetch's prefetch. Every timed step runs as
// alternating pairs (tidemark, pgBackRest, tidemark, ...; Pairs), the page
// cache emptied before each run; the table gives each tool's median and
// range, the ratio of the medians, and CPU seconds per GiB of the tool's
// process tree and of MinIO (measure.go says how they are counted).
//
// About 30 minutes on 2 cores with 3 pairs. TIDEMARK_BENCH_SCALE,
// TIDEMARK_BENCH_ROWS, TIDEMARK_BENCH_WAL_MIB and TIDEMARK_BENCH_PAIRS
// shrink it for a try-out; TIDEMARK_BENCH_MAX_LOAD waits for a quiet
// machine before each step.
func TestBenchRestore(t *testing.T) {
	Enabled(t)
	scale := backupBenchInt(t, "TIDEMARK_BENCH_SCALE", 100)
	rows := backupBenchInt(t, "TIDEMARK_BENCH_ROWS", 10_000_000)
	walWant := int64(backupBenchInt(t, "TIDEMARK_BENCH_WAL_MIB", 1088)) << 20
	pairs := Pairs(t)

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
	// As TestBenchBackup does: without it, the autovacuum that ten million
	// inserts trigger swept the md5 table while the backups ran, and the
	// replay of its changes left the restored copies differing from the
	// snapshot in most of that table's pages, so that a delta restore of
	// the same benchmark fetched 132 MiB in one run and 2.3 GiB in another.
	c.Exec(t, "VACUUM ANALYZE")
	c.Exec(t, "CHECKPOINT")
	size, _ := strconv.ParseInt(c.QueryString(t, "SELECT sum(pg_database_size(datname)) FROM pg_database"), 10, 64)
	br := NewPGBackRest(t, srv, srv.NewBucket(t), c, PGBackRestOptions{Extra: map[string]string{
		"repo1-bundle": "y", "repo1-block": "y", "beta": "y", "archive-timeout": "600",
	}})
	push := fmt.Sprintf("%s wal-push --repo %s --identity %s %%p", tm.Bin, shellQuote(strings.ReplaceAll(tm.URL, "%", "%%")), tm.Identity)
	c.Exec(t, "ALTER SYSTEM SET archive_command = "+restoreSQLLiteral(br.ArchiveCommand()+" && "+push))
	c.Exec(t, "SELECT pg_reload_conf()")
	rb := &restoreBench{t: t, c: c, tm: tm, br: br, shared: testenv.SharedDir(t), meter: NewMeter(t, srv)}
	rb.switchAndWait()

	gib := GiB(size)
	tab := &PairTable{Title: fmt.Sprintf("restore: PostgreSQL 15, pgbench scale %d + %d md5 rows (%.2f GiB), MinIO over TLS, "+
		"%d alternating pairs per step, page cache emptied before each run; pgBackRest 2.45 zst, process-max 2",
		scale, rows, gib, pairs), Columns: [2]string{"tidemark", "pgBackRest"}}

	tmB := rb.tidemark("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString(), "--full")
	brB := rb.pgbackrest("backup", "--type=full")
	tab.Step("full backup (one run; TestBenchBackup times it in pairs)")
	tab.AddRuns([]Measurement{tmB}, []Measurement{brB}, gib, "", "")

	_, _ = rb.restoreStep(tab, "full", "restore of the full backup", pairs, gib)

	var tmInc, brInc []Measurement
	for range 3 {
		testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Jobs: 2, Transactions: 10000, Builtin: "simple-update"})
		testenv.UpdateRandomRows(t, c, "md5", 0.01)
		// Both tools wait for their stop segment to be archived; let the
		// archiver catch up first so that whichever runs first does not
		// absorb the other's backlog (one archive_command feeds both).
		rb.switchAndWait()
		settle()
		tmInc = append(tmInc, rb.tidemark("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()))
		settle()
		brInc = append(brInc, rb.pgbackrest("backup", "--type=incr"))
	}
	tab.Step("incremental backups 1-3 (each after 20000 pgbench updates and 1% of md5 rows)")
	tab.AddRuns(tmInc, brInc, gib, "", "")

	tmI, brI := rb.restoreStep(tab, "incr", "restore after 3 incrementals", pairs, gib)

	waitQuiet(t)
	dw, dc, coldRead, differ, pages := rb.deltaPairs(pairs)
	fullWall := func(ms []Measurement) Series {
		return Series{Of(ms, Wall).Median()}
	}
	tab.Step(fmt.Sprintf("delta restore, %d of %d pages of base/ differ (%.1f%%), copy in the page cache", differ, pages, 100*float64(differ)/float64(max(pages, 1))))
	tab.AddRuns(dw[0], dw[1], gib, "", "")
	tab.Add("delta / own full restore (medians)", "%.2f", Series{Of(dw[0], Wall).Median() / fullWall(tmI)[0]},
		Series{Of(dw[1], Wall).Median() / fullWall(brI)[0]}, "tidemark <= 0.20")
	tab.Add("tidemark fetched, MiB", "%.1f", Of(dw[0], func(m Measurement) float64 { return MiB(m.Fetched) }), nil, "")
	if len(dc[0]) > 0 {
		tab.Step("delta restore, copy not in the page cache")
		tab.AddRuns(dc[0], dc[1], gib, "", "")
		tab.Add("delta / own full restore (medians)", "%.2f", Series{Of(dc[0], Wall).Median() / fullWall(tmI)[0]},
			Series{Of(dc[1], Wall).Median() / fullWall(brI)[0]}, "tidemark <= 0.20")
		tab.Add("floor: reading the copy alone, cold, s", "%.2f", Series(coldRead), nil, "")
		tab.Add("floor / tidemark's own full restore (medians)", "%.2f", Series{Series(coldRead).Median() / fullWall(tmI)[0]}, nil, "")
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
	pitrGiB := gib + GiB(walBytes)
	for _, prefetch := range []bool{true, false} {
		waitQuiet(t)
		var rs, qs []pitrResult
		tmP, brP := Alternate(pairs, func(int) Measurement {
			r := rb.pitr(target, prefetch)
			rs = append(rs, r)
			return r.m
		}, func(int) Measurement {
			q := rb.pitrPGBackRest(target, prefetch)
			qs = append(qs, q)
			return q.m
		})
		what := map[bool]string{true: "with prefetch (pgBackRest: archive-async)", false: "without prefetch (--no-spool; pgBackRest sync)"}[prefetch]
		tab.Step(fmt.Sprintf("PITR to a promoted server replaying %.0f MiB of WAL, %s; CPU per GiB of data + WAL", MiB(walBytes), what))
		tab.AddRuns(tmP, brP, pitrGiB, "", "")
		pick := func(rs []pitrResult, f func(pitrResult) float64) Series {
			s := make(Series, len(rs))
			for i, r := range rs {
				s[i] = f(r)
			}
			return s
		}
		sec := func(d func(pitrResult) time.Duration) func(pitrResult) float64 {
			return func(r pitrResult) float64 { return d(r).Seconds() }
		}
		row := func(name, format string, f func(pitrResult) float64, target string) {
			tab.Add(name, format, pick(rs, f), pick(qs, f), target)
		}
		row("of which the restore, s", "%.1f", sec(func(r pitrResult) time.Duration { return r.restore }), "")
		row("recovery waited on restore_command, s", "%.1f", sec(func(r pitrResult) time.Duration { return r.wait }), "")
		row("  of which in segment calls, s", "%.1f", sec(func(r pitrResult) time.Duration { return r.segWait }), "")
		row("segment calls", "%.0f", func(r pitrResult) float64 { return float64(r.segments) }, "")
		row("history probes (timeline choice, not replay)", "%.0f", func(r pitrResult) float64 { return float64(r.calls - r.segments) }, "")
		row("per segment p50 after the first 3, ms", "%.0f", func(r pitrResult) float64 { return Millis(r.p50) }, "")
		row("per segment p99 after the first 3, ms", "%.0f", func(r pitrResult) float64 { return Millis(r.p99) }, "")
		row("segments over 50 ms after the first 3 (misses)", "%.0f", func(r pitrResult) float64 { return float64(r.slow) }, "")
		row("time replay waited in those, s", "%.1f", sec(func(r pitrResult) time.Duration { return r.slowWait }), "")
		if prefetch {
			for _, r := range rs {
				for _, c := range r.slowCalls {
					t.Logf("tidemark, with prefetch: slow %s", c)
				}
			}
		}
	}
	// The same with the files written through the page cache: the server
	// starts with its data cached.
	rx, _ := Alternate(pairs, func(int) Measurement { return rb.pitr(target, true, "--direct-io=false").m }, nil)
	tab.Step("PITR with prefetch, tidemark --direct-io=false")
	tab.AddRuns(rx, nil, pitrGiB, "", "")
	// A drill of the newest backup to the same target: restore, replay,
	// pg_amcheck, checksums of every page, clean-up.
	d, rep := rb.drill(target)
	tab.Step("drill to the PITR target (one run)")
	tab.Add("whole run, s", "%.1f", Series{d.Wall.Seconds()}, nil, "")
	tab.Add("time to recover (restore + replay), s", "%.1f", Series{rep.RecoverSeconds}, nil, "")
	tab.Add("  of which the restore, s", "%.1f", Series{rep.RestoreSeconds}, nil, "")
	tab.Add("  of which the replay, s", "%.1f", Series{rep.ReplaySeconds}, nil, "")
	Report(t, tab.Print)
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
	// --allow-unproven: the benchmark times the recovery; its source writes
	// no heartbeat.
	cmd := exec.CommandContext(t.Context(), b.tm.Bin, "drill", "--json", "--target-time", target, "--allow-unproven",
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
	t        *testing.T
	c        *testenv.Cluster
	tm       *Tidemark
	br       *PGBackRest
	shared   string // directories the server user may use
	meter    *Meter
	restores int // tidemark restores run, naming their profiles
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
	m := b.meter.Measure(cmd)
	if m.Err != nil {
		b.t.Fatalf("tidemark %s: %v\n%s", strings.Join(args, " "), m.Err, out.String())
	}
	if args[0] == "restore" {
		b.t.Logf("tidemark %s: %s, CPU %s + store %s\n%s", args[0], m.Wall.Round(10*time.Millisecond),
			m.CPU.Round(10*time.Millisecond), m.StoreCPU.Round(10*time.Millisecond), out.String())
		m.Fetched = parseFetched(out.String())
	}
	return m
}

func (b *restoreBench) pgbackrest(args ...string) Measurement {
	b.t.Helper()
	cmd := b.br.Command(b.t.Context(), b.c, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	m := b.meter.Measure(cmd)
	if m.Err != nil {
		b.t.Fatalf("pgbackrest %s: %v\n%s", strings.Join(args, " "), m.Err, out.String())
	}
	if args[0] == "restore" {
		b.t.Logf("pgbackrest %s: %s, CPU %s + store %s", args[0], m.Wall.Round(10*time.Millisecond),
			m.CPU.Round(10*time.Millisecond), m.StoreCPU.Round(10*time.Millisecond))
	}
	return m
}

// restoreStep times restores of the newest backup in pairs, then
// tidemark's with --direct-io=false alone, and adds both to tab. The
// latter writes through the page cache, as pgBackRest does: on this VM it
// costs more CPU, much more once the cache grows (fresh pages fault in
// from the host).
func (b *restoreBench) restoreStep(tab *PairTable, name, title string, pairs int, gib float64) (tm, br []Measurement) {
	waitQuiet(b.t)
	tm, br = b.restorePairs(name, pairs)
	tab.Step(title)
	tab.AddRuns(tm, br, gib, "<= 0.50x", "<= 0.50x")
	cached, _ := Alternate(pairs, func(int) Measurement { return b.restoreOne(name+"-cached", "--direct-io=false") }, nil)
	tab.Step(title + ", tidemark --direct-io=false")
	tab.AddRuns(cached, br, gib, "", "")
	return tm, br
}

// restoreArgs are each tool's arguments to restore the newest backup into
// dir, to the end of the backup, promoting.
func (b *restoreBench) restoreArgs(dir string) (tm, br []string) {
	return []string{"restore", "--pgdata", dir, "--target", "immediate", "--target-action", "promote"},
		[]string{"restore", "--pg1-path=" + dir, "--type=immediate", "--target-action=promote"}
}

// restorePairs restores the newest backup with each tool in turn, n times
// each, into a fresh directory, the page cache emptied before each.
func (b *restoreBench) restorePairs(name string, n int) (tm, br []Measurement) {
	t := b.t
	tmDir, brDir := filepath.Join(b.shared, name+"-tm"), filepath.Join(b.shared, name+"-br")
	tmArgs, _ := b.restoreArgs(tmDir)
	_, brArgs := b.restoreArgs(brDir)
	return Alternate(n, func(int) Measurement {
		os.RemoveAll(tmDir)
		settle()
		m := b.tidemark(tmArgs...)
		os.RemoveAll(tmDir)
		return m
	}, func(int) Measurement {
		os.RemoveAll(brDir)
		os.Mkdir(brDir, 0o700)
		testenv.ChownToServer(t, brDir)
		settle()
		m := b.pgbackrest(brArgs...)
		os.RemoveAll(brDir)
		return m
	})
}

// deltaPairs times delta restores. Each tool first restores a copy; then,
// n times each in turn, the copy is started, about 1% of its pages are
// changed, it is stopped, and the timed restore is --delta over it: first
// with the copy's files in the page cache (and nothing else), as a former
// primary that just stopped has them; then, where the benchmark may drop
// the caches (root), with nothing cached, as after a reboot (cold is empty
// without that).
func (b *restoreBench) deltaPairs(n int) (warm, cold [2][]Measurement, coldRead []float64, differ, pages int64) {
	t := b.t
	tmDir, brDir := filepath.Join(b.shared, "delta-tm"), filepath.Join(b.shared, "delta-br")
	defer os.RemoveAll(tmDir)
	defer os.RemoveAll(brDir)
	os.Mkdir(brDir, 0o700)
	testenv.ChownToServer(t, brDir)
	tmArgs, _ := b.restoreArgs(tmDir)
	_, brArgs := b.restoreArgs(brDir)
	b.tidemark(tmArgs...)
	b.pgbackrest(brArgs...)
	tmArgs = append(tmArgs, "--delta")
	brArgs = append(brArgs, "--delta")
	// How much the copy differs: diverged once against a fresh restore of
	// the same snapshot, page by page, then put back untimed.
	refDir := filepath.Join(b.shared, "delta-ref")
	refArgs, _ := b.restoreArgs(refDir)
	b.tidemark(refArgs...)
	b.diverge(tmDir)
	differ, pages = diffPages(t, refDir, tmDir)
	os.RemoveAll(refDir)
	b.tidemark(tmArgs...)
	run := func(dir string, cached bool, restore func() Measurement) Measurement {
		b.diverge(dir)
		settle()
		if cached {
			warmDir(t, dir)
		}
		return restore()
	}
	tmRun := func() Measurement { return b.tidemark(tmArgs...) }
	brRun := func() Measurement { return b.pgbackrest(brArgs...) }
	warm[0], warm[1] = Alternate(n, func(int) Measurement { return run(tmDir, true, tmRun) },
		func(int) Measurement { return run(brDir, true, brRun) })
	if !canDropCaches() {
		return warm, cold, nil, differ, pages
	}
	cold[0], cold[1] = Alternate(n, func(int) Measurement { return run(tmDir, false, tmRun) },
		func(int) Measurement { return run(brDir, false, brRun) })
	// The floor of a delta restore from a cold cache, which must read
	// every byte of the copy to compare it: the read alone.
	for range n {
		settle()
		start := time.Now()
		warmDir(t, tmDir)
		coldRead = append(coldRead, time.Since(start).Seconds())
	}
	return warm, cold, coldRead, differ, pages
}

// diffPages compares the files under base/ of two data directories in
// 8 KiB pages and returns how many pages differ (a page past the end of
// one file differs) and how many pages the larger of each pair holds.
func diffPages(t *testing.T, a, b string) (differ, pages int64) {
	t.Helper()
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	err := filepath.WalkDir(filepath.Join(a, "base"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(a, p)
		if err != nil {
			return err
		}
		fa, err := os.Open(p)
		if err != nil {
			return err
		}
		defer fa.Close()
		fb, err := os.Open(filepath.Join(b, rel))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if fb != nil {
			defer fb.Close()
		}
		for off := int64(0); ; off += int64(len(bufA)) {
			na, err := fa.ReadAt(bufA, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			nb := 0
			if fb != nil {
				if nb, err = fb.ReadAt(bufB, off); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
			}
			if na == 0 && nb == 0 {
				return nil
			}
			for q := 0; q < max(na, nb); q += 8192 {
				pa, pb := bufA[min(q, na):min(q+8192, na)], bufB[min(q, nb):min(q+8192, nb)]
				pages++
				if !bytes.Equal(pa, pb) {
					differ++
				}
			}
		}
	})
	if err != nil {
		t.Fatalf("compare %s with %s: %v", a, b, err)
	}
	return differ, pages
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
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	settle()
	args, _ := b.restoreArgs(dir)
	return b.tidemark(append(args, extra...)...)
}

// diverge starts a restored directory, changes about 1% of the pages of the
// database and stops it: a contiguous 0.5% of the rows of the two big
// tables, whose old pages, new pages (the new row versions go to the end
// of the table) and index pages are about 1% of the pages of base/
// (deltaPairs counts them; 1% of the rows made 2%).
func (b *restoreBench) diverge(dir string) {
	t := b.t
	c := testenv.AdoptDataDir(t, 15, dir, testenv.PGConfig{Env: b.tm.Env, Settings: map[string]string{"archive_mode": "off"}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	if err := c.WaitRecoveryDone(ctx); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "UPDATE md5 SET payload = md5(payload) WHERE id <= (SELECT max(id) / 200 FROM md5)")
	c.Exec(t, "UPDATE pgbench_accounts SET filler = 'diverged' WHERE aid <= (SELECT max(aid) / 200 FROM pgbench_accounts)")
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
	// m is the whole recovery: wall time from the restore's start to the
	// promoted server; CPU of the restore, of every restore_command call
	// and of the tool's background processes; the object store's CPU.
	m         Measurement
	wait      time.Duration
	restore   time.Duration // of the wall time, the restore command
	p50, p99  time.Duration // of segment calls after the first 3
	calls     int
	segments  int           // calls for a WAL segment (the rest probe .history files)
	segWait   time.Duration // spent in those
	slow      int           // segment calls after the first 3 over 50 ms: the prefetcher had not spooled the file
	slowWait  time.Duration // spent in those
	slowCalls []string      // which ones, for the log
}

// pitr restores with tidemark to target, starts the server and waits until
// it promoted, with restore_command timed call by call.
func (b *restoreBench) pitr(target string, prefetch bool, extra ...string) pitrResult {
	dir := filepath.Join(b.shared, fmt.Sprintf("pitr-%v-%d", prefetch, len(extra)))
	defer os.RemoveAll(dir)
	defer os.RemoveAll(dir + ".tidemark-spool")
	settle()
	span := b.meter.Start(Detached("tidemark", "wal-prefetch"))
	restore := b.tidemark(append([]string{"restore", "--pgdata", dir, "--target-time", target, "--target-action", "promote"}, extra...)...)
	res := b.recoverTimed(dir, span, restore, func(cmd string) string {
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
	span := b.meter.Start(Detached("pgbackrest", "archive-get:async", "archive-get:local"))
	restore := b.pgbackrest("restore", "--pg1-path="+dir, "--type=time", "--target="+target, "--target-action=promote")
	return b.recoverTimed(dir, span, restore, func(cmd string) string {
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
// that it landed on the target and returns the timings, counted from the
// span's start.
func (b *restoreBench) recoverTimed(dir string, span *Span, restore Measurement, edit func(string) string) pitrResult {
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
	res := pitrResult{m: span.Stop(), restore: restore.Wall}
	res.m.CPU += restore.CPU
	res.m.PeakTreeRSS, res.m.MaxRSS = restore.PeakTreeRSS, restore.MaxRSS
	t.Logf("PITR: background processes counted: %q", span.Detached())
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
		res.m.CPU += call.CPU
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
				res.segments, call.Start.Sub(span.start).Round(time.Millisecond), call.Duration().Round(time.Millisecond), call.Status))
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
