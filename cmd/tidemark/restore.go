package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/internal/osuser"
	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/restore"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/verify/drill"
	"github.com/tidemarkdb/tidemark/wal"
)

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "restore a backup into a data directory, ready for point-in-time recovery",
		Description: "Chooses the newest backup that ends before the target on a timeline leading to it, checks that the\n" +
			"archive holds the WAL recovery needs, writes the files, backup_label, the recovery settings (restore_command\n" +
			"= tidemark wal-fetch) and recovery.signal, and global/pg_control last. Start the server afterwards.",
		Flags: flagSet(repoFlags(), repo2Flags(), rateFlags(), []cli.Flag{
			stringFlag("pgdata", "data directory to restore into (must be empty, or an existing one with --delta)", "PGDATA"),
			stringFlag("backup", "backup id to restore, or latest (default: the newest that ends before the target)"),
			stringFlag("cluster", "system identifier of the cluster, when the repository holds several"),
			stringFlag("target-time", "recover to this time (2026-05-01 10:00:00+00)"),
			stringFlag("target-lsn", "recover to this WAL position (16/B374D848)"),
			stringFlag("target-xid", "recover to this transaction ID"),
			stringFlag("target-name", "recover to this restore point (pg_create_restore_point)"),
			stringFlag("target", "immediate: stop as soon as the backup is consistent"),
			&cli.BoolFlag{Name: "target-inclusive", Usage: "stop just after the target, or with --target-inclusive=false just before it", DefaultText: "true, as PostgreSQL", EnvVars: []string{envName("target-inclusive")}},
			stringFlag("target-action", "at the target: pause (default, as PostgreSQL), promote or shutdown"),
			stringFlag("target-timeline", "timeline to recover along: a number, or latest (default: the timeline of the newest backup, stated explicitly)"),
			&cli.StringSliceFlag{Name: "tablespace-map", Usage: "move a tablespace: OLD=NEW (repeatable)", EnvVars: []string{envName("tablespace-map")}},
			&cli.IntFlag{Name: "parallel", Usage: "parallel reads and file workers", Value: 4, EnvVars: []string{envName("parallel")}},
			&cli.StringFlag{Name: "read-memory", Value: "32MiB", EnvVars: []string{envName("read-memory")},
				Usage: "bytes of blobs the parallel reads hold at once (each holds about two slots, 2 MiB)"},
			cpuProfileFlag(),
			&cli.BoolFlag{Name: "direct-io", Value: true, Usage: "write large runs of relation pages with O_DIRECT, bypassing the page cache (--direct-io=false: through the cache, which the server then starts with)", EnvVars: []string{envName("direct-io")}},
			&cli.BoolFlag{Name: "delta", Usage: "restore into an existing data directory: remove what the backup lacks, fetch only what differs", EnvVars: []string{envName("delta")}},
			stringFlag("owner", "OS user to own the files when run as root (default: the data directory's owner)"),
			&cli.BoolFlag{Name: "standby", Usage: "make the server a standby: standby.signal, recovery_target_timeline = latest, catch up from the archive, then stream from --primary-conninfo", EnvVars: []string{envName("standby")}},
			stringFlag("primary-conninfo", "with --standby: primary_conninfo, how the standby reaches its primary (e.g. 'host=db1 user=replicator')"),
			stringFlag("primary-slot-name", "with --standby: primary_slot_name, the replication slot on the primary"),
			retryForFlag(retry.DefaultMaxElapsed),
			&cli.BoolFlag{Name: "dry-run", Usage: "say what the restore would do (backup and why, timeline, WAL needed and whether it is archived, bytes to fetch and write, free space, time estimate) and write nothing", EnvVars: []string{envName("dry-run")}},
			&cli.BoolFlag{Name: "json", Usage: "print the result (or with --dry-run the plan) as JSON", EnvVars: []string{envName("json")}},
		}),
		Action: runRestore,
	}
}

// defaultReadMemory bounds what the reads of a restore (and of a drill's
// restore) hold at once. A read holds one stored blob and its plaintext,
// about 2 MiB for relation slots: 32 MiB lets --parallel 4 run unhindered
// with room for the odd large file map.
const defaultReadMemory = 32 << 20

