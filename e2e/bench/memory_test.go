package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// memoryTarget is the peak RSS, in MiB, every command's process tree must
// stay under at its default settings (issue 21: operators run backup tools
// in 512 MiB containers beside the database; pgBackRest's own tree peaks at
// 64 to 93 MiB on the benchmarks here).
const memoryTarget = 96

// TestBenchMemory shows the peak resident memory of the process tree of
// every tidemark command that handles data, at its default settings, at
// each database size of TIDEMARK_BENCH_RSS_SCALES (pgbench scales, default
// "20,200"; 1000 is about 15 GB): backup (full, then incremental from WAL
// summaries, PostgreSQL 17), restore, the agent under a write load, one
// wal-push, wal-fetch with its prefetcher through a recovery, verify
// --read-data, and gc after expire. Memory must not grow with the
// database.
func TestBenchMemory(t *testing.T) {
	Enabled(t)
	spec, set := os.LookupEnv("TIDEMARK_BENCH_RSS_SCALES")
	if !set {
		spec = "20,200"
	}
	tab := Table{Title: fmt.Sprintf("tidemark peak RSS of the process tree by database size, default settings, PostgreSQL 17, MinIO over TLS (MiB; target <= %d, flat)", memoryTarget)}
	names := []string{"backup, full", "backup, incremental (WAL summaries)", "restore", "agent under a write load",
		"one wal-push (16 MiB segment)", "wal-fetch calls + prefetcher, summed", "verify --read-data", "gc (after expire)"}
	values := make([][]float64, len(names))
	times := make([][]float64, len(names))
	for _, s := range strings.Split(spec, ",") {
		scale, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("TIDEMARK_BENCH_RSS_SCALES=%q: %v", spec, err)
		}
		t.Run("scale"+strconv.Itoa(scale), func(t *testing.T) {
			ms, size := memoryAtScale(t, scale)
			tab.Columns = append(tab.Columns, fmt.Sprintf("scale %d (%s)", scale, size))
			for i, m := range ms {
				values[i] = append(values[i], RSS(m))
				times[i] = append(times[i], m.Wall.Seconds())
			}
		})
	}
	if len(tab.Columns) == 0 {
		return
	}
	for i, n := range names {
		tab.Add(n, "%.1f", values[i]...)
	}
	if len(tab.Columns) > 1 {
		tab.Ratios = [][2]int{{len(tab.Columns) - 1, 0}}
	}
	wall := Table{Title: "wall time of the same runs (s)", Columns: tab.Columns}
	for i, n := range names {
		wall.Add(n, "%.1f", times[i]...)
	}
	Report(t, func(w io.Writer) {
		tab.Print(w)
		wall.Print(w)
	})
}

