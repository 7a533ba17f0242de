// Package metrics is every Prometheus metric tidemark exports: what a
// command did (a backup, a drill, a verify, a gc, an expire), what the
// repository holds, and what the agent is doing. The one-shot commands write
// a Set to a node_exporter textfile (--metrics-file); the agent serves its
// own over HTTP (--metrics-listen). Names, help texts and labels are defined
// here once, so the textfile and the endpoint never disagree, and
// docs/operations.md lists them (a test holds the two to each other).
//
// It is not a job: it reads the results the jobs return and the
// repository's objects, and it never changes anything.
package metrics

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Set is a group of metrics written together: one textfile, or one part
// of a scrape.
type Set struct {
	reg  *prometheus.Registry
	vecs map[string]*prometheus.GaugeVec
}

// NewSet returns an empty set.
func NewSet() *Set {
	return &Set{reg: prometheus.NewRegistry(), vecs: map[string]*prometheus.GaugeVec{}}
}

// Gatherer is the set as Prometheus gathers it.
func (s *Set) Gatherer() prometheus.Gatherer { return s.reg }

// gauge sets a gauge; labels are name, value pairs. Every sample of a
// family has the same label names.
func (s *Set) gauge(name, help string, value float64, labels ...string) {
	names := make([]string, 0, len(labels)/2)
	values := make([]string, 0, len(labels)/2)
	for i := 0; i+1 < len(labels); i += 2 {
		names = append(names, labels[i])
		values = append(values, labels[i+1])
	}
	v, ok := s.vecs[name]
	if !ok {
		v = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, names)
		s.reg.MustRegister(v)
		s.vecs[name] = v
	}
	v.WithLabelValues(values...).Set(value)
}

// counter adds an unlabelled counter with its current value, read from
// the component that counts (a running agent).
func (s *Set) counter(name, help string, value float64) {
	s.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return value }))
}

// WriteFile replaces path with the set in the text format, atomically
// (prometheus.WriteToTextfile: a temporary file beside it, renamed), so a
// scrape of node_exporter's textfile collector never sees half a file.
func (s *Set) WriteFile(path string) error {
	if err := prometheus.WriteToTextfile(path, s.reg); err != nil {
		return fmt.Errorf("--metrics-file %s: %w", path, err)
	}
	return nil
}

// Write writes the set in the text format.
func (s *Set) Write(w io.Writer) error {
	mfs, err := s.reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}

// UnixSeconds is a time as Prometheus timestamps are written: Unix seconds,
// 0 for the zero time.
func UnixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// clusterLabel is the label every per-cluster metric has: the system
// identifier.
func clusterLabel(c uint64) []string { return []string{"cluster", strconv.FormatUint(c, 10)} }
