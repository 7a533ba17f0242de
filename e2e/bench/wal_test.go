package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// Settings of the WAL benchmark. TIDEMARK_BENCH_WAL_LOAD (a Go duration) and
// TIDEMARK_BENCH_WAL_BACKLOG (segments) shrink it for a try-out.
const (
	walSegSize         = 16 << 20 // PostgreSQL's default
	defaultBacklogSegs = 48       // segments queued before the saturation run
	defaultWALLoad     = 30 * time.Second
)

// walSetup is one way of archiving under test.
type walSetup struct {
	name string
	// command is archive_command; agent starts what must run beside
	// PostgreSQL (nil for none) and returns its stop function and pid.
	command func(t *testing.T, c *testenv.Cluster) string
	agent   func(t *testing.T, c *testenv.Cluster) (stop func(), pid int)
	// push is one synchronous push of a file, for the single-push
	// measurement (nil: not measured for this setup).
	push func(ctx context.Context, c *testenv.Cluster, file string) *exec.Cmd
	// version runs the tool doing nothing: the floor of any call's
	// latency on this machine under this load.
	version func(ctx context.Context, c *testenv.Cluster) *exec.Cmd
	// detached matches the tool's background processes (nil: none).
	detached func(procStat, []string) bool
	// env is added to the tool's environment.
	env []string
}

// walResult is what one setup achieved.
type walResult struct {
	p50, p99     time.Duration
	floor        time.Duration
	loadAvg      float64 // the machine's 1-minute load average at the end of the load
	calls        int
	failedCalls  int
	segsPerSec   float64
	drainSegs    int
	maxLag       int64
	walMBps      float64
	agentRSS     int64
	push         Measurement
	pushMeasured bool
	// cpu is what archiving the load's WAL cost, from the load's start
	// until it was all archived: archive_command calls, the agent, the
	// tool's background processes and the object store; walBytes is that
	// WAL.
	cpu      Measurement
	walBytes int64
	// Block summaries archived, their bytes, and the bytes of the segment
	// objects (tidemark).
	summaries                  int
	summaryBytes, segmentBytes int64
}

// summarySizes counts the block summaries in a tidemark bucket, their bytes
// and those of the segments beside them.
func summarySizes(t *testing.T, srv *testenv.S3Server, bucket string) (n int, sum, seg int64) {
	p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String("tidemark/wal/")})
	for p.HasMorePages() {
		page, err := p.NextPage(t.Context())
		if err != nil {
			t.Fatalf("list %s: %v", bucket, err)
		}
		for _, o := range page.Contents {
			k := aws.ToString(o.Key)
			name := k[strings.LastIndexByte(k, '/')+1:]
			switch {
			case strings.HasSuffix(name, ".summary"):
				n++
				sum += aws.ToInt64(o.Size)
			case len(name) == 24:
				seg += aws.ToInt64(o.Size)
			}
		}
	}
	return n, sum, seg
}