// memoryAtScale runs every measured command once on a database of pgbench
// scale scale and returns their measurements, in TestBenchMemory's order.
func memoryAtScale(t *testing.T, scale int) ([]Measurement, string) {
	b := newBackupBench(t, 17, false, map[string]string{"summarize_wal": "on"})
	c, tm := b.c, b.tm
	size := loadBackupData(t, c, scale, 0)
	var out []Measurement
	run := func(what string, args ...string) Measurement {
		t.Helper()
		settle()
		cmd := exec.CommandContext(t.Context(), tm.Bin, append(args, "--log-level", "warn")...)
		cmd.Env = append(os.Environ(), tm.Env...)
		var o bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &o
		m := b.meter.Measure(cmd)
		if m.Err != nil {
			t.Fatalf("tidemark %s: %v\n%s", strings.Join(args, " "), m.Err, o.String())
		}
		t.Logf("scale %d, %s: peak RSS %.1f MiB (largest process %.1f), %s", scale, what, MiB(m.PeakTreeRSS), MiB(m.MaxRSS), m.Wall.Round(10*time.Millisecond))
		return m
	}

	out = append(out, b.tidemark("full").Measurement)
	changeBackupData(t, c, scale, 0)
	out = append(out, b.tidemark("incremental").Measurement)

	dir := filepath.Join(testenv.SharedDir(t), "restore")
	out = append(out, run("restore", "restore", "--pgdata", dir, "--target", "immediate", "--target-action", "promote"))
	os.RemoveAll(dir)

	// The agent, archiving a write load.
	agentArgs := []string{"agent", "--pgdata", c.DataDir, "--repo", tm.URL, "--identity", tm.Identity}
	agent := c.Command(context.Background(), tm.Bin, agentArgs...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	waitSocket(t, filepath.Join(c.DataDir, "tidemark-agent.sock"), logf.Name())
	rss := SampleRSS(agent.Process.Pid)
	c.Exec(t, "CREATE TABLE walbench (id bigint, payload text)")
	runLoad(t, c, 20*time.Second)
	quiesceArchive(t, c)
	peak := rss.Stop()
	agent.Process.Signal(syscall.SIGTERM)
	agent.Wait()
	t.Logf("scale %d, agent: peak RSS %.1f MiB", scale, MiB(peak))
	out = append(out, Measurement{PeakTreeRSS: peak})

	// One push of a segment nobody archived yet: archiving paused while
	// it completes.
	setArchiveCommand(t, c, "")
	runLoad(t, c, 2*time.Second)
	c.Exec(t, "SELECT pg_switch_wal()")
	ready := readyNames(t, c)
	push := c.Command(t.Context(), tm.Bin, "wal-push", "--no-agent", "--repo", tm.URL, "--identity", tm.Identity,
		filepath.Join("pg_wal", ready[len(ready)-1]))
	push.Dir = c.DataDir
	settle()
	pm := b.meter.Measure(push)
	if pm.Err != nil {
		t.Fatalf("wal-push: %v", pm.Err)
	}
	t.Logf("scale %d, wal-push: peak RSS %.1f MiB", scale, MiB(max(pm.PeakTreeRSS, pm.MaxRSS)))
	out = append(out, pm)
	b.freshArchiveCommand()
	quiesceArchive(t, c)

	// wal-fetch and its prefetcher: a restore of the newest backup that
	// replays the WAL written since (the load above and more).
	runLoad(t, c, 20*time.Second)
	quiesceArchive(t, c)
	pitr := filepath.Join(testenv.SharedDir(t), "pitr")
	run("restore for recovery", "restore", "--pgdata", pitr)
	fetching := Detached("tidemark", "wal-fetch", "wal-prefetch")
	fetchRSS := SampleMemory(func() int64 { return MatchingRSS(fetching) })
	rc := testenv.AdoptDataDir(t, 17, pitr, testenv.PGConfig{Env: tm.Env, Settings: map[string]string{"archive_mode": "off"}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	if err := rc.WaitRecoveryDone(ctx); err != nil {
		t.Fatal(err)
	}
	fpeak := fetchRSS.Stop()
	rc.Stop()
	t.Logf("scale %d, wal-fetch + prefetcher: peak RSS %.1f MiB", scale, MiB(fpeak))
	out = append(out, Measurement{PeakTreeRSS: fpeak})
	os.RemoveAll(pitr)

	out = append(out, run("verify --read-data", "verify", "--read-data"))
	run("expire", "expire", "--keep-last", "1")
	out = append(out, run("gc", "gc", "--grace", "1ms", "--wait", "1m"))
	return out, size
}

// freshArchiveCommand sets archive_command back to the benchmark's
// repository (after a pause).
func (b *backupBench) freshArchiveCommand() {
	setArchiveCommand(b.t, b.c, fmt.Sprintf("%s wal-push --repo %s --identity %s %%p", b.tm.Bin,
		shellQuote(strings.ReplaceAll(b.tm.URL, "%", "%%")), b.tm.Identity))
}

func waitSocket(t *testing.T, sock, log string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not start (log %s)", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MatchingRSS is the summed resident set of the processes for which match
// (their stat and command line) is true.
func MatchingRSS(match func(procStat, []string) bool) int64 {
	var sum int64
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if match(st, strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			sum += rssOf(pid)
		}
	}
	return sum
}
