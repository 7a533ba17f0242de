package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
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

// Settings of the receiver benchmark; TIDEMARK_BENCH_RECEIVE_LOAD (a Go
// duration), TIDEMARK_BENCH_RECEIVE_ROUNDS and
// TIDEMARK_BENCH_RECEIVE_CLIENTS change them.
const (
	defaultReceiveLoad    = 30 * time.Second
	defaultReceiveRounds  = 3
	defaultReceiveClients = 8
	receiveScale          = 10
)

// recvSetup is one synchronous standby under test.
type recvSetup struct {
	name string
	app  string // its application_name
	// start starts it with a new slot and returns its process.
	start func(t *testing.T, c *testenv.Cluster, slot string) *exec.Cmd
}

// recvRun is what one run of pgbench measured with one setup.
type recvRun struct {
	tps, p50, p99 float64 // transactions/s; latency in ms
	cpu           float64 // the standby's CPU seconds during the load
	rss           int64   // its peak RSS
	walMB         float64 // WAL written during the load
	load          float64 // the machine's 1-minute load average at the end of the load
	// pieces is how many pieces wal-receive uploaded during the load, and
	// txPerPiece the transactions per piece: how well group commit groups
	// (NaN for pg_receivewal).
	pieces, txPerPiece float64
}

func benchEnvInt(t *testing.T, name string, def int) int {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", name, s)
		}
		return n
	}
	return def
}

