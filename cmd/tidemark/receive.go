package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/wal"
)

// wal-receive: the streaming receiver (docs/wal.md, "Streaming:
// wal-receive"). It runs in the foreground until SIGTERM.

// receiveExitClassifier maps the receiver's own stops to exit codes (one
// of exitClassifiers, ahead of the WAL archive's).
func receiveExitClassifier(err error) int {
	switch {
	case errors.Is(err, wal.ErrReceiverRunning):
		return exitLocked
	case errors.Is(err, wal.ErrWALRemoved):
		return exitIntegrity
	case errors.Is(err, wal.ErrReceiveRefused):
		return exitRefused
	}
	return 0
}

func walReceiveCommand() *cli.Command {
	return &cli.Command{
		Name:  "wal-receive",
		Usage: "stream WAL from the primary into the repository; can be a synchronous standby for zero data loss (runs in the foreground)",
		Description: "Connects with the physical replication protocol through a replication slot, starts where the archive ends, and\n" +
			"stores the stream: whole segments as wal-push does, and the segment that is filling in pieces. It reports WAL\n" +
			"flushed to PostgreSQL only once it is durable where --durable says (local: fsync'd in --dir; repository: acknowledged\n" +
			"by the object store), so that with synchronous_standby_names naming it (application_name, default 'tidemark') a\n" +
			"COMMIT returns only once its WAL is there. Given several hosts (host=a,b target_session_attrs=read-write), it\n" +
			"follows the primary across a promotion. --status prints what a running receiver reports in --dir/status.json.",
		Flags: flagSet(repoFlags(), []cli.Flag{
			stringFlag("pg-conn", "connection string of the primary, or of all hosts that may become primary (host=a,b target_session_attrs=read-write); replication=true is added"),
			&cli.StringFlag{Name: "slot", Value: "tidemark", EnvVars: []string{envName("slot")},
				Usage: "physical replication slot to stream from"},
			&cli.BoolFlag{Name: "create-slot", EnvVars: []string{envName("create-slot")},
				Usage: "create the slot on a server that lacks it (also on a newly promoted primary)"},
			&cli.StringFlag{Name: "durable", Value: "local", EnvVars: []string{envName("durable")},
				Usage: "where WAL must be before it is reported flushed: local (fsync'd in --dir, uploaded behind) or repository (acknowledged by the object store)"},
			stringFlag("dir", "the receiver's directory: lock, state, status.json, and with --durable local the WAL not yet uploaded"),
			stringFlag("cluster", "system identifier the server must have (default: whatever --dir was first used with)"),
			&cli.BoolFlag{Name: "status", Usage: "print the status of the receiver running with --dir and exit"},
			&cli.BoolFlag{Name: "json", Usage: "with --status: print JSON", EnvVars: []string{envName("json")}},
			&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, EnvVars: []string{envName("status-interval")},
				Usage: "send a status update to the server at least this often (a flush is reported at once)"},
			&cli.IntFlag{Name: "max-inflight", Value: 2, EnvVars: []string{envName("max-inflight")},
				Usage: "--durable repository: piece uploads in flight at once (1 to 16)"},
			&cli.DurationFlag{Name: "upload-delay", Value: 5 * time.Second, EnvVars: []string{envName("upload-delay")},
				Usage: "--durable local: upload WAL not yet in the repository after this long even while it keeps coming (at once when the stream stops)"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, EnvVars: []string{envName("shutdown-timeout")},
				Usage: "on SIGTERM, how long uploads in flight may finish"},
			stringFlag("metrics-file", "write the receiver's Prometheus metrics to this file (node_exporter textfile format) every 5 seconds"),
			stringFlag("metrics-listen", "serve the receiver's Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9188)"),
			retryForFlag(10 * time.Second),
		}),
		Action: walReceive,
	}
}

