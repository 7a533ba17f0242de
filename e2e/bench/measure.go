package bench

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// How a run's CPU time is counted, the same way for every tool:
//
//   - The command's own process tree: user + system time of the command and
//     of every descendant it waited for, as the kernel reports them when
//     the command is reaped (wait4's rusage). pgBackRest's local worker
//     processes (process-max) are waited for, so they count.
//   - The object store's share: MinIO's own user + system time
//     (/proc/PID/stat utime + stime) across the run. Only one tool runs at
//     a time, so what MinIO spends meanwhile is that tool's requests.
//   - Detached processes a tool leaves to work in the background (the
//     wal-fetch prefetcher, pgBackRest's archive-async process and its
//     workers): sampled from /proc every cpuSampleEvery; what one does
//     after its last sample is not seen, so the figure is a lower bound by
//     at most that much per process.
//   - Commands PostgreSQL runs (archive_command, restore_command): the
//     CommandTimer wrapper logs the CPU of each call's tree (bash's times).
//
// PostgreSQL's own work (checkpoint, replay) is the same for every tool
// and not counted.

// clockTick is the unit of /proc/PID/stat's times: USER_HZ, 100 on every
// Linux architecture Go runs on.
const clockTick = 10 * time.Millisecond

// cpuSampleEvery is how often detached processes are sampled.
const cpuSampleEvery = 20 * time.Millisecond

// procStat is what the benchmark reads of /proc/PID/stat.
type procStat struct {
	comm    string
	ppid    int
	session int
	// own is utime + stime; reaped is cutime + cstime (children waited
	// for).
	own, reaped time.Duration
}

func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses: it ends at the
	// last ')'.
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return procStat{}, false
	}
	f := strings.Fields(string(b[j+1:]))
	// f[0] is field 3 (state): utime is field 14, so f[11].
	if len(f) < 15 {
		return procStat{}, false
	}
	num := func(k int) int64 { n, _ := strconv.ParseInt(f[k], 10, 64); return n }
	return procStat{
		comm:    string(b[i+1 : j]),
		ppid:    int(num(1)),
		session: int(num(3)),
		own:     time.Duration(num(11)+num(12)) * clockTick,
		reaped:  time.Duration(num(13)+num(14)) * clockTick,
	}, true
}

// ProcCPU is the user + system time pid has used itself (0 when it is
// gone).
func ProcCPU(pid int) time.Duration {
	st, _ := readProcStat(pid)
	return st.own
}

// StorePID finds the process of the S3 server srv (by its listening
// address on its command line), 0 when it cannot.
func StorePID(srv *testenv.S3Server) int {
	addr := strings.TrimPrefix(strings.TrimPrefix(srv.Endpoint, "https://"), "http://")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if slices.Contains(args, addr) && slices.Contains(args, "server") {
			return pid
		}
	}
	return 0
}

// Meter measures commands and what the object store spends meanwhile.
type Meter struct {
	// StorePID is the object store's process (0: not counted).
	StorePID int
}

// NewMeter is a Meter for commands that use srv.
func NewMeter(t testing.TB, srv *testenv.S3Server) *Meter {
	t.Helper()
	pid := StorePID(srv)
	if pid == 0 {
		t.Logf("the S3 server's process was not found: its CPU is not counted")
	}
	return &Meter{StorePID: pid}
}

// Measure runs cmd (not yet started) to completion and measures it, with
// the object store's CPU across the run.
func (m *Meter) Measure(cmd *exec.Cmd) Measurement {
	var store0 time.Duration
	if m != nil && m.StorePID != 0 {
		store0 = ProcCPU(m.StorePID)
	}
	r := Measure(cmd)
	if m != nil && m.StorePID != 0 {
		r.StoreCPU = ProcCPU(m.StorePID) - store0
	}
	return r
}