// TestBenchReceive measures pgbench (tpcb-like, scale 10, 8 clients,
// synchronous_commit = on, fsync = on) on PostgreSQL 15 with one synchronous
// standby: pg_receivewal --synchronous (PostgreSQL 15's), tidemark
// wal-receive --durable local, and --durable repository into MinIO over
// TLS on loopback. Each round runs every setup once, in an order that
// rotates from round to round; the table shows the median of the rounds
// and their range. For each: TPS, transaction latency p50 and p99 (from
// pgbench's per-transaction log; a tpcb-like transaction waits for one
// synchronous commit), the standby's CPU seconds and peak RSS.
func TestBenchReceive(t *testing.T) {
	Enabled(t)
	load := EnvDuration(t, "TIDEMARK_BENCH_RECEIVE_LOAD", defaultReceiveLoad)
	rounds := benchEnvInt(t, "TIDEMARK_BENCH_RECEIVE_ROUNDS", defaultReceiveRounds)
	clients := benchEnvInt(t, "TIDEMARK_BENCH_RECEIVE_CLIENTS", defaultReceiveClients)
	srv := testenv.MinIOTLS(t)
	c := receiveBenchCluster(t)
	testenv.PGBenchInit(t, c, receiveScale)
	// The first run of a fresh cluster ran at a third of the TPS of the
	// runs after it (cold caches, tables freshly loaded), whichever
	// standby it measured: one run without a standby comes first.
	testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: clients, Jobs: 2, Duration: max(load/3, 10*time.Second)})
	floor := storeFloor(t, srv)

	setups := []recvSetup{{name: "pg_receivewal --synchronous", app: "pg_receivewal", start: startPGReceivewal}}
	// TIDEMARK_BENCH_RECEIVE_MODES (default "local,repository") are the
	// --durable modes measured.
	for m := range strings.SplitSeq(cmp.Or(os.Getenv("TIDEMARK_BENCH_RECEIVE_MODES"), "local,repository"), ",") {
		if m != "" {
			setups = append(setups, recvSetup{name: "wal-receive " + m, app: "tidemark", start: startWALReceive(srv, m)})
		}
	}
	// TIDEMARK_BENCH_RECEIVE_INFLIGHT=1,2,4 compares --durable repository
	// with those --max-inflight against pg_receivewal instead.
	if v := os.Getenv("TIDEMARK_BENCH_RECEIVE_INFLIGHT"); v != "" {
		setups = setups[:1]
		for n := range strings.SplitSeq(v, ",") {
			setups = append(setups, recvSetup{name: "wal-receive repository, inflight " + n, app: "tidemark",
				start: startWALReceive(srv, "repository", "--max-inflight", n)})
		}
	}
	// TIDEMARK_BENCH_RECEIVE_BASELINE=<tidemark binary> adds --durable
	// repository (or TIDEMARK_BENCH_RECEIVE_BASELINE_MODE) run by that
	// binary (another build: before and after a change, in the same
	// rounds).
	if bin := os.Getenv("TIDEMARK_BENCH_RECEIVE_BASELINE"); bin != "" {
		mode := cmp.Or(os.Getenv("TIDEMARK_BENCH_RECEIVE_BASELINE_MODE"), "repository")
		setups = append(setups, recvSetup{name: mode + ", baseline binary", app: "tidemark",
			start: startWALReceiveBin(srv, bin, mode)})
	}
	runs := make([][]recvRun, len(setups))
	n := 0
	for r := range rounds {
		for k := range setups {
			i := (k + r) % len(setups)
			n++
			run := benchReceiveRun(t, c, setups[i], fmt.Sprintf("bench_%d", n), load, clients)
			t.Logf("round %d, %s: %.0f tps, p50 %.2f ms, p99 %.2f ms, CPU %.1f s, peak RSS %.0f MiB, WAL %.0f MB, load average %.1f, %.0f pieces, %.1f transactions per piece",
				r+1, setups[i].name, run.tps, run.p50, run.p99, run.cpu, MiB(run.rss), run.walMB, run.load, run.pieces, run.txPerPiece)
			runs[i] = append(runs[i], run)
		}
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "\nsynchronous standby, PostgreSQL 15, pgbench tpcb-like scale %d, -c %d -j 2, %v per run, fsync on, "+
		"%d rounds (order rotating), %d cores; median [min .. max]\n", receiveScale, clients, load, rounds, runtimeCPUs())
	row := func(metric, format string, f func(recvRun) float64) {
		fmt.Fprintf(&sb, "%-34s", metric)
		for i := range setups {
			fmt.Fprintf(&sb, "  %-34s", medianRange(runs[i], format, f))
		}
		sb.WriteByte('\n')
	}
	fmt.Fprintf(&sb, "%-34s", "")
	for _, s := range setups {
		fmt.Fprintf(&sb, "  %-34s", s.name)
	}
	sb.WriteByte('\n')
	fmt.Fprintf(&sb, "%s\n", floor)
	row("TPS", "%.0f", func(r recvRun) float64 { return r.tps })
	row("latency p50 (ms)", "%.2f", func(r recvRun) float64 { return r.p50 })
	row("latency p99 (ms)", "%.2f", func(r recvRun) float64 { return r.p99 })
	row("standby CPU (s per run)", "%.1f", func(r recvRun) float64 { return r.cpu })
	row("standby peak RSS (MiB)", "%.0f", func(r recvRun) float64 { return MiB(r.rss) })
	row("WAL written (MB per run)", "%.0f", func(r recvRun) float64 { return r.walMB })
	row("machine load average at the end", "%.1f", func(r recvRun) float64 { return r.load })
	row("pieces uploaded (per run)", "%.0f", func(r recvRun) float64 { return r.pieces })
	row("transactions per piece", "%.1f", func(r recvRun) float64 { return r.txPerPiece })
	tps := func(i int) []float64 {
		var out []float64
		for _, r := range runs[i] {
			out = append(out, r.tps)
		}
		return out
	}
	// Ratios of the runs of one round, which share the machine's state.
	for i := 1; i < len(setups); i++ {
		var ratios []float64
		for r := range rounds {
			ratios = append(ratios, tps(i)[r]/tps(0)[r])
		}
		fmt.Fprintf(&sb, "TPS %s / pg_receivewal, per round: %s\n", setups[i].name, rangeOf(ratios, "%.2fx"))
	}
	t.Log(sb.String())
	fmt.Print(sb.String())
}

