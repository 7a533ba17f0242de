package wal

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/pg"
)

// ReceiveStatus is what a running receiver reports about itself, in
// Dir/status.json (rewritten about once a second) and to
// ReceiveOptions.OnStatus. LSNs are on Timeline.
type ReceiveStatus struct {
	Updated time.Time `json:"updated"`
	PID     int       `json:"pid"`
	Cluster uint64    `json:"cluster,string"`
	Durable string    `json:"durable"`
	Slot    string    `json:"slot"`
	// Connected: a stream is up, from Server (host:port), whose timeline
	// is ServerTimeline; WALPID is its walsender's process id.
	Connected      bool          `json:"connected"`
	Server         string        `json:"server,omitempty"`
	ServerTimeline pg.TimelineID `json:"server_timeline,omitempty"`
	WALPID         uint32        `json:"walsender_pid,omitempty"`
	Timeline       pg.TimelineID `json:"timeline"`
	// Received: the end of the WAL that arrived. Flushed: the end of what
	// is durable where Durable says, reported to the server (what a
	// synchronous commit waits for). Uploaded: the end of what is in the
	// repository without a hole (pieces or segments); Archived: the end
	// of the newest segment archived whole.
	Received pg.LSN `json:"received_lsn"`
	Flushed  pg.LSN `json:"flushed_lsn"`
	Uploaded pg.LSN `json:"uploaded_lsn"`
	Archived pg.LSN `json:"archived_lsn"`
	// ServerWALEnd: the server's WAL end as it last said.
	ServerWALEnd pg.LSN `json:"server_wal_end"`
	// LagBytes: ServerWALEnd - Flushed. LagSeconds: how long the oldest
	// byte that arrived but is not durable has waited (0: none waits).
	// UploadLagBytes and UploadLagSeconds: the same for the repository.
	LagBytes         int64   `json:"lag_bytes"`
	LagSeconds       float64 `json:"lag_seconds"`
	UploadLagBytes   int64   `json:"upload_lag_bytes"`
	UploadLagSeconds float64 `json:"upload_lag_seconds"`
	// LastMessage: the server's clock in its last message.
	LastMessage time.Time `json:"last_message,omitzero"`
	// From the server's views (a normal connection, needs pg_monitor or
	// the same as for pg_stat_activity): the slot, this stream's
	// sync_state, and how many backends wait for a synchronous standby
	// (-1: unknown).
	SlotActive     *bool  `json:"slot_active,omitempty"`
	SlotRestartLSN string `json:"slot_restart_lsn,omitempty"`
	SlotWALStatus  string `json:"slot_wal_status,omitempty"`
	SyncState      string `json:"sync_state,omitempty"`
	CommitsWaiting int    `json:"commits_waiting"`
	// PendingSegments: segments held (in memory or locally) and not yet
	// archived whole.
	PendingSegments int    `json:"pending_segments"`
	Pieces          int64  `json:"pieces_uploaded"`
	PieceBytes      int64  `json:"piece_bytes_uploaded"`
	Segments        int64  `json:"segments_archived"`
	SegmentBytes    int64  `json:"segment_bytes_stored"`
	UploadFailures  int64  `json:"upload_failures"`
	LastUploadError string `json:"last_upload_error,omitempty"`
	LastError       string `json:"last_error,omitempty"`
}

// StatusFile is where a receiver with directory dir writes its status.
func StatusFile(dir string) string { return filepath.Join(dir, "status.json") }

// ReadReceiveStatus reads the status a receiver wrote into dir. Updated
// says how fresh it is: a receiver that is not running stops updating it.
func ReadReceiveStatus(dir string) (ReceiveStatus, error) {
	var st ReceiveStatus
	b, err := os.ReadFile(StatusFile(dir))
	if err != nil {
		return st, fmt.Errorf("read the receiver's status: %w (is a receiver running with --dir %s?)", err, dir)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read %s: %w", StatusFile(dir), err)
	}
	return st, nil
}