// Span measures what happens between Start and Stop that no single command
// covers (a recovery: the restore, the server's restore_command calls, a
// detached prefetcher): wall time, the object store's CPU, and the CPU of
// detached processes that match.
type Span struct {
	m     *Meter
	start time.Time
	store time.Duration
	det   *DetachedCPU
}

// Start begins a span; detached, if not nil, says which background
// processes count as the tool's (see DetachedCPU).
func (m *Meter) Start(detached func(procStat, []string) bool) *Span {
	s := &Span{m: m, start: time.Now()}
	if m != nil && m.StorePID != 0 {
		s.store = ProcCPU(m.StorePID)
	}
	if detached != nil {
		s.det = SampleDetached(detached)
	}
	return s
}

// Stop ends the span: wall time since Start, StoreCPU, and CPU the
// detached processes used (in CPU).
func (s *Span) Stop() Measurement {
	var r Measurement
	r.Wall = time.Since(s.start)
	if s.m != nil && s.m.StorePID != 0 {
		r.StoreCPU = ProcCPU(s.m.StorePID) - s.store
	}
	if s.det != nil {
		r.CPU = s.det.Stop()
	}
	return r
}

// Detached lists the command lines of the background processes counted.
func (s *Span) Detached() []string {
	if s.det == nil {
		return nil
	}
	return s.det.Matched()
}

// DetachedCPU adds up the CPU time of processes that match a predicate,
// sampled every cpuSampleEvery: each process's own time (never its
// reaped children's, which are sampled themselves if they match).
type DetachedCPU struct {
	stop chan struct{}
	done chan time.Duration

	mu   sync.Mutex
	seen map[string]bool // command lines matched, for the log
}

// SampleDetached starts sampling the processes for which match (given the
// process's stat and command line) is true.
func SampleDetached(match func(st procStat, args []string) bool) *DetachedCPU {
	d := &DetachedCPU{stop: make(chan struct{}), done: make(chan time.Duration, 1), seen: map[string]bool{}}
	// What a process had used before sampling began is not the span's.
	base := map[int]time.Duration{}
	last := map[int]time.Duration{}
	// Processes that did not match are looked at again for a while: a
	// child forked by a tool has its parent's name and arguments until it
	// executes its own.
	skip := map[int]int{}
	const recheck = 50
	scan := func(first bool) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || skip[pid] >= recheck {
				continue
			}
			st, ok := readProcStat(pid)
			if !ok {
				continue
			}
			if _, known := last[pid]; !known {
				b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
				if err != nil {
					continue
				}
				args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
				if !match(st, args) {
					skip[pid]++
					if first {
						skip[pid] = recheck // there before the span: not the span's
					}
					continue
				}
				d.mu.Lock()
				d.seen[strings.Join(args, " ")] = true
				d.mu.Unlock()
				if first {
					base[pid] = st.own
				}
			}
			last[pid] = st.own
		}
	}
	scan(true)
	go func() {
		t := time.NewTicker(cpuSampleEvery)
		defer t.Stop()
		for {
			select {
			case <-d.stop:
				scan(false)
				var sum time.Duration
				for pid, v := range last {
					sum += v - base[pid]
				}
				d.done <- sum
				return
			case <-t.C:
				scan(false)
			}
		}
	}()
	return d
}

// Stop ends sampling and returns the CPU time seen.
func (d *DetachedCPU) Stop() time.Duration {
	close(d.stop)
	return <-d.done
}