// storeFloor measures what one synchronous commit must wait for at least
// in each durability mode, before any standby runs: a PUT of one 8 KiB
// object to the benchmark's object store (what --durable repository waits
// for), and an 8 KiB write followed by fdatasync on the disk the cluster
// and the local directories are on (what pg_receivewal and --durable local
// wait for). 200 of each, one at a time, after 20 to warm up.
func storeFloor(t *testing.T, srv *testenv.S3Server) string {
	t.Helper()
	const n, warm, size = 200, 20, 8 << 10
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	bucket := srv.NewBucket(t)
	cl := srv.Client()
	var puts []time.Duration
	for i := range n + warm {
		start := time.Now()
		_, err := cl.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket),
			Key: aws.String(fmt.Sprintf("floor/%d", i)), Body: bytes.NewReader(payload)})
		if err != nil {
			t.Fatalf("PUT to the object store: %v", err)
		}
		if i >= warm {
			puts = append(puts, time.Since(start))
		}
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "floor"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var syncs []time.Duration
	for i := range n + warm {
		start := time.Now()
		if _, err := f.WriteAt(payload, int64(i)*size); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			t.Fatal(err)
		}
		if i >= warm {
			syncs = append(syncs, time.Since(start))
		}
	}
	p50, p99 := Percentile(puts, 50), Percentile(puts, 99)
	s50, s99 := Percentile(syncs, 50), Percentile(syncs, 99)
	return fmt.Sprintf("floor, one at a time: 8 KiB PUT to the object store p50 %.2f ms, p99 %.2f ms; "+
		"8 KiB write + fdatasync p50 %.2f ms, p99 %.2f ms; PUT / fdatasync at p50 %.1fx (load average %.1f)",
		Millis(p50), Millis(p99), Millis(s50), Millis(s99), float64(p50)/float64(s50), loadAverage())
}

