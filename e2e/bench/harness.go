// Package bench is tidemark's benchmark harness: the building blocks that
// side-by-side benchmarks against peer tools share (a gate on
// TIDEMARK_BENCH, measuring a command's wall time and its process tree's
// peak memory, latency percentiles, timing every call of archive_command,
// sampling the archiver's lag, a pgBackRest repository on MinIO over TLS,
// a tidemark repository, and a side-by-side table with ratios), and the
// benchmarks themselves as test functions (run with `make bench`).
//
// It is not a test suite: numbers are printed, never asserted.
package bench

import (
	"bufio"
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
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
)

// Enabled skips the benchmark unless TIDEMARK_BENCH=1: benchmarks take
// minutes and load the machine, so `go test ./...` leaves them out.
func Enabled(t testing.TB) {
	t.Helper()
	if os.Getenv("TIDEMARK_BENCH") != "1" {
		t.Skip("benchmark: set TIDEMARK_BENCH=1 (make bench) to run it")
	}
}

// EnvDuration reads a benchmark setting from the environment (a Go
// duration), def when unset.
func EnvDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// Measurement is what Measure observed of one command (or a Span).
type Measurement struct {
	Wall time.Duration
	// CPU is user + system time of the command and every descendant it
	// waited for; StoreCPU what the object store used meanwhile (Meter).
	CPU, StoreCPU time.Duration
	// PeakTreeRSS is the largest sum of the resident sets of the command
	// and all its descendants seen by sampling (every SampleEvery).
	PeakTreeRSS int64
	// MaxRSS is the kernel's figure for the largest single process among
	// the command and the descendants it waited for (getrusage).
	MaxRSS int64
	// Fetched is what a tidemark restore says it fetched, in bytes.
	Fetched int64
	Err     error
}

// SampleEvery is how often Measure samples the process tree's memory.
const SampleEvery = 20 * time.Millisecond

// Measure runs cmd (not yet started) to completion and measures it.
func Measure(cmd *exec.Cmd) Measurement {
	var m Measurement
	start := time.Now()
	if err := cmd.Start(); err != nil {
		m.Err = err
		return m
	}
	stop := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		var max int64
		t := time.NewTicker(SampleEvery)
		defer t.Stop()
		for {
			if rss := TreeRSS(cmd.Process.Pid); rss > max {
				max = rss
			}
			select {
			case <-stop:
				peak <- max
				return
			case <-t.C:
			}
		}
	}()
	m.Err = cmd.Wait()
	m.Wall = time.Since(start)
	close(stop)
	m.PeakTreeRSS = <-peak
	m.CPU = processTreeCPU(cmd.ProcessState)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.MaxRSS = ru.Maxrss << 10 // KiB on Linux
	}
	return m
}

// TreeRSS returns the summed resident set size, in bytes, of pid and all
// its descendants (0 when pid is gone).
func TreeRSS(pid int) int64 {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := parentOf(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	var sum int64
	todo := []int{pid}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		sum += rssOf(p)
		todo = append(todo, children[p]...)
	}
	return sum
}

func parentOf(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[1])
	return pp, err == nil
}