// Matched lists the command lines of the processes counted.
func (d *DetachedCPU) Matched() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for k := range d.seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Detached matches processes named comm (the kernel's 15-byte name) with
// an argument that contains one of marks: the background processes a tool
// started under PostgreSQL leaves working (tidemark's wal-prefetch,
// pgBackRest's archive-get:async and its archive-get:local workers).
func Detached(comm string, marks ...string) func(procStat, []string) bool {
	return func(st procStat, args []string) bool {
		if st.comm != comm {
			return false
		}
		for _, a := range args {
			for _, m := range marks {
				if strings.Contains(a, m) {
					return true
				}
			}
		}
		return false
	}
}

// --- alternating pairs ---------------------------------------------------

// DefaultPairs is how many alternating pairs each timed step runs unless
// TIDEMARK_BENCH_PAIRS says otherwise.
const DefaultPairs = 3

// Pairs is the number of alternating pairs of timed runs per step:
// TIDEMARK_BENCH_PAIRS, default DefaultPairs.
func Pairs(t testing.TB) int {
	t.Helper()
	v := os.Getenv("TIDEMARK_BENCH_PAIRS")
	if v == "" {
		return DefaultPairs
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("TIDEMARK_BENCH_PAIRS=%q: want a number of pairs, at least 1", v)
	}
	return n
}

// Alternate runs a and b in turn, n times each (a, b, a, b, ...), and
// returns their measurements in order. Each run prepares its own start
// (settle, a fresh directory).
func Alternate(n int, a, b func(i int) Measurement) (as, bs []Measurement) {
	for i := range n {
		as = append(as, a(i))
		if b != nil {
			bs = append(bs, b(i))
		}
	}
	return as, bs
}

// --- reporting -----------------------------------------------------------

// Series is one figure over the runs of a step.
type Series []float64

// Median is the middle value (the mean of the two middle ones for an even
// count); NaN for none.
func (s Series) Median() float64 {
	v := s.sorted()
	switch n := len(v); {
	case n == 0:
		return math.NaN()
	case n%2 == 1:
		return v[n/2]
	default:
		return (v[n/2-1] + v[n/2]) / 2
	}
}

// Range is the smallest and largest value.
func (s Series) Range() (lo, hi float64) {
	v := s.sorted()
	if len(v) == 0 {
		return math.NaN(), math.NaN()
	}
	return v[0], v[len(v)-1]
}

func (s Series) sorted() []float64 {
	var v []float64
	for _, x := range s {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	slices.Sort(v)
	return v
}

// Of maps measurements to a series.
func Of(ms []Measurement, f func(Measurement) float64) Series {
	s := make(Series, len(ms))
	for i, m := range ms {
		s[i] = f(m)
	}
	return s
}

// GiB is bytes in GiB.
func GiB(n int64) float64 { return float64(n) / (1 << 30) }

// Wall, CPUPerGiB, StorePerGiB and RSS are the usual figures of a run.
func Wall(m Measurement) float64 { return m.Wall.Seconds() }

// CPUPerGiB is the tool's and the store's CPU seconds per GiB of gib.
func CPUPerGiB(gib float64) func(Measurement) float64 {
	return func(m Measurement) float64 { return (m.CPU + m.StoreCPU).Seconds() / gib }
}

// StorePerGiB is the store's share of CPUPerGiB.
func StorePerGiB(gib float64) func(Measurement) float64 {
	return func(m Measurement) float64 { return m.StoreCPU.Seconds() / gib }
}

// RSS is the peak resident memory of the process tree in MiB.
func RSS(m Measurement) float64 { return MiB(max(m.PeakTreeRSS, m.MaxRSS)) }

// PairTable prints steps of alternating runs: for each figure the median
// and range of each tool and the ratio of the medians.
type PairTable struct {
	Title   string
	Columns [2]string // the two tools, e.g. tidemark and pgBackRest
	rows    []pairRow
}

type pairRow struct {
	metric string
	format string
	a, b   Series
	target string
	header bool
}

// Step starts a group of rows.
func (t *PairTable) Step(name string) {
	t.rows = append(t.rows, pairRow{metric: name, header: true})
}

// Add appends a figure; b may be nil (a figure of the first tool only).
// target, if not empty, is printed beside the ratio.
func (t *PairTable) Add(metric, format string, a, b Series, target string) {
	t.rows = append(t.rows, pairRow{metric: "  " + metric, format: format, a: a, b: b, target: target})
}

// AddRuns adds the usual figures of a step: wall time, CPU per GiB of gib
// (tool + store, and the store's share) and peak RSS.
func (t *PairTable) AddRuns(a, b []Measurement, gib float64, wallTarget, cpuTarget string) {
	t.Add("wall, s", "%.2f", Of(a, Wall), Of(b, Wall), wallTarget)
	if gib > 0 {
		t.Add("CPU s/GiB, tool + object store", "%.2f", Of(a, CPUPerGiB(gib)), Of(b, CPUPerGiB(gib)), cpuTarget)
		t.Add("  of which the object store", "%.2f", Of(a, StorePerGiB(gib)), Of(b, StorePerGiB(gib)), "")
	}
	t.Add("peak RSS of the process tree, MiB", "%.0f", Of(a, RSS), Of(b, RSS), "")
}

// Print writes the table, aligned.
func (t *PairTable) Print(w io.Writer) {
	if t.Title != "" {
		fmt.Fprintf(w, "\n%s\n", t.Title)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "step / figure\t%s median (range)\t%s median (range)\tratio of medians\ttarget\t\n", t.Columns[0], t.Columns[1])
	for _, r := range t.rows {
		if r.header {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\n", r.metric)
			continue
		}
		ratio := "-"
		if len(r.b) > 0 {
			ratio = cell("%.2fx", r.a.Median()/r.b.Median())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r.metric, spread(r.format, r.a), spread(r.format, r.b), ratio, r.target)
	}
	tw.Flush()
}

// spread formats a series as "median (lo-hi)".
func spread(format string, s Series) string {
	if len(s) == 0 {
		return "-"
	}
	med := s.Median()
	if math.IsNaN(med) {
		return "-"
	}
	lo, hi := s.Range()
	if len(s) == 1 {
		return cell(format, med)
	}
	return fmt.Sprintf("%s (%s-%s)", cell(format, med), cell(format, lo), cell(format, hi))
}

// Report prints a table to the test log and to stdout, and appends it to
// TIDEMARK_BENCH_REPORT when set (a file that collects the tables of a
// run).
func Report(t testing.TB, print func(io.Writer)) {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "\n(%s, %d cores, load average %.1f at the end)\n", time.Now().UTC().Format(time.RFC3339), runtimeCPUs(), loadAverage())
	print(&b)
	t.Log(b.String())
	fmt.Print(b.String())
	if p := os.Getenv("TIDEMARK_BENCH_REPORT"); p != "" {
		if err := appendFile(p, b.Bytes()); err != nil {
			t.Errorf("TIDEMARK_BENCH_REPORT: %v", err)
		}
	}
}

var reportMu sync.Mutex

func appendFile(p string, b []byte) error {
	reportMu.Lock()
	defer reportMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// waitQuiet waits, before a timed step, until the machine's 1-minute load
// average is below TIDEMARK_BENCH_MAX_LOAD (unset: no wait), for at most
// TIDEMARK_BENCH_QUIET_WAIT (default 30 min), and logs what it found.
func waitQuiet(t testing.TB) {
	t.Helper()
	v := os.Getenv("TIDEMARK_BENCH_MAX_LOAD")
	if v == "" {
		return
	}
	limit, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatalf("TIDEMARK_BENCH_MAX_LOAD=%q: want a load average such as 1.5", v)
	}
	wait := 30 * time.Minute
	if s := os.Getenv("TIDEMARK_BENCH_QUIET_WAIT"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil {
			t.Fatalf("TIDEMARK_BENCH_QUIET_WAIT=%q: %v", s, err)
		}
	}
	deadline := time.Now().Add(wait)
	for {
		l := loadAverage()
		if l < limit {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("load average %.1f still above %.1f after %v: timing anyway", l, limit, wait)
			return
		}
		time.Sleep(10 * time.Second)
	}
}

// processTreeCPU is the user + system time a finished command's tree used.
func processTreeCPU(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return ps.UserTime() + ps.SystemTime()
}

// loadAverage is the 1-minute load average: anything else running on the
// machine shows here, and makes latencies worth nothing.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

func runtimeCPUs() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}