// TestBenchWAL compares WAL archiving to MinIO over TLS under one pgbench
// write load on PostgreSQL 15 (16 MiB segments): tidemark synchronous,
// tidemark with its agent, pgBackRest archive-push synchronous and
// asynchronous (process-max 2). For each it measures
//   - archive_command latency per call (p50, p99) while pgbench writes as
//     fast as this machine lets it, and the largest archive lag then
//     (segments completed but not yet reported archived, sampled every
//     100 ms from pg_stat_archiver);
//   - archived segments per second at saturation: a backlog of 48 ready
//     segments (of real pgbench WAL) built with archive_command empty, then
//     drained;
//   - one synchronous push of a 16 MiB segment (wall time, peak RSS);
//   - CPU seconds per GiB of WAL, from the load's start until all of its
//     WAL is archived: archive_command's calls, the agent, pgBackRest's
//     async processes, and MinIO.
//
// The four setups run in turn (tidemark sync, pgBackRest sync, tidemark
// agent, pgBackRest async), Pairs times, and each figure is the median and
// range over those runs.
func TestBenchWAL(t *testing.T) {
	Enabled(t)
	load := EnvDuration(t, "TIDEMARK_BENCH_WAL_LOAD", defaultWALLoad)
	backlog := walBacklog(t)
	srv := testenv.MinIOTLS(t)
	meter := NewMeter(t, srv)
	pairs := Pairs(t)

	var tm *Tidemark
	var pgbr *PGBackRest
	startAgent := func(t *testing.T, c *testenv.Cluster) (func(), int) { return startWALAgent(t, tm, c) }
	setups := []walSetup{
		{
			name:    "tidemark sync",
			version: func(ctx context.Context, c *testenv.Cluster) *exec.Cmd { return c.Command(ctx, tm.Bin, "version") },
			command: func(t *testing.T, c *testenv.Cluster) string { return tm.ArchiveCommand() },
			push: func(ctx context.Context, c *testenv.Cluster, file string) *exec.Cmd {
				cmd := c.Command(ctx, tm.Bin, "wal-push", "--no-agent", file)
				cmd.Dir = c.DataDir
				return cmd
			},
		},
		{
			name:    "tidemark agent",
			version: func(ctx context.Context, c *testenv.Cluster) *exec.Cmd { return c.Command(ctx, tm.Bin, "version") },
			command: func(t *testing.T, c *testenv.Cluster) string { return tm.ArchiveCommand() },
			agent:   startAgent,
		},
		{
			name:    "pgBackRest sync",
			version: func(ctx context.Context, c *testenv.Cluster) *exec.Cmd { return pgbr.Command(ctx, c, "version") },
			command: func(t *testing.T, c *testenv.Cluster) string {
				pgbr = newPGBR(t, srv, c, false)
				return pgbr.ArchiveCommand()
			},
			push: func(ctx context.Context, c *testenv.Cluster, file string) *exec.Cmd {
				cmd := pgbr.Command(ctx, c, "archive-push", file)
				cmd.Dir = c.DataDir
				return cmd
			},
		},
		{
			name:     "pgBackRest async",
			detached: Detached("pgbackrest", "archive-push:async", "archive-push:local"),
			version:  func(ctx context.Context, c *testenv.Cluster) *exec.Cmd { return pgbr.Command(ctx, c, "version") },
			command: func(t *testing.T, c *testenv.Cluster) string {
				pgbr = newPGBR(t, srv, c, true)
				return pgbr.ArchiveCommand()
			},
		},
		{
			// What writing block summaries costs the agent.
			name:    "tidemark agent, no summaries",
			version: func(ctx context.Context, c *testenv.Cluster) *exec.Cmd { return c.Command(ctx, tm.Bin, "version") },
			command: func(t *testing.T, c *testenv.Cluster) string { return tm.ArchiveCommand() },
			env:     []string{"TIDEMARK_NO_BLOCK_SUMMARIES=1"},
			agent:   startAgent,
		},
	}
	// Order: each tidemark setup next to its pgBackRest counterpart.
	order := []int{0, 2, 1, 3, 4}
	results := make([][]walResult, len(setups))
	for i := range pairs {
		for _, k := range order {
			s := setups[k]
			t.Run(fmt.Sprintf("%s-%d", strings.ReplaceAll(strings.ReplaceAll(s.name, ",", ""), " ", "-"), i+1), func(t *testing.T) {
				waitQuiet(t)
				bucket := srv.NewBucket(t)
				tm = NewTidemark(t, srv, bucket)
				r := benchWALSetup(t, s, meter, append(slices.Clone(tm.Env), s.env...), load, backlog)
				if strings.HasPrefix(s.name, "tidemark") {
					r.summaries, r.summaryBytes, r.segmentBytes = summarySizes(t, srv, bucket)
				}
				results[k] = append(results[k], r)
			})
		}
	}

	tabs := []*PairTable{}
	for _, pair := range [][2]int{{0, 2}, {1, 3}, {1, 4}} {
		a, b := results[pair[0]], results[pair[1]]
		tab := &PairTable{
			Title: fmt.Sprintf("WAL archiving: PostgreSQL 15, 16 MiB segments, MinIO over TLS on loopback, %d cores; "+
				"load: pgbench -c 4 -j 2 inserting 100-row batches for %v; %d runs each", runtimeCPUs(), load, pairs),
			Columns: [2]string{setups[pair[0]].name, setups[pair[1]].name},
		}
		col := func(rs []walResult, f func(r walResult) float64) Series {
			out := make(Series, len(rs))
			for i, r := range rs {
				out[i] = f(r)
			}
			return out
		}
		row := func(name, format string, f func(r walResult) float64, target string) {
			tab.Add(name, format, col(a, f), col(b, f), target)
		}
		tab.Step("under load")
		row("archive_command p50, ms", "%.1f", func(r walResult) float64 { return Millis(r.p50) }, "")
		row("archive_command p99, ms", "%.1f", func(r walResult) float64 { return Millis(r.p99) }, "")
		row("start-up floor under load, p50, ms", "%.1f", func(r walResult) float64 { return Millis(r.floor) }, "")
		row("machine load average at the end of the load", "%.1f", func(r walResult) float64 { return r.loadAvg }, "")
		row("calls under load", "%.0f", func(r walResult) float64 { return float64(r.calls) }, "")
		row("failed calls", "%.0f", func(r walResult) float64 { return float64(r.failedCalls) }, "")
		row("WAL written under load, MB/s", "%.1f", func(r walResult) float64 { return r.walMBps }, "")
		row("max archive lag, segments", "%.0f", func(r walResult) float64 { return float64(r.maxLag) }, "")
		row("CPU s/GiB of WAL, tool + object store", "%.2f", func(r walResult) float64 {
			return (r.cpu.CPU + r.cpu.StoreCPU).Seconds() / GiB(r.walBytes)
		}, "")
		row("  of which the object store", "%.2f", func(r walResult) float64 { return r.cpu.StoreCPU.Seconds() / GiB(r.walBytes) }, "")
		row("block summaries: mean KiB per segment", "%.1f", func(r walResult) float64 {
			if r.summaries == 0 {
				return math.NaN()
			}
			return float64(r.summaryBytes) / float64(r.summaries) / 1024
		}, "")
		row("block summaries: % of the archived segments' bytes", "%.2f", func(r walResult) float64 {
			if r.summaries == 0 || r.segmentBytes == 0 {
				return math.NaN()
			}
			return 100 * float64(r.summaryBytes) / float64(r.segmentBytes)
		}, "")
		row("agent peak RSS, MiB", "%.0f", func(r walResult) float64 {
			if r.agentRSS == 0 {
				return math.NaN()
			}
			return MiB(r.agentRSS)
		}, "")
		tab.Step(fmt.Sprintf("draining a backlog of %d segments", backlog))
		row("segments/s", "%.2f", func(r walResult) float64 { return r.segsPerSec }, "")
		if a[0].pushMeasured && b[0].pushMeasured {
			tab.Step("one synchronous push of a 16 MiB segment")
			push := func(rs []walResult) []Measurement {
				ms := make([]Measurement, len(rs))
				for i, r := range rs {
					ms[i] = r.push
				}
				return ms
			}
			tab.AddRuns(push(a), push(b), 16.0/1024, "", "")
		}
		tabs = append(tabs, tab)
	}
	Report(t, func(w io.Writer) {
		for _, tab := range tabs {
			tab.Print(w)
		}
	})
}