// readMemory parses --read-memory.
func readMemory(c *cli.Context) (int64, error) {
	n, err := bytesize.Parse(c.String("read-memory"))
	if err != nil || n < 4<<20 {
		return 0, usageErrorf("--read-memory %q: want a size of at least 4MiB, such as 32MiB", c.String("read-memory"))
	}
	return n, nil
}

func runRestore(c *cli.Context) error {
	log, status, err := progressLogger(c)
	if err != nil {
		return err
	}
	pgdata, err := requireString(c, "pgdata")
	if err != nil {
		return err
	}
	if pgdata, err = filepath.Abs(pgdata); err != nil {
		return usageErrorf("--pgdata: %v", err)
	}
	opts := restore.Options{PGData: pgdata, Backup: c.String("backup"), Delta: c.Bool("delta"), DirectIO: c.Bool("direct-io"), Parallel: c.Int("parallel"), Logger: log,
		SpoolDir: wal.DefaultSpoolDir(pgdata), DryRun: c.Bool("dry-run")}
	if opts.Parallel < 1 {
		return usageErrorf("--parallel %d: want at least 1", opts.Parallel)
	}
	if v := c.String("cluster"); v != "" {
		if opts.Cluster, err = strconv.ParseUint(v, 10, 64); err != nil || opts.Cluster == 0 {
			return usageErrorf("--cluster %q: want the system identifier, a decimal number (pg_controldata shows it)", v)
		}
	}
	if opts.Target, err = parseTarget(c); err != nil {
		return err
	}
	if opts.TablespaceMap, err = parseTablespaceMap(c.StringSlice("tablespace-map")); err != nil {
		return err
	}
	// primary-conninfo may sit in the config file for the day a standby
	// is needed: without --standby it is not used.
	if c.Bool("standby") {
		opts.Standby = &restore.Standby{PrimaryConnInfo: c.String("primary-conninfo"), SlotName: c.String("primary-slot-name")}
	}
	if name := c.String("owner"); name != "" {
		if opts.Owner, err = lookupOwner(name); err != nil {
			return err
		}
	}
	fetch, err := fetchCommand(c)
	if err != nil {
		return err
	}
	opts.RestoreCommand = fetch.Line(pgdata)

	mem, err := readMemory(c)
	if err != nil {
		return err
	}
	setMemoryLimit(mem)
	// With repo2 set, reads fall back to it once repo is unreachable
	// (after --retry-for of retries), for the rest of the restore.
	r, err := openFailover(c, log, repo.Options{ReadConcurrency: opts.Parallel, ReadMemory: mem}, c.Duration("retry-for"))
	if err != nil {
		return err
	}
	defer r.Close()
	stop, err := startCPUProfile(c)
	if err != nil {
		return err
	}
	defer stop()
	if opts.DryRun {
		return dryRunRestore(c, r, opts)
	}
	opts.Progress = progress.NewCounter()
	stopProgress := watchProgress("restore", status, log, opts.Progress)
	res, err := restore.Run(c.Context, r, restore.ArchiveOf(walarchive.NewFailover(r, walarchive.Options{Logger: log})), opts)
	stopProgress()
	if err != nil {
		return fmt.Errorf("restore into %s: %w", pgdata, err)
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "restore", describeRestore(pgdata, res))
	}
	printRestore(c.App.Writer, pgdata, res)
	if why := r.FailedOver(); why != nil {
		fmt.Fprintf(c.App.Writer, "  read from the second repository %s: the first was unreachable (%s)\n", r.Active().Store(), oneLine(why.Error()))
	}
	return nil
}

// dryRunRestore prints what the restore would do. It exits 8 (refused)
// when the restore would refuse, after printing the plan.
func dryRunRestore(c *cli.Context, r *repo.Failover, opts restore.Options) error {
	log := opts.Logger
	opts.Rates = drillRates(r)
	res, err := restore.Run(c.Context, r, restore.ArchiveOf(walarchive.NewFailover(r, walarchive.Options{Logger: log})), opts)
	if err != nil {
		return fmt.Errorf("restore --dry-run into %s: %w", opts.PGData, err)
	}
	out := describeRestore(opts.PGData, res)
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, "restore_plan", out); err != nil {
			return err
		}
	} else {
		printRestorePlan(c.App.Writer, out)
	}
	if n := len(res.Plan.Problems); n > 0 {
		return &restore.RefusedError{Msg: fmt.Sprintf("restore --dry-run: the restore would refuse (%d problem(s)): %s", n, res.Plan.Problems[0])}
	}
	return nil
}