// Status returns the receiver's status now.
func (r *Receiver) Status() ReceiveStatus {
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	st.Updated = time.Now().UTC()
	if r.sink == nil {
		return st
	}
	ss := r.sink.status()
	st.Timeline = ss.Timeline
	st.Received, st.Flushed, st.Uploaded, st.Archived = ss.Received, ss.Flushed, ss.Stored, ss.Archived
	if st.ServerWALEnd > st.Flushed {
		st.LagBytes = int64(st.ServerWALEnd - st.Flushed)
	}
	if !ss.NotDurableSince.IsZero() {
		st.LagSeconds = time.Since(ss.NotDurableSince).Seconds()
	}
	if st.Flushed > st.Uploaded {
		st.UploadLagBytes = int64(st.Flushed - st.Uploaded)
	}
	if !ss.NotStoredSince.IsZero() {
		st.UploadLagSeconds = time.Since(ss.NotStoredSince).Seconds()
	}
	st.PendingSegments = ss.PendingSegments
	st.Pieces, st.PieceBytes = ss.stats.pieces, ss.stats.pieceBytes
	st.Segments, st.SegmentBytes = ss.stats.segments, ss.stats.segmentBytes
	st.UploadFailures, st.LastUploadError = ss.stats.uploadFailures, ss.stats.lastUploadErr
	return st
}

func (r *Receiver) setErr(err error) {
	r.mu.Lock()
	r.st.LastError = err.Error()
	r.mu.Unlock()
}

// writeStatus writes Dir/status.json (not synced: it is rewritten every
// second and only informs).
func (r *Receiver) writeStatus() ReceiveStatus {
	st := r.Status()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return st
	}
	p := StatusFile(r.opts.Dir)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil {
		os.Rename(tmp, p)
	}
	return st
}

// statusLoop writes the status file every second, and polls the server's
// views for what the replication connection cannot tell (the slot, the
// sync state, the commits waiting) every few seconds.
func (r *Receiver) statusLoop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	var lastPoll time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(lastPoll) >= 2*time.Second {
			lastPoll = time.Now()
			conn = r.pollServer(ctx, conn)
		}
		st := r.writeStatus()
		if r.opts.OnStatus != nil {
			r.opts.OnStatus(st)
		}
	}
}

// pollServer reads the slot, the stream's sync state and the backends
// waiting for a synchronous standby over a normal connection (to the
// same hosts; target_session_attrs picks the primary). Failing is not an
// error: the figures read as unknown.
func (r *Receiver) pollServer(ctx context.Context, conn *pgx.Conn) *pgx.Conn {
	unknown := func() {
		r.mu.Lock()
		r.st.CommitsWaiting, r.st.SyncState, r.st.SlotActive, r.st.SlotRestartLSN, r.st.SlotWALStatus = -1, "", nil, "", ""
		r.mu.Unlock()
	}
	if conn == nil || conn.IsClosed() {
		cfg, err := pgx.ParseConfig(r.opts.ConnString)
		if err != nil {
			unknown()
			return nil
		}
		delete(cfg.RuntimeParams, "replication")
		if cfg.RuntimeParams["application_name"] == "" {
			cfg.RuntimeParams["application_name"] = DefaultApplicationName + "_status"
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err = pgx.ConnectConfig(cctx, cfg)
		cancel()
		if err != nil {
			unknown()
			return nil
		}
	}
	r.mu.Lock()
	pid := r.st.WALPID
	r.mu.Unlock()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var waiting int
	var sync, restart, walStatus *string
	var active *bool
	err := conn.QueryRow(qctx, `SELECT
		(SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')::int,
		(SELECT sync_state FROM pg_stat_replication WHERE pid = $1::int),
		(SELECT active FROM pg_replication_slots WHERE slot_name = $2),
		(SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $2),
		(SELECT wal_status FROM pg_replication_slots WHERE slot_name = $2)`, int64(pid), r.opts.Slot).
		Scan(&waiting, &sync, &active, &restart, &walStatus)
	if err != nil {
		conn.Close(context.Background())
		unknown()
		return nil
	}
	r.mu.Lock()
	r.st.CommitsWaiting = waiting
	r.st.SyncState = deref(sync)
	r.st.SlotActive = active
	r.st.SlotRestartLSN = deref(restart)
	r.st.SlotWALStatus = deref(walStatus)
	r.mu.Unlock()
	return conn
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