// walBacklog is the number of segments of the saturation run:
// TIDEMARK_BENCH_WAL_BACKLOG, default defaultBacklogSegs.
func walBacklog(t *testing.T) int {
	t.Helper()
	s := os.Getenv("TIDEMARK_BENCH_WAL_BACKLOG")
	if s == "" {
		return defaultBacklogSegs
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("TIDEMARK_BENCH_WAL_BACKLOG=%q: want a number of segments", s)
	}
	return n
}

// startWALAgent runs tidemark's agent beside the cluster until stopped.
func startWALAgent(t *testing.T, tm *Tidemark, c *testenv.Cluster) (stop func(), pid int) {
	cmd := c.Command(context.Background(), tm.Bin, "agent", "--pgdata", c.DataDir)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(c.DataDir, "tidemark-agent.sock")
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not start (log %s)", logf.Name())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	}, cmd.Process.Pid
}

// drainRun is one drain of a backlog of ready segments by the agent.
type drainRun struct {
	segs      int
	wall      time.Duration
	cpu, xcpu time.Duration // tidemark's (agent and wal-push calls); the object store's
	load      float64       // the 1-minute load average at the end
	summaries int
}

func (r drainRun) segsPerSec() float64 { return float64(r.segs) / r.wall.Seconds() }
func (r drainRun) gib() float64        { return GiB(int64(r.segs) * walSegSize) }