func medianRange(runs []recvRun, format string, f func(recvRun) float64) string {
	var v []float64
	for _, r := range runs {
		if x := f(r); !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	return rangeOf(v, format)
}

// rangeOf prints the median and the range of v.
func rangeOf(v []float64, format string) string {
	if len(v) == 0 {
		return "-"
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf(format+" ["+format+" .. "+format+"]", med, s[0], s[len(s)-1])
}

// receiveBenchCluster is the primary: fsync on (a synchronous commit then
// costs the primary's own WAL flush and the standby's), checkpoints out of
// the way, no archive_command (the standbys are what is measured).
func receiveBenchCluster(t *testing.T) *testenv.Cluster {
	return testenv.NewCluster(t, testenv.PGConfig{Version: 15, Settings: map[string]string{
		"fsync": "on", "synchronous_commit": "on", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
		"shared_buffers": "256MB", "wal_keep_size": "0",
	}})
}

func startPGReceivewal(t *testing.T, c *testenv.Cluster, slot string) *exec.Cmd {
	dir := testenv.SharedDir(t)
	c.Exec(t, "SELECT pg_create_physical_replication_slot($1)", slot)
	cmd := c.Command(context.Background(), c.ClientBin("pg_receivewal"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port),
		"-U", "postgres", "-D", dir, "-S", slot, "--synchronous", "--no-loop")
	return cmd
}

func startWALReceive(srv *testenv.S3Server, durable string, extra ...string) func(t *testing.T, c *testenv.Cluster, slot string) *exec.Cmd {
	return startWALReceiveBin(srv, "", durable, extra...)
}

// startWALReceiveBin is startWALReceive with the tidemark binary bin ("":
// the one built from this tree).
func startWALReceiveBin(srv *testenv.S3Server, bin, durable string, extra ...string) func(t *testing.T, c *testenv.Cluster, slot string) *exec.Cmd {
	return func(t *testing.T, c *testenv.Cluster, slot string) *exec.Cmd {
		// A repository of its own: the receiver starts where the archive
		// ends, and WAL of the runs before would be gone from the server.
		tm := NewTidemark(t, srv, srv.NewBucket(t))
		if bin != "" {
			tm.Bin = bin
		}
		args := []string{"wal-receive", "--pg-conn", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port),
			"--slot", slot, "--create-slot", "--dir", filepath.Join(t.TempDir(), "recv"), "--durable", durable, "--log-level", "warn"}
		cmd := exec.Command(tm.Bin, append(args, extra...)...)
		cmd.Env = append(os.Environ(), tm.Env...)
		return cmd
	}
}

// benchReceiveRun runs one setup: the standby is started and made the
// synchronous standby, pgbench runs, then the standby is stopped and its
// slot dropped.
func benchReceiveRun(t *testing.T, c *testenv.Cluster, s recvSetup, slot string, load time.Duration, clients int) recvRun {
	t.Helper()
	cmd := s.start(t, c, slot)
	logf, err := os.Create(filepath.Join(t.TempDir(), "standby.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		select {
		case <-done:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
		}
	}
	defer stop()
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = '"+s.app+"'")
	c.Exec(t, "SELECT pg_reload_conf()")
	deadline := time.Now().Add(2 * time.Minute)
	for c.QueryString(t, "SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = $1", s.app) != "sync" {
		select {
		case <-done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("%s exited: %s", s.name, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not become the synchronous standby", s.name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Exec(t, "CHECKPOINT")
	logDir := t.TempDir()
	startLSN := c.QueryString(t, "SELECT pg_current_wal_lsn()")
	cpu0 := cpuSeconds(cmd.Process.Pid)
	rss := SampleRSS(cmd.Process.Pid)
	// The status file is written about once a second from the receiver's
	// start: a receiver that became the synchronous standby within the
	// first second has none yet, and counting from NaN gave NaN pieces.
	pieces0 := piecesUploaded(cmd)
	for wait := time.Now().Add(3 * time.Second); math.IsNaN(pieces0) && isWALReceive(cmd) && time.Now().Before(wait); {
		time.Sleep(100 * time.Millisecond)
		pieces0 = piecesUploaded(cmd)
	}
	res := testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: clients, Jobs: 2, Duration: load,
		Args: []string{"-l", "--log-prefix=" + filepath.Join(logDir, "pgbench")}})
	run := recvRun{tps: res.TPS, rss: rss.Stop(), cpu: cpuSeconds(cmd.Process.Pid) - cpu0, load: loadAverage()}
	// status.json is rewritten about once a second.
	time.Sleep(1500 * time.Millisecond)
	run.pieces = piecesUploaded(cmd) - pieces0
	run.txPerPiece = float64(res.Transactions) / run.pieces
	run.walMB = float64(pgLSNDiff(t, c, startLSN)) / 1e6
	lat := pgbenchLatencies(t, logDir)
	run.p50, run.p99 = Millis(Percentile(lat, 50)), Millis(Percentile(lat, 99))
	c.Exec(t, "ALTER SYSTEM RESET synchronous_standby_names")
	c.Exec(t, "SELECT pg_reload_conf()")
	stop()
	c.Exec(t, "SELECT pg_drop_replication_slot($1)", slot)
	return run
}

// isWALReceive reports whether cmd runs tidemark wal-receive.
func isWALReceive(cmd *exec.Cmd) bool { return slices.Contains(cmd.Args, "wal-receive") }

// piecesUploaded reads the pieces a wal-receive process (its --dir) has
// uploaded from its status file; NaN for another standby.
func piecesUploaded(cmd *exec.Cmd) float64 {
	i := slices.Index(cmd.Args, "--dir")
	if i < 0 || i+1 >= len(cmd.Args) {
		return math.NaN()
	}
	b, err := os.ReadFile(filepath.Join(cmd.Args[i+1], "status.json"))
	if err != nil {
		return math.NaN()
	}
	var st struct {
		Pieces int64 `json:"pieces_uploaded"`
	}
	if json.Unmarshal(b, &st) != nil {
		return math.NaN()
	}
	return float64(st.Pieces)
}

func pgLSNDiff(t *testing.T, c *testenv.Cluster, from string) int64 {
	s := c.QueryString(t, "SELECT pg_current_wal_lsn() - $1::pg_lsn", from)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("WAL written: %q: %v", s, err)
	}
	return int64(f)
}

// pgbenchLatencies reads pgbench's per-transaction logs (-l): the third
// field of each line is the transaction's latency in microseconds.
func pgbenchLatencies(t *testing.T, dir string) []time.Duration {
	files, _ := filepath.Glob(filepath.Join(dir, "pgbench*"))
	var out []time.Duration
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fs[2], 10, 64)
			if err == nil {
				out = append(out, time.Duration(us)*time.Microsecond)
			}
		}
		f.Close()
	}
	if len(out) == 0 {
		t.Fatalf("no pgbench transaction log in %s", dir)
	}
	return out
}