// drillRates are the rates the newest passed drill of the cluster
// measured, for restore --dry-run's estimate; nil without one.
func drillRates(r *repo.Failover) func(ctx context.Context, cluster uint64) (*restore.Measured, error) {
	return func(ctx context.Context, cluster uint64) (*restore.Measured, error) {
		rep, err := drill.Latest(ctx, r, cluster)
		if err != nil || rep == nil || !rep.OK || rep.RestoreSeconds <= 0 {
			return nil, err
		}
		m := &restore.Measured{Source: "drill " + rep.ID, At: rep.Finished, RestoreBytesPerSecond: float64(rep.RestoredBytes) / rep.RestoreSeconds}
		if rep.Target.Kind == "time" && rep.ReplaySeconds > 0 && rep.Target.Time.After(rep.SnapshotStop) {
			m.ReplayRatio = rep.Target.Time.Sub(rep.SnapshotStop).Seconds() / rep.ReplaySeconds
		}
		return m, nil
	}
}

// parseTarget reads the recovery target flags; at most one target.
func parseTarget(c *cli.Context) (pg.RecoveryTarget, error) {
	var t pg.RecoveryTarget
	var set []string
	for _, name := range []string{"target-time", "target-lsn", "target-xid", "target-name", "target"} {
		if c.String(name) != "" {
			set = append(set, "--"+name)
		}
	}
	if len(set) > 1 {
		return t, usageErrorf("%s: give one recovery target", strings.Join(set, " and "))
	}
	var err error
	switch {
	case c.String("target-time") != "":
		t.Kind = pg.TargetTime
		if t.Time, err = pg.ParseTargetTime(c.String("target-time")); err != nil {
			return t, usageErrorf("--target-time: %v", err)
		}
	case c.String("target-lsn") != "":
		t.Kind = pg.TargetLSN
		if t.LSN, err = pg.ParseLSN(c.String("target-lsn")); err != nil {
			return t, usageErrorf("--target-lsn %q: want a WAL position such as 16/B374D848", c.String("target-lsn"))
		}
	case c.String("target-xid") != "":
		t.Kind = pg.TargetXID
		if t.XID, err = strconv.ParseUint(c.String("target-xid"), 10, 64); err != nil || t.XID < 3 {
			return t, usageErrorf("--target-xid %q: want a transaction ID (txid_current() shows one)", c.String("target-xid"))
		}
	case c.String("target-name") != "":
		t.Kind, t.Name = pg.TargetName, c.String("target-name")
	case c.String("target") != "":
		if c.String("target") != "immediate" {
			return t, usageErrorf("--target %q: the only named target is immediate", c.String("target"))
		}
		t.Kind = pg.TargetImmediate
	}
	if c.IsSet("target-inclusive") {
		v := c.Bool("target-inclusive")
		t.Inclusive = &v
	}
	t.Action = c.String("target-action")
	if t.Kind == pg.TargetEnd && (t.Inclusive != nil || t.Action != "") {
		return t, usageErrorf("--target-inclusive and --target-action need a recovery target (--target-time, --target-lsn, --target-xid, --target-name or --target immediate); without one, recovery replays all archived WAL and promotes")
	}
	switch t.Action {
	case "", pg.ActionPause, pg.ActionPromote, pg.ActionShutdown:
	default:
		return t, usageErrorf("--target-action %q: want promote, pause or shutdown", t.Action)
	}
	switch tl := c.String("target-timeline"); tl {
	case "":
	case "latest":
		t.Timeline = restore.LatestTimeline
	default:
		n, err := strconv.ParseUint(tl, 10, 32)
		if err != nil || n == 0 || n == uint64(restore.LatestTimeline) {
			return t, usageErrorf("--target-timeline %q: want a timeline number or latest", tl)
		}
		t.Timeline = pg.TimelineID(n)
	}
	return t, nil
}