func walReceive(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	dir, err := requireString(c, "dir")
	if err != nil {
		return err
	}
	if c.Bool("status") {
		return printReceiveStatus(c.App.Writer, dir, c.Bool("json"))
	}
	durable, err := wal.ParseDurability(c.String("durable"))
	if err != nil {
		return usageErrorf("--durable %v", err)
	}
	var cluster uint64
	if s := c.String("cluster"); s != "" {
		if cluster, err = strconv.ParseUint(s, 10, 64); err != nil {
			return usageErrorf("--cluster %q: want a system identifier (pg_controldata's \"Database system identifier\")", s)
		}
	}
	r, arch, err := openWALArchive(c, log, c.Duration("retry-for"))
	if err != nil {
		return err
	}
	defer r.Close()
	opts := wal.ReceiveOptions{ConnString: c.String("pg-conn"), Slot: c.String("slot"), CreateSlot: c.Bool("create-slot"),
		Durable: durable, Dir: dir, Cluster: cluster, StatusInterval: c.Duration("status-interval"),
		MaxInflight: c.Int("max-inflight"), UploadDelay: c.Duration("upload-delay"),
		ShutdownTimeout: c.Duration("shutdown-timeout"), RepoID: r.Config().ID, Logger: log}
	var ep *metrics.Receive
	if addr := c.String("metrics-listen"); addr != "" {
		ep = &metrics.Receive{}
		at, err := metrics.Serve(c.Context, addr, ep.Handler(), log)
		if err != nil {
			return usageErrorf("%v", err)
		}
		log.Info("serving metrics", "url", "http://"+at.String()+"/metrics")
	}
	if p := c.String("metrics-file"); p != "" || ep != nil {
		opts.OnStatus = receiveMetrics(p, ep, log)
	}
	// A long-running process: hold the heap near what the receiver needs
	// (the segments it buffers, one being archived) rather than letting
	// the collector double it.
	opts.OnCluster = func(ci walarchive.ClusterInfo) { setMemoryLimit(wal.ReceiveMemory(ci.SegSize)) }
	// Its garbage is few and large: at the default GOGC dead buffers piled
	// up to the memory limit over minutes (RSS from 78 to 122 MiB in the
	// 10-minute benchmark). Segment buffers now come from a pool (see
	// wal's segBuf); what archiving a segment or a piece allocates is still
	// garbage, and a collection per segment or so costs next to nothing.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(receiveGCPercent)
	}
	rcv, err := wal.NewReceiver(arch, opts)
	if err != nil {
		return usageErrorf("wal-receive: %v", err)
	}
	log.Info("wal-receive starting", "dir", dir, "durable", durable, "slot", opts.Slot, "application_name", rcv.ApplicationName())
	return rcv.Run(c.Context)
}

// receiveGCPercent is the receiver's GOGC: the heap may grow a quarter
// past what is live before a collection.
const receiveGCPercent = 25

// receiveStale is how old a status may be before --status says the
// receiver is not running.
const receiveStale = 10 * time.Second

func printReceiveStatus(w io.Writer, dir string, asJSON bool) error {
	st, err := wal.ReadReceiveStatus(dir)
	if err != nil {
		return err
	}
	age := time.Since(st.Updated)
	if asJSON {
		if err := writeJSON(w, "wal_receive", st); err != nil {
			return err
		}
	} else {
		fmt.Fprint(w, formatReceiveStatus(st, age))
	}
	if age > receiveStale {
		return fmt.Errorf("the receiver of %s last wrote its status %s ago: it is not running", dir, age.Round(time.Second))
	}
	return nil
}