// TestBenchWALSummaries measures what block summaries cost the archive's
// drain rate (issue 19: at most 10% lower): a backlog of ready segments
// (TIDEMARK_BENCH_WAL_BACKLOG, default 48, of the WAL benchmark's pgbench
// load) drained by tidemark's agent into MinIO over TLS, with summaries and
// without them (TIDEMARK_NO_BLOCK_SUMMARIES, a switch for this measurement
// only), in alternating pairs whose order flips each pair
// (TIDEMARK_BENCH_PAIRS, default 3). For each: segments/s, wall time, CPU
// seconds per GiB drained (tidemark: the agent and the archive_command
// calls; and the object store's), and the load average at the end. make
// bench BENCH=WAL runs it after TestBenchWAL; BENCH=WALSummaries alone.
func TestBenchWALSummaries(t *testing.T) {
	Enabled(t)
	backlog := walBacklog(t)
	srv := testenv.MinIOTLS(t)
	meter := NewMeter(t, srv)
	pairs := Pairs(t)
	runs := [2][]drainRun{} // with summaries, without
	for i := range pairs {
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, k := range order {
			name := []string{"with-summaries", "without-summaries"}[k]
			t.Run(fmt.Sprintf("%s-%d", name, i+1), func(t *testing.T) {
				waitQuiet(t)
				bucket := srv.NewBucket(t)
				tm := NewTidemark(t, srv, bucket)
				env := slices.Clone(tm.Env)
				if k == 1 {
					env = append(env, "TIDEMARK_NO_BLOCK_SUMMARIES=1")
				}
				r := benchDrain(t, tm, meter, env, backlog)
				r.summaries, _, _ = summarySizes(t, srv, bucket)
				t.Logf("%s: %d segments in %v (%.2f/s), tidemark CPU %v, store CPU %v, %d summaries, load average %.1f",
					name, r.segs, r.wall.Round(time.Millisecond), r.segsPerSec(), r.cpu, r.xcpu, r.summaries, r.load)
				runs[k] = append(runs[k], r)
			})
		}
	}
	if t.Failed() || len(runs[0]) != pairs || len(runs[1]) != pairs {
		return
	}
	col := func(rs []drainRun, f func(drainRun) float64) Series {
		out := make(Series, len(rs))
		for i, r := range rs {
			out[i] = f(r)
		}
		return out
	}
	tab := &PairTable{
		Title: fmt.Sprintf("WAL archive drain with and without block summaries: PostgreSQL 15, %d ready 16 MiB segments, "+
			"tidemark agent, MinIO over TLS on loopback, %d cores, %d pairs (order alternating)", backlog, runtimeCPUs(), pairs),
		Columns: [2]string{"with summaries", "without summaries"},
	}
	row := func(name, format string, f func(drainRun) float64, target string) {
		tab.Add(name, format, col(runs[0], f), col(runs[1], f), target)
	}
	tab.Step("draining the backlog")
	row("segments/s", "%.2f", drainRun.segsPerSec, ">= 0.90x")
	row("wall, s", "%.2f", func(r drainRun) float64 { return r.wall.Seconds() }, "")
	row("CPU s/GiB, tidemark + object store", "%.2f", func(r drainRun) float64 { return (r.cpu + r.xcpu).Seconds() / r.gib() }, "")
	row("  of which tidemark", "%.2f", func(r drainRun) float64 { return r.cpu.Seconds() / r.gib() }, "")
	row("block summaries written", "%.0f", func(r drainRun) float64 { return float64(r.summaries) }, "")
	row("machine load average at the end", "%.1f", func(r drainRun) float64 { return r.load }, "")
	// The ratio within each pair: its two runs shared the machine's state.
	var ratios []float64
	for i := range pairs {
		ratios = append(ratios, runs[0][i].segsPerSec()/runs[1][i].segsPerSec())
	}
	Report(t, func(w io.Writer) {
		tab.Print(w)
		fmt.Fprintf(w, "drain rate with / without summaries, per pair: %s\n", rangeOf(ratios, "%.2fx"))
	})
}

