// Package drill proves that a backup restores: it restores a snapshot into a
// scratch directory (with the restore its caller wires in: the CLI passes
// package restore's), starts PostgreSQL of the
// snapshot's major version on it (archiving off, reachable only through a
// Unix socket in the scratch directory), lets it recover to a target through
// the same restore_command a real restore uses, and then checks the result:
// that recovery stopped where it was asked to (the heartbeat row the source
// writes, see package pg/heartbeat), pg_amcheck where it is installed, every
// data page's checksum, and the user's own SQL checks. It records how long
// the restore and the replay took, stores a report in the repository
// (drills/<cluster>/<id>) and removes the scratch cluster, also when it
// fails or is interrupted.
//
// Nothing in a drill writes to the repository except its lease (a shared
// restore lease, so that expire and gc leave the snapshot and its WAL
// alone while it runs) and the final report; restore_command (tidemark
// wal-fetch) only reads.
//
// It is not restore (it drives it) and not verify (which checks the
// repository's objects without starting a server).
package drill

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/internal/osuser"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// Prefix is the key prefix of drill reports: drills/<cluster>/<id>.
const Prefix = repo.DrillsPrefix

// Repository is what a drill uses of the repository. *repo.Repo has it.
type Repository interface {
	Snapshots(ctx context.Context, cluster uint64) ([]*repo.Snapshot, error)
	Store() storage.Store
	AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error)
	Encrypt(dst io.Writer) (io.WriteCloser, error)
	Decrypt(src io.Reader) (io.Reader, error)
}

// WAL is what a drill reads of the WAL archive. *walarchive.Archive has it.
type WAL interface {
	List(ctx context.Context, cluster uint64) (*walarchive.Listing, error)
	History(ctx context.Context, cluster uint64, tli pg.TimelineID) (pg.History, error)
	ReadFile(ctx context.Context, cluster uint64, name string) ([]byte, walarchive.Meta, error)
}

// Recovered is the scratch server once it has recovered and promoted.
type Recovered struct {
	// ConnString reaches database db over the server's socket as User.
	ConnString func(db string) string
	Socket     string
	Port       int
	User       string
	BinDir     string // the server's bin directory
	Search     pg.BinSearch
	Major      int
	Env        []string // an environment free of libpq's variables
}

// RestoreRequest is the restore a drill asks for: the snapshot into the
// scratch data directory, every tablespace moved into the scratch
// directory, files owned by the server's user, recovery settings for the
// target with the given restore_command.
type RestoreRequest struct {
	PGData         string
	Cluster        uint64
	Backup         string
	Target         pg.RecoveryTarget
	TablespaceMap  map[string]string
	Owner          *osuser.Owner // nil: keep the drill's own user
	RestoreCommand string
	SpoolDir       string
	Logger         *slog.Logger
	Now            func() time.Time
}

// RestoreResult is what a drill reports of its restore.
type RestoreResult struct{ Files, Bytes int64 }

// Fetch is restore_command for a scratch data directory and the end of what
// that command leaves running. wal.FetchCommand has it.
type Fetch interface {
	// Line is restore_command for the server of pgdata.
	Line(pgdata string) string
	// SpoolDir is where that command spools for pgdata.
	SpoolDir(pgdata string) string
	// StopPrefetcher ends the prefetcher it left, once the server is down.
	StopPrefetcher(pgdata string)
}

// Check is one user check: SQL that must return one row with one true.
type Check struct {
	Name string // e.g. "check.sql:3"
	SQL  string
}

