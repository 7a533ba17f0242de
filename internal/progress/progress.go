// Package progress is how a long job (restore, verify --read-data, gc,
// drill) tells how far it is: the job keeps a Counter of the units it has
// done of those it has to do in its current phase, and whoever shows
// progress samples it with Watch. The rendering (a status line on a
// terminal, a log line otherwise) lives in one place, cmd/tidemark; the
// counting lives in the jobs.
//
// A nil *Counter counts nothing, so a job calls it unconditionally.
package progress

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
)

// Counter is a job's progress. Safe for concurrent use.
type Counter struct {
	mu      sync.Mutex
	phase   string
	unit    string // "" for bytes
	total   int64
	started time.Time // of the phase
	began   time.Time // of the job
	done    atomic.Int64
}

// NewCounter returns a counter for a job starting now.
func NewCounter() *Counter {
	now := time.Now()
	return &Counter{began: now, started: now}
}

// Phase starts a phase of total units (bytes when unit is ""; total 0:
// unknown) and counts from zero.
func (c *Counter) Phase(name string, total int64, unit string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.phase, c.total, c.unit, c.started = name, total, unit, time.Now()
	c.done.Store(0)
	c.mu.Unlock()
}

// Add counts n units done.
func (c *Counter) Add(n int64) {
	if c != nil {
		c.done.Add(n)
	}
}

// Report is a counter's state at one moment.
type Report struct {
	Phase       string
	Unit        string // "" for bytes
	Done, Total int64
	Elapsed     time.Duration // since the job began
	// Rate is Done per second of the phase; ETA the phase's time left at
	// that rate (0 when unknown).
	Rate  float64
	ETA   time.Duration
	Final bool
}

// Report samples the counter.
func (c *Counter) Report() Report {
	c.mu.Lock()
	r := Report{Phase: c.phase, Unit: c.unit, Total: c.total, Done: c.done.Load(), Elapsed: time.Since(c.began)}
	phase := time.Since(c.started)
	c.mu.Unlock()
	if s := phase.Seconds(); s > 0 {
		r.Rate = float64(r.Done) / s
	}
	if r.Rate > 0 && r.Total > r.Done {
		r.ETA = time.Duration(float64(r.Total-r.Done) / r.Rate * float64(time.Second))
	}
	return r
}

func (r Report) amount(n int64) string {
	if r.Unit == "" {
		return bytesize.Format(n)
	}
	return fmt.Sprintf("%d %s", n, r.Unit)
}

// String is one line for a terminal or a log: "fetch 45.0% 1.2 GiB of
// 2.7 GiB, 120.0 MiB/s, eta 12s".
func (r Report) String() string {
	if r.Final {
		return fmt.Sprintf("done in %s", r.Elapsed.Round(100*time.Millisecond))
	}
	if r.Total <= 0 {
		s := r.Phase
		if r.Done > 0 {
			s += " " + r.amount(r.Done)
		}
		return fmt.Sprintf("%s (%s)", s, r.Elapsed.Round(time.Second))
	}
	pct := min(100, 100*float64(r.Done)/float64(r.Total))
	s := fmt.Sprintf("%s %5.1f%% %s of %s", r.Phase, pct, r.amount(r.Done), r.amount(r.Total))
	if r.Unit == "" {
		s += fmt.Sprintf(", %s/s", bytesize.Format(int64(r.Rate)))
	}
	if r.ETA > 0 {
		s += ", eta " + r.ETA.Round(time.Second).String()
	}
	return s
}

// Watch calls fn with c's report every interval until the returned stop
// runs, which reports once more, with Final set.
func Watch(c *Counter, every time.Duration, fn func(Report)) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fn(c.Report())
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
			r := c.Report()
			r.Final = true
			fn(r)
		})
	}
}