// benchDrain builds a backlog of ready segments on a new cluster (with
// archive_command empty), then starts the agent and measures the drain.
func benchDrain(t *testing.T, tm *Tidemark, meter *Meter, env []string, backlog int) drainRun {
	c := testenv.NewCluster(t, testenv.PGConfig{
		Version: 15,
		Settings: map[string]string{
			"archive_mode": "on", "archive_command": "", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
		},
		Env: env,
	})
	timer, err := NewCommandTimer(testenv.SharedDir(t))
	if err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "CREATE TABLE walbench (id bigint, payload text)")
	for readySegments(t, c) < backlog {
		runLoad(t, c, 5*time.Second)
	}
	c.Exec(t, "CHECKPOINT")
	ready := readyNames(t, c)
	last := ready[len(ready)-1]
	settle()
	start := time.Now()
	span := meter.Start(nil)
	stop, pid := startWALAgent(t, tm, c)
	defer stop()
	setArchiveCommand(t, c, timer.Script+" "+tm.ArchiveCommand())
	waitArchivedName(t, c, last, 10*time.Minute)
	r := drainRun{segs: len(ready), wall: time.Since(start), load: loadAverage()}
	m := span.Stop()
	r.xcpu = m.StoreCPU
	r.cpu = ProcCPU(pid)
	calls, err := timer.Calls()
	if err != nil {
		t.Fatal(err)
	}
	for _, call := range calls {
		r.cpu += call.CPU
	}
	c.StopImmediate()
	return r
}

func newPGBR(t *testing.T, srv *testenv.S3Server, c *testenv.Cluster, async bool) *PGBackRest {
	return NewPGBackRest(t, srv, srv.NewBucket(t), c, PGBackRestOptions{Async: async, ProcessMax: 2})
}