func parseTablespaceMap(specs []string) (map[string]string, error) {
	m := map[string]string{}
	for _, s := range specs {
		from, to, ok := strings.Cut(s, "=")
		if !ok || !filepath.IsAbs(from) || !filepath.IsAbs(to) {
			return nil, usageErrorf("--tablespace-map %q: want OLD=NEW, both absolute paths", s)
		}
		m[filepath.Clean(from)] = filepath.Clean(to)
	}
	return m, nil
}

func lookupOwner(name string) (*osuser.Owner, error) {
	o, err := osuser.Lookup(name)
	if err != nil {
		return nil, usageErrorf("--owner: %v", err)
	}
	return o, nil
}

// fetchCommand is the restore_command the server of a restored data
// directory will run: this very binary by absolute path, with the
// repository settings this restore used (the server's environment has none
// of ours).
func fetchCommand(c *cli.Context) (wal.FetchCommand, error) {
	args, err := walFetchArgs(c)
	return wal.FetchCommand{Args: args}, err
}

// walFetchArgs is the tidemark wal-fetch command line up to the file
// arguments. Secrets never go there: S3 credentials come from the server's
// environment, keys from the files named.
func walFetchArgs(c *cli.Context) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the tidemark binary for restore_command: %w", err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return nil, fmt.Errorf("find the tidemark binary for restore_command: %w", err)
	}
	// --pgdata . (PostgreSQL runs restore_command in the data directory)
	// so that a pgdata from the config file or TIDEMARK_PGDATA, naming the
	// production cluster, never makes wal-fetch read that cluster's
	// pg_control or spool.
	args := []string{exe, "wal-fetch", "--pgdata", "."}
	if cfg := c.String("config"); cfg != "" {
		abs, err := filepath.Abs(cfg)
		if err != nil {
			return nil, usageErrorf("--config: %v", err)
		}
		args = append(args, "--config", abs)
	}
	if v := c.String("repo"); v != "" {
		args = append(args, "--repo", v)
	}
	for _, id := range c.StringSlice("identity") {
		abs, err := filepath.Abs(id)
		if err != nil {
			return nil, usageErrorf("--identity: %v", err)
		}
		args = append(args, "--identity", abs)
	}
	if v := c.String("passphrase-file"); v != "" {
		abs, err := filepath.Abs(v)
		if err != nil {
			return nil, usageErrorf("--passphrase-file: %v", err)
		}
		args = append(args, "--passphrase-file", abs)
	}
	// The second repository, so that recovery falls back to it too.
	if v := c.String(secondRepo); v != "" {
		args = append(args, "--repo2", v)
		for _, id := range c.StringSlice("repo2-identity") {
			abs, err := filepath.Abs(id)
			if err != nil {
				return nil, usageErrorf("--repo2-identity: %v", err)
			}
			args = append(args, "--repo2-identity", abs)
		}
		if v := c.String("repo2-passphrase-file"); v != "" {
			abs, err := filepath.Abs(v)
			if err != nil {
				return nil, usageErrorf("--repo2-passphrase-file: %v", err)
			}
			args = append(args, "--repo2-passphrase-file", abs)
		}
	}
	// Recovery fetches WAL under the limit the restore had.
	if v := c.String("max-download-rate"); v != "" {
		args = append(args, "--max-download-rate", v)
	}
	return args, nil
}

