package metrics

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/tidemarkdb/tidemark/wal"
)

// AddReceive adds the status of a running wal-receive: how far WAL has
// arrived, is durable (reported flushed) and is in the repository, the
// lags, the slot, and the commits waiting on a synchronous standby.
func (s *Set) AddReceive(st wal.ReceiveStatus) {
	l := clusterLabel(st.Cluster)
	s.gauge("tidemark_receive_status_timestamp_seconds", "When wal-receive last reported its status (Unix time).", UnixSeconds(st.Updated), l...)
	s.gauge("tidemark_receive_connected", "1 while wal-receive streams from a server.", boolValue(st.Connected), l...)
	s.gauge("tidemark_receive_timeline", "The timeline wal-receive streams.", float64(st.Timeline), l...)
	s.gauge("tidemark_receive_received_lsn", "End of the WAL wal-receive received (LSN as a number).", float64(st.Received), l...)
	s.gauge("tidemark_receive_flushed_lsn", "End of the WAL durable and reported flushed (LSN as a number).", float64(st.Flushed), l...)
	s.gauge("tidemark_receive_uploaded_lsn", "End of the WAL in the repository without a hole (LSN as a number).", float64(st.Uploaded), l...)
	s.gauge("tidemark_receive_lag_bytes", "The server's WAL end minus the flushed position.", float64(st.LagBytes), l...)
	s.gauge("tidemark_receive_lag_seconds", "How long the oldest received byte not yet durable has waited.", st.LagSeconds, l...)
	s.gauge("tidemark_receive_upload_lag_bytes", "Flushed WAL not yet in the repository.", float64(st.UploadLagBytes), l...)
	s.gauge("tidemark_receive_upload_lag_seconds", "How long the oldest byte not yet in the repository has waited.", st.UploadLagSeconds, l...)
	s.gauge("tidemark_receive_commits_waiting", "Backends waiting for a synchronous standby on the primary (-1: unknown).", float64(st.CommitsWaiting), l...)
	if st.SlotActive != nil {
		s.gauge("tidemark_receive_slot_active", "1 while the replication slot is in use.", boolValue(*st.SlotActive), l...)
	}
	s.gauge("tidemark_receive_sync", "1 while the server counts wal-receive as a synchronous standby (sync_state sync or quorum).",
		boolValue(st.SyncState == "sync" || st.SyncState == "quorum"), l...)
	s.gauge("tidemark_receive_pending_segments", "Segments held and not yet archived whole.", float64(st.PendingSegments), l...)
	s.gauge("tidemark_receive_pieces_total", "Pieces uploaded since wal-receive started.", float64(st.Pieces), l...)
	s.gauge("tidemark_receive_segments_total", "Segments archived whole since wal-receive started.", float64(st.Segments), l...)
	s.gauge("tidemark_receive_upload_failures_total", "Failed uploads (retried) since wal-receive started.", float64(st.UploadFailures), l...)
}

// Receive holds the newest status of a running wal-receive for its
// endpoint (--metrics-listen).
type Receive struct {
	mu sync.Mutex
	st *wal.ReceiveStatus
}

// Update records the receiver's newest status.
func (r *Receive) Update(st wal.ReceiveStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st = &st
}

// Set returns the receiver's metrics as of its newest status.
func (r *Receive) Set() *Set {
	s := NewSet()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st != nil {
		s.AddReceive(*r.st)
	}
	return s
}

// Handler serves the receiver's metrics and the Go runtime's and the
// process's (its memory is worth watching: it is long-running).
func (r *Receive) Handler() http.Handler {
	proc := prometheus.NewRegistry()
	proc.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g := prometheus.Gatherers{proc, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return r.Set().reg.Gather() })}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}