func rssOf(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// RSSSampler records the peak of a memory figure until Stop.
type RSSSampler struct {
	stop chan struct{}
	peak chan int64
}

// SampleRSS starts sampling pid's process tree (TreeRSS).
func SampleRSS(pid int) *RSSSampler {
	return SampleMemory(func() int64 { return TreeRSS(pid) })
}

// SampleMemory starts sampling rss every SampleEvery.
func SampleMemory(rss func() int64) *RSSSampler {
	s := &RSSSampler{stop: make(chan struct{}), peak: make(chan int64, 1)}
	go func() {
		var peak int64
		t := time.NewTicker(SampleEvery)
		defer t.Stop()
		for {
			peak = max(peak, rss())
			select {
			case <-s.stop:
				s.peak <- peak
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends sampling and returns the peak in bytes.
func (s *RSSSampler) Stop() int64 {
	close(s.stop)
	return <-s.peak
}

// Percentile returns the p-th percentile (0..100) of ds by the
// nearest-rank method; 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Millis formats a duration as milliseconds for a table.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// MiB formats bytes as MiB for a table.
func MiB(n int64) float64 { return float64(n) / (1 << 20) }

// Table is a side-by-side comparison: one column per tool, one row per
// metric, and ratio columns between chosen pairs of tools.
type Table struct {
	Title   string
	Columns []string
	Rows    []Row
	// Ratios are pairs of column indexes: a column "A / B" is added for
	// each.
	Ratios [][2]int
}

// Row is one metric. NaN prints as "-".
type Row struct {
	Metric string
	Values []float64
	Format string // fmt verb for the values, default "%.1f"
}

// Add appends a row.
func (t *Table) Add(metric, format string, values ...float64) {
	t.Rows = append(t.Rows, Row{Metric: metric, Values: values, Format: format})
}

// Print writes the table, aligned.
func (t *Table) Print(w io.Writer) {
	if t.Title != "" {
		fmt.Fprintf(w, "\n%s\n", t.Title)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := append([]string{"metric"}, t.Columns...)
	for _, r := range t.Ratios {
		head = append(head, t.Columns[r[0]]+" / "+t.Columns[r[1]])
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, r := range t.Rows {
		f := r.Format
		if f == "" {
			f = "%.1f"
		}
		cells := []string{r.Metric}
		for _, v := range r.Values {
			cells = append(cells, cell(f, v))
		}
		for _, q := range t.Ratios {
			a, b := at(r.Values, q[0]), at(r.Values, q[1])
			cells = append(cells, cell("%.2fx", a/b))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
}

func at(v []float64, i int) float64 {
	if i < len(v) {
		return v[i]
	}
	return math.NaN()
}

func cell(format string, v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// CommandTimer wraps a command so that every call of it is timed: a bash
// script (no extra processes: bash's own clock, and its own
// /proc/PID/stat for the CPU time of the children it waited for) appends
// "start end status child-cpu-ticks last-argument" to a log for each call. It is how archive_command's and
// restore_command's latency is measured, the same way for every tool.
type CommandTimer struct {
	// Script runs the command and its arguments after it, or with -c a
	// shell command line (evaluated by the script's bash, as sh would run
	// it) followed by arguments for the log only.
	Script string
	Log    string
}

// NewCommandTimer writes the wrapper script and its log in dir, which the
// user who runs the command must be able to write.
func NewCommandTimer(dir string) (*CommandTimer, error) {
	ct := &CommandTimer{Script: filepath.Join(dir, "timed"), Log: filepath.Join(dir, "timed.log")}
	script := "#!/bin/bash\n" +
		"t0=$EPOCHREALTIME\n" +
		"if [ \"$1\" = -c ]; then eval \"$2\"; else \"$@\"; fi\n" +
		"rc=$?\n" +
		"t1=$EPOCHREALTIME\n" +
		// Fields 16 and 17, cutime and cstime: the command's whole tree
		// (the script's name has no spaces, so the fields split cleanly).
		"read -r -a st < /proc/$$/stat\n" +
		"echo \"$t0 $t1 $rc $((st[15] + st[16])) ${@: -1}\" >> " + shellQuote(ct.Log) + "\n" +
		"exit $rc\n"
	if err := os.WriteFile(ct.Script, []byte(script), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(ct.Log, nil, 0o666); err != nil {
		return nil, err
	}
	return ct, os.Chmod(ct.Log, 0o666)
}

// Call is one timed call.
type Call struct {
	Start, End time.Time
	Status     int
	CPU        time.Duration // user + system time of the call's process tree
	Arg        string
}

// Duration is the call's wall time.
func (c Call) Duration() time.Duration { return c.End.Sub(c.Start) }

// Calls reads the calls logged so far.
func (ct *CommandTimer) Calls() ([]Call, error) {
	f, err := os.Open(ct.Log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Call
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			continue
		}
		t0, err0 := parseEpoch(fs[0])
		t1, err1 := parseEpoch(fs[1])
		st, err2 := strconv.Atoi(fs[2])
		ticks, err3 := strconv.ParseInt(fs[3], 10, 64)
		if err0 != nil || err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		c := Call{Start: t0, End: t1, Status: st, CPU: time.Duration(ticks) * clockTick}
		if len(fs) > 4 {
			c.Arg = fs[4]
		}
		out = append(out, c)
	}
	return out, sc.Err()
}

func parseEpoch(s string) (time.Time, error) {
	sec, frac, _ := strings.Cut(s, ".")
	si, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	frac = (frac + "000000000")[:9]
	ns, err := strconv.ParseInt(frac, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(si, ns), nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Run runs a prepared command and returns its combined output in the
// error when it fails.
func Run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return nil
}