func printRestore(w io.Writer, pgdata string, res *restore.Result) {
	s := res.Snapshot
	fmt.Fprintf(w, "restored backup %s (stopped %s, LSN %s) of cluster %d into %s\n",
		s.ID, s.StopTime.UTC().Format(time.RFC3339), pg.LSN(s.StopLSN), res.Cluster, pgdata)
	fmt.Fprintf(w, "  %d files, %s; fetched %s in %d blobs", res.Files, bytesize.Format(res.Bytes), bytesize.Format(res.FetchedBytes), res.FetchedBlobs)
	if res.SkippedFiles > 0 || res.RemovedPaths > 0 {
		fmt.Fprintf(w, "; %d files already right, %d entries removed", res.SkippedFiles, res.RemovedPaths)
	}
	fmt.Fprintln(w)
	if d := res.DeltaPages; d != nil {
		fmt.Fprintf(w, "  relation pages kept: %d by window sum, %d by slot, %d by deltas, %d by blob; fetched: %d as deltas, %d cut from blobs, %d in whole blobs; %d zeroed\n",
			d.KeptBySum, d.KeptBySlot, d.KeptByDeltas, d.KeptByBlob, d.FetchedDelta, d.FetchedPart, d.FetchedWhole, d.Zeroed)
	}
	fmt.Fprintf(w, "  recovery along %s\n", res.TimelineReason)
	if !res.LastCommit.IsZero() {
		fmt.Fprintf(w, "  archived WAL reaches LSN %s, last commit at %s\n", res.LastRecoverable, res.LastCommit.UTC().Format(time.RFC3339Nano))
	} else {
		fmt.Fprintf(w, "  archived WAL reaches LSN %s\n", res.LastRecoverable)
	}
	fmt.Fprintln(w, "  postgresql.auto.conf:")
	for _, st := range res.Settings {
		fmt.Fprintf(w, "    %s\n", st)
	}
	if res.Standby {
		fmt.Fprintf(w, "start the standby: pg_ctl -D %s start (it replays the archive, then streams from its primary)\n", wal.ShellQuote(pgdata))
		return
	}
	fmt.Fprintf(w, "start the server to recover: pg_ctl -D %s start\n", wal.ShellQuote(pgdata))
}

// restoreJSON is restore --json's output, and with --dry-run the plan.
type restoreJSON struct {
	PGData             string     `json:"pgdata"`
	Cluster            uint64     `json:"cluster,string"`
	Snapshot           string     `json:"snapshot"`
	SnapshotStopTime   time.Time  `json:"snapshot_stop_time"`
	SnapshotStopLSN    string     `json:"snapshot_stop_lsn"`
	Timeline           uint32     `json:"timeline"`
	TimelineReason     string     `json:"timeline_reason"`
	LastRecoverableLSN string     `json:"last_recoverable_lsn"`
	LastCommit         *time.Time `json:"last_commit,omitempty"`
	Files              int64      `json:"files"`
	Bytes              int64      `json:"bytes"`
	RecoverySettings   []string   `json:"recovery_settings"`
	Standby            bool       `json:"standby"`
	// A restore that ran.
	FetchedBytes *int64 `json:"fetched_bytes,omitempty"`
	FetchedBlobs *int64 `json:"fetched_blobs,omitempty"`
	WrittenBytes *int64 `json:"written_bytes,omitempty"`
	SkippedFiles *int64 `json:"skipped_files,omitempty"`
	RemovedPaths *int64 `json:"removed_paths,omitempty"`
	// A delta restore: how the existing relation pages were proved.
	DeltaPages *restore.DeltaPages `json:"delta_pages,omitempty"`
	// A dry run.
	Plan *restorePlanJSON `json:"plan,omitempty"`
}

type restorePlanJSON struct {
	SnapshotReason string               `json:"snapshot_reason"`
	WALFirst       string               `json:"wal_first"`
	WALLast        string               `json:"wal_last"`
	WALSegments    int64                `json:"wal_segments"`
	WALBytes       int64                `json:"wal_bytes"`
	WALComplete    bool                 `json:"wal_complete"`
	FetchBytes     int64                `json:"fetch_bytes"`
	FetchBlobs     int64                `json:"fetch_blobs"`
	WriteBytes     int64                `json:"write_bytes"`
	Space          []restoreSpaceJSON   `json:"space"`
	Estimate       *restoreEstimateJSON `json:"estimate,omitempty"`
	Problems       []string             `json:"problems"`
}

type restoreSpaceJSON struct {
	Path      string `json:"path"`
	Available int64  `json:"available_bytes"`
	Needed    int64  `json:"needed_bytes"`
	Enough    bool   `json:"enough"`
}

type restoreEstimateJSON struct {
	RestoreSeconds float64  `json:"restore_seconds"`
	ReplaySeconds  *float64 `json:"replay_seconds,omitempty"`
	Basis          string   `json:"basis"`
}