func benchWALSetup(t *testing.T, s walSetup, meter *Meter, env []string, load time.Duration, backlog int) walResult {
	var res walResult
	c := testenv.NewCluster(t, testenv.PGConfig{
		Version: 15,
		Settings: map[string]string{
			"archive_mode":       "on",
			"archive_command":    "", // WAL accumulates until the command is set
			"max_wal_size":       "8GB",
			"checkpoint_timeout": "30min",
		},
		Env: env,
	})
	timer, err := NewCommandTimer(testenv.SharedDir(t))
	if err != nil {
		t.Fatal(err)
	}
	command := timer.Script + " " + s.command(t, c)

	// Saturation: a backlog of ready segments, then drain it.
	c.Exec(t, "CREATE TABLE walbench (id bigint, payload text)")
	for readySegments(t, c) < backlog {
		runLoad(t, c, 5*time.Second)
	}
	c.Exec(t, "CHECKPOINT")
	ready := readyNames(t, c)
	res.drainSegs = len(ready)
	last := ready[len(ready)-1]

	if s.push != nil {
		// One push, out of band, of the newest ready segment: PostgreSQL
		// pushes it again later, which both tools accept as identical.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		settle()
		res.push = meter.Measure(s.push(ctx, c, filepath.Join("pg_wal", last)))
		cancel()
		if res.push.Err != nil {
			t.Fatalf("single push: %v", res.push.Err)
		}
		res.pushMeasured = true
	}

	var stopAgent func()
	var rss *RSSSampler
	var agentPID int
	start := time.Now()
	if s.agent != nil {
		var pid int
		stopAgent, pid = s.agent(t, c)
		agentPID = pid
		rss = SampleRSS(pid)
		defer func() {
			if stopAgent != nil {
				stopAgent()
			}
		}()
	}
	setArchiveCommand(t, c, command)
	waitArchivedName(t, c, last, 10*time.Minute)
	drain := time.Since(start)
	res.segsPerSec = float64(res.drainSegs) / drain.Seconds()
	t.Logf("%s: drained %d segments in %v (%.2f/s)", s.name, res.drainSegs, drain.Round(time.Millisecond), res.segsPerSec)

	// Latency and lag under load.
	lsn0 := c.QueryString(t, "SELECT pg_current_wal_lsn()")
	lag := SampleLag(t, c, walSegSize, 100*time.Millisecond)
	floorDone := make(chan []time.Duration)
	floorCtx, stopFloor := context.WithCancel(t.Context())
	go func() {
		// The tool started for nothing, once a second, under the same load.
		var ds []time.Duration
		for floorCtx.Err() == nil {
			if m := Measure(s.version(floorCtx, c)); m.Err == nil {
				ds = append(ds, m.Wall)
			}
			select {
			case <-floorCtx.Done():
			case <-time.After(time.Second):
			}
		}
		floorDone <- ds
	}()
	span := meter.Start(s.detached)
	agent0 := ProcCPU(agentPID)
	loadStart := time.Now()
	runLoad(t, c, load)
	loadEnd := time.Now()
	res.loadAvg = loadAverage()
	// The CPU archiving costs: until every segment the load completed is
	// archived.
	lsn1 := c.QueryString(t, "SELECT pg_current_wal_lsn()")
	seg1 := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchivedName(t, c, seg1, 10*time.Minute)
	res.cpu = span.Stop()
	if agentPID != 0 {
		res.cpu.CPU += ProcCPU(agentPID) - agent0
	}
	if n, err := strconv.ParseFloat(c.QueryString(t, "SELECT $1::pg_lsn - $2::pg_lsn", lsn1, lsn0), 64); err == nil {
		res.walBytes = int64(n)
	}
	if d := span.Detached(); len(d) > 0 {
		t.Logf("%s: background processes counted: %q", s.name, d)
	}
	stopFloor()
	res.floor = Percentile(<-floorDone, 50)
	bytes := c.QueryString(t, "SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn0)
	res.maxLag, _ = lag.Stop()
	if n, err := strconv.ParseFloat(bytes, 64); err == nil {
		res.walMBps = n / 1e6 / loadEnd.Sub(loadStart).Seconds()
	}
	if rss != nil {
		res.agentRSS = rss.Stop()
	}
	calls, err := timer.Calls()
	if err != nil {
		t.Fatal(err)
	}
	var ds []time.Duration
	for _, call := range calls {
		if !call.Start.Before(loadStart) {
			res.cpu.CPU += call.CPU
		}
		if call.Start.Before(loadStart) || call.Start.After(loadEnd) {
			continue
		}
		if call.Status != 0 {
			res.failedCalls++
			continue
		}
		ds = append(ds, call.Duration())
	}
	res.calls = len(ds)
	res.p50, res.p99 = Percentile(ds, 50), Percentile(ds, 99)
	t.Logf("%s: %d calls under load, p50 %v, p99 %v, max lag %d segments, WAL %.1f MB/s, CPU %v + store %v for %.0f MiB",
		s.name, res.calls, res.p50, res.p99, res.maxLag, res.walMBps, res.cpu.CPU, res.cpu.StoreCPU, MiB(res.walBytes))
	// Stop PostgreSQL before the S3 server and the agent. Immediately: a
	// clean shutdown waits for the archiver to push the whole backlog a
	// slow setup has left (and pgBackRest's retries would hang it once the
	// S3 server is gone).
	c.StopImmediate()
	return res
}

// walLoad is the pgbench script of the load: batches of inserted rows, as
// a bulk load or an ingest pipeline writes them. It is the most WAL per
// second pgbench makes on this machine (about 50 MB/s on 2 cores, against
// about 10 for the built-in simple-update), which is what archiving must
// keep up with; the md5 text compresses about as well as real WAL.
const walLoad = `\set id random(1, 1000000000)
INSERT INTO walbench SELECT :id + g, repeat(md5((:id + g)::text), 4) FROM generate_series(1, 100) g;
`

// runLoad runs the load against c for d.
func runLoad(t *testing.T, c *testenv.Cluster, d time.Duration) {
	t.Helper()
	script := filepath.Join(testenv.SharedDir(t), "walload.sql")
	if err := os.WriteFile(script, []byte(walLoad), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), d+5*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, c.ClientBin("pgbench"), "-n", "-f", script, "-c", "4", "-j", "2",
		"-T", strconv.Itoa(int(max(d, time.Second)/time.Second)), "postgres")
	if err := Run(cmd); err != nil {
		t.Fatal(err)
	}
}

func setArchiveCommand(t *testing.T, c *testenv.Cluster, command string) {
	t.Helper()
	c.Exec(t, "ALTER SYSTEM SET archive_command = "+sqlString(command))
	c.Exec(t, "SELECT pg_reload_conf()")
}

func sqlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// readyNames lists the segments waiting in archive_status, oldest first.
func readyNames(t *testing.T, c *testenv.Cluster) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(c.DataDir, "pg_wal", "archive_status", "*.ready"))
	var out []string
	for _, p := range m {
		n := strings.TrimSuffix(filepath.Base(p), ".ready")
		if len(n) == 24 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		t.Fatal("no ready segments")
	}
	return out
}

func readySegments(t *testing.T, c *testenv.Cluster) int {
	m, _ := filepath.Glob(filepath.Join(c.DataDir, "pg_wal", "archive_status", "*.ready"))
	return len(m)
}

func waitArchivedName(t *testing.T, c *testenv.Cluster, name string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var last string
		c.QueryRow(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").Scan(&last)
		if len(last) >= 24 && last[:24] >= name {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not archived after %v (last %q)", name, limit, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