// cpuSeconds is the user and system CPU time of a process so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return math.NaN()
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return math.NaN()
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // clock ticks (USER_HZ)
}

// TestBenchReceiveMemory runs wal-receive as the synchronous standby under
// pgbench for 10 minutes (TIDEMARK_BENCH_RECEIVE_MEMORY_LOAD) and samples
// its RSS every 10 seconds: the peak, and whether it stays flat (the
// first and last minute's highest sample). --durable repository by default
// (TIDEMARK_BENCH_RECEIVE_MEMORY_DURABLE=local for the other).
func TestBenchReceiveMemory(t *testing.T) {
	Enabled(t)
	load := EnvDuration(t, "TIDEMARK_BENCH_RECEIVE_MEMORY_LOAD", 10*time.Minute)
	durable := os.Getenv("TIDEMARK_BENCH_RECEIVE_MEMORY_DURABLE")
	if durable == "" {
		durable = "repository"
	}
	srv := testenv.MinIOTLS(t)
	c := receiveBenchCluster(t)
	testenv.PGBenchInit(t, c, receiveScale)
	cmd := startWALReceive(srv, durable)(t, c, "bench_memory")
	logf, err := os.Create(filepath.Join(t.TempDir(), "receive.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'tidemark'")
	c.Exec(t, "SELECT pg_reload_conf()")
	deadline := time.Now().Add(2 * time.Minute)
	for c.QueryString(t, "SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = 'tidemark'") != "sync" {
		if time.Now().After(deadline) {
			t.Fatal("wal-receive did not become the synchronous standby")
		}
		time.Sleep(100 * time.Millisecond)
	}
	type sample struct {
		at   time.Duration
		rss  int64
		load float64
	}
	var samples []sample
	stop := make(chan struct{})
	sampled := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				samples = append(samples, sample{time.Since(start), TreeRSS(cmd.Process.Pid), loadAverage()})
			}
		}
	}()
	peak := SampleRSS(cmd.Process.Pid)
	startLSN := c.QueryString(t, "SELECT pg_current_wal_lsn()")
	res := testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: defaultReceiveClients, Jobs: 2, Duration: load})
	max := peak.Stop()
	close(stop)
	<-sampled
	var first, last int64
	for _, s := range samples {
		if s.at <= time.Minute {
			first = maxInt(first, s.rss)
		}
		if s.at >= load-time.Minute {
			last = maxInt(last, s.rss)
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nwal-receive --durable %s under pgbench (%d clients) for %v: %.0f tps, %.0f MB of WAL\n",
		durable, defaultReceiveClients, load, res.TPS, float64(pgLSNDiff(t, c, startLSN))/1e6)
	fmt.Fprintf(&sb, "peak RSS %.0f MiB (sampled every 100 ms); highest 10-second sample in the first minute %.0f MiB, in the last minute %.0f MiB\n",
		MiB(max), MiB(first), MiB(last))
	fmt.Fprintf(&sb, "RSS every 10 s (MiB):")
	for _, s := range samples {
		fmt.Fprintf(&sb, " %.0f", MiB(s.rss))
	}
	fmt.Fprintf(&sb, "\nmachine load average every 10 s:")
	for _, s := range samples {
		fmt.Fprintf(&sb, " %.1f", s.load)
	}
	sb.WriteByte('\n')
	t.Log(sb.String())
	fmt.Print(sb.String())
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