func describeRestore(pgdata string, res *restore.Result) restoreJSON {
	s := res.Snapshot
	j := restoreJSON{PGData: pgdata, Cluster: res.Cluster, Snapshot: s.ID, SnapshotStopTime: s.StopTime, SnapshotStopLSN: pg.LSN(s.StopLSN).String(),
		Timeline: uint32(res.Timeline), TimelineReason: res.TimelineReason, LastRecoverableLSN: res.LastRecoverable.String(),
		Files: res.Files, Bytes: res.Bytes, RecoverySettings: res.Settings, Standby: res.Standby}
	if !res.LastCommit.IsZero() {
		t := res.LastCommit
		j.LastCommit = &t
	}
	p := res.Plan
	if p == nil {
		j.FetchedBytes, j.FetchedBlobs, j.WrittenBytes = &res.FetchedBytes, &res.FetchedBlobs, &res.WrittenBytes
		j.SkippedFiles, j.RemovedPaths, j.DeltaPages = &res.SkippedFiles, &res.RemovedPaths, res.DeltaPages
		return j
	}
	pj := &restorePlanJSON{SnapshotReason: p.SnapshotReason, WALFirst: p.WALFirst, WALLast: p.WALLast, WALSegments: p.WALSegments,
		WALBytes: p.WALBytes, WALComplete: p.WALComplete, FetchBytes: p.FetchBytes, FetchBlobs: p.FetchBlobs, WriteBytes: p.WriteBytes,
		Problems: p.Problems}
	for _, sp := range p.Space {
		pj.Space = append(pj.Space, restoreSpaceJSON{Path: sp.Path, Available: sp.Available, Needed: sp.Needed, Enough: sp.Enough})
	}
	if e := p.Estimate; e != nil {
		pj.Estimate = &restoreEstimateJSON{RestoreSeconds: e.RestoreSeconds, Basis: e.Basis}
		if e.ReplayKnown {
			r := e.ReplaySeconds
			pj.Estimate.ReplaySeconds = &r
		}
	}
	j.Plan = pj
	return j
}

func printRestorePlan(w io.Writer, j restoreJSON) {
	p := j.Plan
	fmt.Fprintf(w, "dry run: nothing written. A restore into %s would:\n", j.PGData)
	fmt.Fprintf(w, "  restore backup %s of cluster %d (stopped %s, LSN %s): %s\n", j.Snapshot, j.Cluster,
		j.SnapshotStopTime.UTC().Format(time.RFC3339), j.SnapshotStopLSN, p.SnapshotReason)
	fmt.Fprintf(w, "  recover along %s\n", j.TimelineReason)
	archived := "all archived"
	if !p.WALComplete {
		archived = "NOT ALL ARCHIVED"
	}
	fmt.Fprintf(w, "  WAL: %s .. %s, %d segments (%s), %s; archived WAL reaches LSN %s\n", p.WALFirst, p.WALLast, p.WALSegments,
		bytesize.Format(p.WALBytes), archived, j.LastRecoverableLSN)
	fmt.Fprintf(w, "  fetch %s in %d blobs; write %d files, %s (%s with holes)\n", bytesize.Format(p.FetchBytes), p.FetchBlobs,
		j.Files, bytesize.Format(p.WriteBytes), bytesize.Format(j.Bytes))
	for _, sp := range p.Space {
		verdict := "enough"
		if !sp.Enough {
			verdict = "NOT ENOUGH"
		}
		fmt.Fprintf(w, "  space at %s: needs %s, %s available: %s\n", sp.Path, bytesize.Format(sp.Needed), bytesize.Format(sp.Available), verdict)
	}
	if e := p.Estimate; e != nil {
		replay := "replay not estimated"
		if e.ReplaySeconds != nil {
			replay = fmt.Sprintf("replay about %s", (time.Duration(*e.ReplaySeconds * float64(time.Second))).Round(time.Second))
		}
		fmt.Fprintf(w, "  time: restore about %s, %s (%s)\n", (time.Duration(e.RestoreSeconds * float64(time.Second))).Round(time.Second), replay, e.Basis)
	}
	fmt.Fprintln(w, "  recovery settings:")
	for _, st := range j.RecoverySettings {
		fmt.Fprintf(w, "    %s\n", st)
	}
	for _, pr := range p.Problems {
		fmt.Fprintf(w, "  REFUSED: %s\n", pr)
	}
	if len(p.Problems) == 0 {
		fmt.Fprintln(w, "  nothing stands in the way")
	}
}
