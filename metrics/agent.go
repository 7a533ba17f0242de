package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/verify/drill"
	"github.com/tidemarkdb/tidemark/wal"
)

// DefaultRefresh is how often the agent reads the repository state it
// reports (one LIST of the cluster's snapshots, a GET of each new one, one
// LIST and GET of the newest drill report).
const DefaultRefresh = time.Minute

// AgentStatser is the running agent (*wal.Agent).
type AgentStatser interface {
	Stats() wal.AgentStats
	Lag() []wal.Lag
}

// AgentOptions configure an Agent's metrics.
type AgentOptions struct {
	Repo    *repo.Repo
	Cluster uint64
	// Agent is nil until the agent is built (its repository open).
	Agent   AgentStatser
	Refresh time.Duration // default DefaultRefresh
	// File, when set, is rewritten every FileEvery and after each
	// heartbeat, without the repository state (see set).
	File      string
	FileEvery time.Duration // default DefaultFileEvery
	Logger    *slog.Logger
}

// DefaultFileEvery is how often the agent rewrites its metrics file
// besides after each heartbeat and refresh.
const DefaultFileEvery = 15 * time.Second

// Agent holds the agent's metrics: its own work (read from the agent at
// each scrape), the server's archiver as the last heartbeat saw it, and
// the repository state it reads every Refresh: the cluster's last backup,
// number of snapshots and last drill.
type Agent struct {
	opts AgentOptions
	log  *slog.Logger

	mu        sync.Mutex
	beat      *wal.Beat
	snaps     map[string]*repo.Snapshot // by snapshot id
	drill     *drill.Report
	refreshed time.Time
}

// NewAgent returns the agent's metrics.
func NewAgent(opts AgentOptions) *Agent {
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.FileEvery <= 0 {
		opts.FileEvery = DefaultFileEvery
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{opts: opts, log: opts.Logger, snaps: map[string]*repo.Snapshot{}}
}

// SetAgent attaches the running agent.
func (a *Agent) SetAgent(s AgentStatser) {
	a.mu.Lock()
	a.opts.Agent = s
	a.mu.Unlock()
}

// Beat records a heartbeat (wal.HeartbeatOptions.OnBeat).
func (a *Agent) Beat(b wal.Beat) {
	a.mu.Lock()
	a.beat = &b
	a.mu.Unlock()
	a.writeFile()
}

// writeFile rewrites File, if set; a failure is logged: the agent's work
// goes on, and a stale file is what monitoring notices.
func (a *Agent) writeFile() {
	if a.opts.File == "" {
		return
	}
	if err := a.set(false).WriteFile(a.opts.File); err != nil {
		a.log.Warn("metrics file", "err", err)
	}
}

// Refresh reads the repository state: the cluster's snapshots (only those
// not read before) and its newest drill report.
func (a *Agent) Refresh(ctx context.Context) error {
	r, cluster := a.opts.Repo, a.opts.Cluster
	prefix := repo.SnapshotPrefix + strconv.FormatUint(cluster, 10) + "/"
	seen := map[string]bool{}
	for oi, err := range r.Store().List(ctx, prefix, "") {
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		id := strings.TrimPrefix(oi.Key, prefix)
		if strings.Contains(id, "/") {
			continue
		}
		seen[id] = true
	}
	a.mu.Lock()
	var fresh []string
	for id := range seen {
		if a.snaps[id] == nil {
			fresh = append(fresh, id)
		}
	}
	a.mu.Unlock()
	loaded := map[string]*repo.Snapshot{}
	for _, id := range fresh {
		s, err := r.LoadSnapshot(ctx, cluster, id)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", id, err)
		}
		loaded[id] = s
	}
	rep, err := drill.Latest(ctx, r, cluster)
	if err != nil {
		return fmt.Errorf("newest drill report: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.snaps {
		if !seen[id] {
			delete(a.snaps, id) // expired
		}
	}
	for id, s := range loaded {
		a.snaps[id] = s
	}
	a.drill = rep
	a.refreshed = time.Now()
	return nil
}

// Run refreshes the repository state every Refresh and rewrites File
// every FileEvery until ctx ends. A failed refresh is logged and keeps the
// previous state (its age shows in
// tidemark_agent_repository_refresh_timestamp_seconds).
func (a *Agent) Run(ctx context.Context) {
	refresh := time.NewTicker(a.opts.Refresh)
	defer refresh.Stop()
	file := time.NewTicker(a.opts.FileEvery)
	defer file.Stop()
	failing := false
	for {
		err := a.Refresh(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			a.log.Warn("metrics: cannot read the repository state; retrying every refresh", "err", err)
			failing = true
		case err == nil && failing:
			a.log.Info("metrics: repository state read again")
			failing = false
		}
		a.writeFile()
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-file.C:
				a.writeFile()
			case <-refresh.C:
				break wait
			}
		}
	}
}