// Options configure a drill.
type Options struct {
	// Cluster is the system identifier (0 when the repository holds one).
	Cluster uint64
	// Backup is a snapshot id; "" is the newest; Random picks one of the
	// kept snapshots at random.
	Backup string
	Random bool
	// Target is the recovery target; pg.TargetEnd (the zero value)
	// picks a random time inside the window recoverable from the snapshot.
	Target pg.RecoveryTarget
	// ScratchDir is where the scratch cluster is made (a new directory
	// inside it; default os.TempDir()).
	ScratchDir string
	// PGBin is the directory of the server binaries; empty: found by the
	// snapshot's major version (pg.FindServerBin), those of the server
	// running on PGData first.
	// snapshot's major version.
	PGBin string
	// PGData is the source cluster's data directory on this host, if any.
	PGData string
	// PGUser is the OS user the server runs as when the drill runs as root.
	PGUser string
	// DBUser is the database superuser to connect as (default postgres),
	// DBName the database of the heartbeat and the checks (default
	// postgres).
	DBUser, DBName string
	// ServerOptions are extra -c settings for the server (name=value),
	// after the drill's own.
	ServerOptions []string
	// Restore writes the snapshot into the scratch data directory, ready
	// for recovery (the CLI passes one that runs package restore: a drill
	// drives a restore, it is not one).
	Restore func(ctx context.Context, req RestoreRequest) (RestoreResult, error)
	// Fetch is how the scratch server gets its WAL (wal.FetchCommand).
	Fetch Fetch
	// Env is added to the server's environment (for restore_command).
	Env    []string
	Checks []Check
	// Amcheck: "auto" runs pg_amcheck where one is found and the amcheck
	// extension is available, "off" never, "on" requires it.
	Amcheck string
	// HeartbeatSlack is how much later than one heartbeat interval before
	// the target the newest heartbeat may be (default 5s).
	HeartbeatSlack time.Duration
	// AllowUnproven lets a drill pass whose recovery point could not be
	// proven (the source writes no heartbeat): by default that fails it.
	AllowUnproven bool
	// Timeout bounds the recovery (default 6h).
	Timeout time.Duration
	// KeepOnFailure leaves the scratch directory of a failed drill.
	KeepOnFailure bool
	// Latest recovers to the end of the archive along the newest timeline
	// instead of to Target or a random time.
	Latest bool
	// AfterRecovery, when set, runs on the recovered and promoted server
	// in place of the checks (a rehearsal, see Rehearse); the run then
	// stores no report.
	AfterRecovery func(ctx context.Context, s Recovered) error
	ToolVersion   string
	Logger        *slog.Logger
	Now           func() time.Time
	Rand          *rand.Rand
}