func formatReceiveStatus(st wal.ReceiveStatus, age time.Duration) string {
	var b strings.Builder
	state := "not connected"
	if st.Connected {
		state = "streaming from " + st.Server
	}
	fmt.Fprintf(&b, "wal-receive pid %d, cluster %d, status %s old: %s, timeline %d (server on %d)\n",
		st.PID, st.Cluster, age.Round(100*time.Millisecond), state, st.Timeline, st.ServerTimeline)
	slot := "slot " + st.Slot
	if st.SlotActive != nil {
		slot += fmt.Sprintf(" (active %v, restart_lsn %s, wal_status %s)", *st.SlotActive, st.SlotRestartLSN, st.SlotWALStatus)
	}
	sync := st.SyncState
	if sync == "" {
		sync = "unknown"
	}
	fmt.Fprintf(&b, "  durable %s, %s, sync_state %s\n", st.Durable, slot, sync)
	fmt.Fprintf(&b, "  received %-14s server WAL end %s\n", st.Received, st.ServerWALEnd)
	fmt.Fprintf(&b, "  flushed  %-14s lag %d bytes, %.1f s\n", st.Flushed, st.LagBytes, st.LagSeconds)
	fmt.Fprintf(&b, "  uploaded %-14s lag %d bytes, %.1f s (segments archived whole to %s, %d pending)\n",
		st.Uploaded, st.UploadLagBytes, st.UploadLagSeconds, st.Archived, st.PendingSegments)
	waiting := "unknown (grant pg_monitor to the receiver's user)"
	if st.CommitsWaiting >= 0 {
		waiting = strconv.Itoa(st.CommitsWaiting)
	}
	fmt.Fprintf(&b, "  commits waiting for a synchronous standby: %s\n", waiting)
	fmt.Fprintf(&b, "  uploaded %d pieces (%d bytes), %d segments; %d upload failures\n", st.Pieces, st.PieceBytes, st.Segments, st.UploadFailures)
	if st.LastUploadError != "" {
		fmt.Fprintf(&b, "  last upload error: %s\n", st.LastUploadError)
	}
	if st.LastError != "" {
		fmt.Fprintf(&b, "  last error: %s\n", st.LastError)
	}
	return b.String()
}

// receiveMetrics passes each status to the endpoint's holder and writes
// the metrics file every 5 seconds.
func receiveMetrics(path string, ep *metrics.Receive, log *slog.Logger) func(wal.ReceiveStatus) {
	var last time.Time
	return func(st wal.ReceiveStatus) {
		if ep != nil {
			ep.Update(st)
		}
		if path == "" || time.Since(last) < 5*time.Second {
			return
		}
		last = time.Now()
		m := metrics.NewSet()
		m.AddReceive(st)
		if err := m.WriteFile(path); err != nil {
			log.Warn("metrics file", "err", err)
		}
	}
}

// walStreamedJSON is wal list's view of wal-receive's tail of a timeline:
// the WAL it acknowledged past the timeline's last complete segment.
type walStreamedJSON struct {
	Segment string `json:"segment"`
	End     pg.LSN `json:"end_lsn"`
	Pieces  int    `json:"pieces"`
	// PastFork: bytes of it past where a later timeline branched off:
	// WAL only this timeline has (commits the promoted standby lacked).
	PastFork int64 `json:"bytes_past_fork,omitempty"`
}

// describeFork adds to a timeline's wal list entry where it branched off
// (Archive.Forks) and wal-receive's tail of it.
func describeFork(l *walarchive.Listing, t *walarchive.TimelineInfo, tj *walTimelineJSON) {
	if t.Parent != 0 {
		tj.BranchedFrom = t.Parent
		fork := t.Begin
		tj.ForkLSN = &fork
	}
	tail, ok := t.Tail()
	if !ok {
		return
	}
	end := tail.EndLSN(l.Cluster.SegSize)
	sj := &walStreamedJSON{Segment: tail.Name, End: end, Pieces: len(tail.Pieces)}
	for _, u := range l.Timelines {
		if u.Parent == t.Timeline && u.Begin < end {
			sj.PastFork = max(sj.PastFork, int64(end-u.Begin))
		}
	}
	tj.Streamed = sj
}

func forkText(t walTimelineJSON) string {
	if t.ForkLSN == nil {
		return ""
	}
	return fmt.Sprintf(", branched from timeline %d at %s", t.BranchedFrom, *t.ForkLSN)
}

func streamedText(b *strings.Builder, t walTimelineJSON) {
	s := t.Streamed
	if s == nil {
		return
	}
	fmt.Fprintf(b, "    streamed: %s up to %s (%d pieces)", s.Segment, s.End, s.Pieces)
	if s.PastFork > 0 {
		fmt.Fprintf(b, ", %d bytes past the fork: WAL only timeline %d has", s.PastFork, t.Timeline)
	}
	b.WriteByte('\n')
}