// Set returns the agent's metrics as they are now, as the endpoint serves
// them.
func (a *Agent) Set() *Set { return a.set(true) }

// set returns the agent's metrics; withRepo adds the repository state. The
// textfile leaves it out: backup and drill write those series into their
// own files, and node_exporter refuses a series that two files hold.
func (a *Agent) set(withRepo bool) *Set {
	s := NewSet()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.opts.Agent != nil {
		st := a.opts.Agent.Stats()
		s.counter("tidemark_agent_archived_files_total", "Files the agent made durable in the repository (uploaded, or found already archived).", float64(st.Files))
		s.counter("tidemark_agent_uploaded_files_total", "Files the agent uploaded.", float64(st.Uploaded))
		s.counter("tidemark_agent_archived_bytes_total", "Bytes of the files the agent made durable.", float64(st.Bytes))
		s.counter("tidemark_agent_stored_bytes_total", "Bytes the agent stored for the files it uploaded (compressed, encrypted).", float64(st.Stored))
		s.counter("tidemark_agent_upload_failures_total", "Failed upload attempts of the agent.", float64(st.Failures))
		s.gauge("tidemark_agent_queued_files", "Files waiting for an upload by the agent, or in one.", float64(st.Queued))
		s.gauge("tidemark_agent_last_archived_timestamp_seconds", "When the agent last made a file durable (Unix time).", UnixSeconds(st.LastArchived))
		s.gauge("tidemark_archive_ready_files", "Files PostgreSQL marked ready for archiving and has not seen archived yet (pg_wal/archive_status/*.ready).", float64(st.Ready))
		for _, l := range a.opts.Agent.Lag() {
			rl := []string{"repository", l.Store}
			s.gauge("tidemark_archive_repository_lag_files", "Ready WAL files the agent has not yet made durable in this repository.", float64(l.Files), rl...)
			s.gauge("tidemark_archive_repository_lag_seconds", "How long the oldest of them has waited.", l.Oldest.Seconds(), rl...)
			if !l.LastArchived.IsZero() {
				s.gauge("tidemark_archive_repository_last_archived_timestamp_seconds", "When the agent last made a file durable in this repository (Unix time).", UnixSeconds(l.LastArchived), rl...)
			}
		}
	}
	if a.beat != nil {
		s.AddHeartbeat(*a.beat)
	}
	if withRepo && !a.refreshed.IsZero() {
		s.gauge("tidemark_agent_repository_refresh_timestamp_seconds", "When the agent last read the repository state it reports (Unix time).", UnixSeconds(a.refreshed))
		snaps := make([]*repo.Snapshot, 0, len(a.snaps))
		for _, sn := range a.snaps {
			snaps = append(snaps, sn)
		}
		s.addSnapshots(snaps)
		if len(snaps) == 0 {
			s.gauge("tidemark_snapshots", "Snapshots in the repository.", 0, clusterLabel(a.opts.Cluster)...)
		}
		if a.drill != nil {
			s.AddDrill(a.drill)
		}
	}
	return s
}

// Handler serves the agent's metrics (built afresh at each scrape) and the
// Go runtime's and the process's, in the Prometheus exposition formats.
func (a *Agent) Handler() http.Handler {
	proc := prometheus.NewRegistry()
	proc.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g := prometheus.Gatherers{proc, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return a.Set().reg.Gather() })}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: errorLog{a.log}})
}

// Serve answers GET /metrics on addr until ctx ends. The listener is open
// when it returns without error; errors of the server after that are
// logged.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "tidemark agent: metrics at /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return ln.Addr(), nil
}

// errorLog passes promhttp's errors to the logger.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Println(v ...any) { e.log.Warn("metrics endpoint", "err", fmt.Sprint(v...)) }