// Report is what a drill did and found. It is stored encrypted at
// drills/<cluster>/<id>.
type Report struct {
	Format   int       `json:"format"`
	ID       string    `json:"id"`
	Cluster  uint64    `json:"cluster,string"`
	Host     string    `json:"host"`
	Tool     string    `json:"tool_version,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	OK       bool      `json:"ok"`
	// Reason is the first failure, one line.
	Reason string `json:"reason,omitempty"`

	Snapshot     string    `json:"snapshot"`
	SnapshotStop time.Time `json:"snapshot_stop_time"`
	SnapshotLSN  string    `json:"snapshot_stop_lsn"`
	Timeline     uint32    `json:"timeline"`
	PGMajor      int       `json:"pg_major"`
	PGBin        string    `json:"pg_bin,omitempty"`
	Target       Target    `json:"target"`

	RestoreSeconds float64 `json:"restore_seconds"`
	ReplaySeconds  float64 `json:"replay_seconds"`
	// RecoverSeconds is restore plus replay: the time to recover.
	RecoverSeconds float64 `json:"recover_seconds"`
	RestoredBytes  int64   `json:"restored_bytes"`
	RestoredFiles  int64   `json:"restored_files"`

	Checks []CheckResult `json:"checks"`
	// Proof says how the recovery point was proven: ProofHeartbeat, or
	// ProofNone when it could not be (then the drill failed, unless
	// allowed with AllowUnproven).
	Proof string `json:"proof"`
	Key   string `json:"report_key,omitempty"`
}

// Proofs of the recovery point.
const (
	// ProofHeartbeat: the timeline history PostgreSQL wrote when it
	// promoted names the target as where recovery stopped, and the
	// heartbeat row the source wrote, read back from the recovered data,
	// is the one the source had written at that point (no later beat, none
	// missing).
	ProofHeartbeat = "heartbeat"
	// ProofNone: only PostgreSQL's own report; the data were not checked
	// against the source at that point.
	ProofNone = "none"
)

// Target is the recovery target of a drill.
type Target struct {
	Kind string    `json:"kind"` // time, lsn, xid, name, immediate
	Time time.Time `json:"time,omitzero"`
	LSN  string    `json:"lsn,omitempty"`
	XID  uint64    `json:"xid,omitempty"`
	Name string    `json:"name,omitempty"`
	// Random: chosen by the drill inside [WindowStart, WindowEnd], the
	// times recoverable from the snapshot (the commit after its stop to the
	// last archived commit).
	Random      bool      `json:"random"`
	WindowStart time.Time `json:"window_start,omitzero"`
	WindowEnd   time.Time `json:"window_end,omitzero"`
	// Inclusive is false when recovery was to stop just before the target.
	Inclusive bool `json:"inclusive"`
	// Reached is where PostgreSQL said it stopped (its log).
	Reached string `json:"reached,omitempty"`
	// Stopped is where the timeline history file PostgreSQL wrote at the
	// promotion says recovery ended: the switch point and its reason.
	Stopped string `json:"stopped,omitempty"`
}

// CheckResult is the outcome of one check.
type CheckResult struct {
	Name   string `json:"name"`
	Status string `json:"status"` // pass, fail, skipped
	Detail string `json:"detail"`
}

// Statuses of a check.
const (
	Pass    = "pass"
	Fail    = "fail"
	Skipped = "skipped"
)

// ErrFailed is matched by *FailedError.
var ErrFailed = errors.New("restore drill failed")

// FailedError says the drill ran and something did not restore or check
// out: the backups cannot be trusted as they are.
type FailedError struct {
	Report *Report
	Err    error
}

func (e *FailedError) Error() string { return "restore drill failed: " + e.Report.Reason }

// Unwrap gives the cause (a *repo.CorruptError, a restore error) and marks
// the failure as an integrity problem.
func (e *FailedError) Unwrap() []error { return []error{ErrFailed, repo.ErrCorrupt, e.Err} }

// run is one drill.
type run struct {
	r       Repository
	w       WAL
	o       Options
	log     *slog.Logger
	rep     *Report
	scratch string
	pgdata  string
	sock    string
	port    int
	owner   *osuser.Owner
	srv     *server
	snap    *repo.Snapshot
	// What the recovered server said: its last replayed commit, and where
	// its promotion's timeline history says recovery ended.
	replayedCommit *time.Time
	stopLSN        pg.LSN
}

// Run runs one drill. It returns the report and, when the drill failed, a
// *FailedError carrying it; any other error means the drill could not be run
// (no server binaries, the repository unreachable) and proves nothing either
// way. The report is stored in the repository in both cases once a snapshot
// was chosen.
func Run(ctx context.Context, r Repository, w WAL, opts Options) (*Report, error) {
	o := opts
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if o.DBUser == "" {
		o.DBUser = "postgres"
	}
	if o.DBName == "" {
		o.DBName = "postgres"
	}
	if o.HeartbeatSlack == 0 {
		o.HeartbeatSlack = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 6 * time.Hour
	}
	if o.Amcheck == "" {
		o.Amcheck = "auto"
	}
	if o.ScratchDir == "" {
		o.ScratchDir = os.TempDir()
	}
	host, _ := os.Hostname()
	d := &run{r: r, w: w, o: o, log: o.Logger,
		rep: &Report{Format: 1, ID: lease.NewID(o.Now()), Host: host, Tool: o.ToolVersion, Started: o.Now().UTC()}}
	err := d.run(ctx)
	d.rep.Finished = o.Now().UTC()
	var fe *FailedError
	switch {
	case err == nil:
		d.rep.OK = true
	case errors.As(err, &fe):
		d.rep.Reason = oneLine(fe.Err.Error())
	default:
		d.rep.Reason = oneLine(err.Error())
	}
	if d.rep.Snapshot != "" && o.AfterRecovery == nil {
		// The report goes in whatever happened, on a context the
		// interruption did not end.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		key, serr := d.store(sctx)
		cancel()
		if serr != nil {
			d.log.Error("drill: could not store the report", "err", serr)
			if err == nil {
				err = serr
			}
		}
		d.rep.Key = key
	}
	if fe != nil {
		fe.Report = d.rep
		return d.rep, fe
	}
	return d.rep, err
}

// fail wraps a cause as a drill failure.
func (d *run) fail(err error) error { return &FailedError{Report: d.rep, Err: err} }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func (d *run) run(ctx context.Context) (err error) {
	_, cluster, err := d.snapshots(ctx)
	if err != nil {
		return err
	}
	// The lease first, then the list again: expire removes nothing of the
	// cluster while it is held, and what was listed before may have gone.
	l, err := d.r.AcquireLease(ctx, lease.RestoreScope(cluster), lease.Options{Command: "drill", Logger: d.log})
	if err != nil {
		return fmt.Errorf("take the restore lease of cluster %d: %w", cluster, err)
	}
	defer l.Release(context.WithoutCancel(ctx))
	snaps, _, err := d.snapshots(ctx)
	if err != nil {
		return err
	}
	d.rep.Cluster = cluster
	if err := d.choose(snaps); err != nil {
		return err
	}
	if err := d.chooseTarget(ctx, snaps); err != nil {
		return err
	}
	bin, err := pg.FindServerBin(ctx, d.o.binSearch(), d.rep.PGMajor)
	if err != nil {
		return err
	}
	d.rep.PGBin = bin
	defer func() {
		if d.scratch != "" {
			d.cleanup(err != nil)
		}
	}()
	if err := d.makeScratch(); err != nil {
		return err
	}

	if err := d.restore(ctx); err != nil {
		return err
	}
	if err := d.replay(ctx, bin); err != nil {
		return err
	}
	if d.o.AfterRecovery != nil {
		return d.o.AfterRecovery(ctx, Recovered{ConnString: d.connString, Socket: d.sock, Port: d.port, User: d.o.DBUser,
			BinDir: bin, Search: d.o.binSearch(), Major: d.rep.PGMajor, Env: serverEnv(nil)})
	}
	return d.checks(ctx)
}

// snapshots lists the snapshots of the cluster to drill.
func (d *run) snapshots(ctx context.Context) ([]*repo.Snapshot, uint64, error) {
	snaps, err := d.r.Snapshots(ctx, d.o.Cluster)
	if err != nil {
		return nil, 0, fmt.Errorf("list backups: %w", err)
	}
	cluster := d.o.Cluster
	if cluster == 0 {
		for _, s := range snaps {
			if cluster != 0 && s.Cluster != cluster {
				return nil, 0, fmt.Errorf("the repository holds backups of several clusters: pass --cluster with the system identifier to drill")
			}
			cluster = s.Cluster
		}
	}
	if len(snaps) == 0 {
		return nil, 0, fmt.Errorf("no backups to drill: take one with tidemark backup")
	}
	return snaps, cluster, nil
}

// choose picks the snapshot.
func (d *run) choose(snaps []*repo.Snapshot) error {
	switch {
	case d.o.Backup != "" && d.o.Backup != "latest":
		i := slices.IndexFunc(snaps, func(s *repo.Snapshot) bool { return s.ID == d.o.Backup })
		if i < 0 {
			return fmt.Errorf("no backup %s of cluster %d: tidemark list shows the backups", d.o.Backup, d.rep.Cluster)
		}
		d.snap = snaps[i]
	case d.o.Random:
		d.snap = snaps[d.o.Rand.IntN(len(snaps))]
	default:
		d.snap = snaps[len(snaps)-1] // ordered by stop time, then stop LSN
	}
	s := d.snap
	d.rep.Snapshot, d.rep.SnapshotStop, d.rep.SnapshotLSN = s.ID, s.StopTime, pg.LSN(s.StopLSN).String()
	d.rep.Timeline = s.StopTimeline
	major, err := pg.MajorFromVersionNum(s.PGVersion)
	if err != nil {
		return fmt.Errorf("backup %s: %w", s.ID, err)
	}
	d.rep.PGMajor = major
	d.log.Info("drill: chose backup", "backup", s.ID, "stopped", s.StopTime, "stop_lsn", pg.LSN(s.StopLSN), "timeline", s.StopTimeline)
	return nil
}

// chooseTarget fixes the recovery target: the one asked for, or a random
// time between the first commit after the snapshot's stop and the last
// commit archived along its timeline (before the next snapshot's stop, so
// that the replay stays the snapshot's own).
func (d *run) chooseTarget(ctx context.Context, snaps []*repo.Snapshot) error {
	if d.o.Latest {
		d.o.Target = pg.RecoveryTarget{}
		d.rep.Target.Kind = "end"
		return nil
	}
	t := d.o.Target
	s := d.snap
	if t.Timeline == 0 {
		t.Timeline = pg.TimelineID(s.StopTimeline)
	}
	t.Action = pg.ActionPromote
	d.o.Target = t
	rt := &d.rep.Target
	rt.Inclusive = t.Inclusive == nil || *t.Inclusive
	switch t.Kind {
	case pg.TargetTime:
		rt.Kind, rt.Time = "time", t.Time.UTC()
		return nil
	case pg.TargetLSN:
		rt.Kind, rt.LSN = "lsn", t.LSN.String()
		return nil
	case pg.TargetXID:
		rt.Kind, rt.XID = "xid", t.XID
		return nil
	case pg.TargetName:
		rt.Kind, rt.Name = "name", t.Name
		return nil
	case pg.TargetImmediate:
		rt.Kind = "immediate"
		return nil
	}
	start := s.StopTime.Add(time.Second)
	end, ok, err := d.lastCommit(ctx)
	if err != nil {
		return err
	}
	for _, n := range snaps {
		if n.StopTime.After(s.StopTime) && n.StopTimeline == s.StopTimeline && n.StopTime.Before(end) {
			end = n.StopTime
			break
		}
	}
	rt.WindowStart, rt.WindowEnd = start.UTC(), end.UTC()
	if !ok || !end.After(start) {
		d.log.Info("drill: no commit archived after the backup stopped; recovering to its consistent point", "backup", s.ID)
		d.o.Target.Kind = pg.TargetImmediate
		rt.Kind = "immediate"
		return nil
	}
	span := end.Sub(start)
	at := start.Add(time.Duration(d.o.Rand.Int64N(int64(span) + 1))).Truncate(time.Microsecond)
	d.o.Target.Kind, d.o.Target.Time = pg.TargetTime, at
	rt.Kind, rt.Time, rt.Random = "time", at.UTC(), true
	d.log.Info("drill: chose a random target time", "time", at.UTC(), "window_start", start.UTC(), "window_end", end.UTC())
	return nil
}

// lastCommit finds the time of the last commit archived along the
// snapshot's timeline, reading the newest few segments of the continuous
// run from the snapshot's start.
func (d *run) lastCommit(ctx context.Context) (time.Time, bool, error) {
	s := d.snap
	cluster := s.Cluster
	l, err := d.w.List(ctx, cluster)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("list the WAL archive: %w", err)
	}
	h := pg.History{Timeline: 1}
	if s.StopTimeline > 1 {
		if h, err = d.w.History(ctx, cluster, pg.TimelineID(s.StopTimeline)); err != nil {
			return time.Time{}, false, fmt.Errorf("history of timeline %d: %w", s.StopTimeline, err)
		}
	}
	segSize := l.Cluster.SegSize
	if segSize == 0 {
		segSize = uint32(s.WALSegmentSize)
		l.Cluster.SegSize = segSize
	}
	first := pg.LSN(s.StartLSN).Segment(segSize)
	stop := pg.LSN(s.StopLSN).PrevSegment(segSize)
	last, ok := l.Reach(h, first)
	if !ok || last < stop {
		// Restore will say precisely what is missing.
		return time.Time{}, false, nil
	}
	for seg := last; seg >= stop && seg+4 > last; seg-- {
		name := l.SegmentName(h.SegmentTimeline(seg, segSize), seg)
		data, _, err := d.w.ReadFile(ctx, cluster, name)
		if err != nil {
			return time.Time{}, false, fmt.Errorf("read WAL %s to find the last commit: %w", name, err)
		}
		t, found, err := pg.LastCommitTime(data)
		if err != nil {
			d.log.Warn("drill: cannot parse WAL for the last commit time", "segment", name, "err", err)
			return time.Time{}, false, nil
		}
		if found {
			return t, true, nil
		}
		if seg == 0 {
			break
		}
	}
	return time.Time{}, false, nil
}

// store writes the report, encrypted, create-only.
func (d *run) store(ctx context.Context) (string, error) {
	body, err := json.MarshalIndent(d.rep, "", "  ")
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	w, err := d.r.Encrypt(&buf)
	if err != nil {
		return "", err
	}
	w.Write(body)
	if err := w.Close(); err != nil {
		return "", err
	}
	key := ReportKey(d.rep.Cluster, d.rep.ID)
	if err := d.r.Store().Create(ctx, key, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		return "", fmt.Errorf("write the drill report %s: %w", key, err)
	}
	return key, nil
}

// ReportKey returns the key of a drill report.
func ReportKey(cluster uint64, id string) string {
	return Prefix + strconv.FormatUint(cluster, 10) + "/" + id
}

// Latest reads the newest drill report of a cluster (by its id, which
// starts with its UTC creation time), or nil when there is none.
func Latest(ctx context.Context, r interface {
	Store() storage.Store
	Decrypt(src io.Reader) (io.Reader, error)
}, cluster uint64) (*Report, error) {
	prefix := Prefix + strconv.FormatUint(cluster, 10) + "/"
	var last string
	for oi, err := range r.Store().List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		last = max(last, oi.Key)
	}
	if last == "" {
		return nil, nil
	}
	rc, err := r.Store().Get(ctx, last)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	pr, err := r.Decrypt(rc)
	if err != nil {
		return nil, &repo.CorruptError{Key: last, Err: err}
	}
	b, err := io.ReadAll(io.LimitReader(pr, 16<<20))
	if err != nil {
		return nil, &repo.CorruptError{Key: last, Err: err}
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, &repo.CorruptError{Key: last, Err: err}
	}
	return &rep, nil
}

// binSearch is where the drill looks for PostgreSQL's programs.
func (o *Options) binSearch() pg.BinSearch { return pg.BinSearch{Dir: o.PGBin, PGData: o.PGData} }
