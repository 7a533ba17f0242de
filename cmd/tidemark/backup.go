package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/backup"
	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// backupRepoOptions bound what a backup holds in memory (--pack-memory:
// with the default, peak RSS stays under 96 MiB whatever the database
// size) and make an interrupted backup index what it uploaded often enough
// for the next run to reuse most of it.
func backupRepoOptions(packMemory, readMemory int64) repo.Options {
	return repo.Options{
		PackMemory:        packMemory,
		ReadMemory:        readMemory,
		IndexEveryPacks:   4,
		IndexEvery:        time.Minute,
		UploadConcurrency: max(2, runtime.GOMAXPROCS(0)/2),
	}
}

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "take a base backup of a running cluster (incremental when an earlier one exists)",
		Description: "Runs pg_backup_start, reads PGDATA and the tablespaces directly, pg_control last, then pg_backup_stop,\n" +
			"and commits the snapshot once the WAL from start to stop is in the repository. Incremental against the\n" +
			"newest snapshot of the cluster on the same timeline unless --full. Run it on the database host.",
		Flags: flagSet(repoFlags(), repo2Flags(), rateFlags(), pgFlags(), []cli.Flag{
			&cli.StringFlag{Name: "to", Value: firstRepo,
				Usage: "repository to write the snapshot to: repo, or repo2 (the second repository, which must have the WAL too)", EnvVars: []string{envName("to")}},
			&cli.BoolFlag{Name: "full", Usage: "read and store everything instead of only what changed", EnvVars: []string{envName("full")}},
			&cli.IntFlag{Name: "parallel", Usage: "files (and ranges of big files) read at once", DefaultText: "the number of CPUs", EnvVars: []string{envName("parallel")}},
			&cli.BoolFlag{Name: "no-fast-checkpoint", Usage: "let pg_backup_start wait for a spread checkpoint", EnvVars: []string{envName("no-fast-checkpoint")}},
			&cli.BoolFlag{Name: "fail-on-checksum-error", Usage: "fail (no snapshot) if a page checksum fails, instead of recording it", EnvVars: []string{envName("fail-on-checksum-error")}},
			&cli.BoolFlag{Name: "no-wal-summaries", Usage: "find changed pages by their LSN even when summaries (the block summaries archiving writes beside the WAL, or PostgreSQL 17's) cover the range", EnvVars: []string{envName("no-wal-summaries")}},
			&cli.BoolFlag{Name: "no-page-deltas", EnvVars: []string{envName("no-page-deltas")},
				Usage: "store changed pages whole instead of as deltas against their base slot (no base slots read back; larger incrementals)"},
			&cli.BoolFlag{Name: "direct-io", EnvVars: []string{envName("direct-io")},
				Usage: "read relation files with O_DIRECT, bypassing the page cache, which then keeps the database's cached pages (slower on the benchmark VM)"},
			stringFlag("max-read-rate", "read at most this many bytes per second from the data directory (e.g. 200MiB)"),
			&cli.StringFlag{Name: "pack-memory", Value: "32MiB", EnvVars: []string{envName("pack-memory")},
				Usage: "bytes of packs held while they fill and upload; packs are filled smaller than the repository's pack size when two would not fit"},
			&cli.StringFlag{Name: "read-memory", Value: "8MiB", EnvVars: []string{envName("read-memory")},
				Usage: "bytes of base slots (and page maps, trees) read back from the repository at once, by all workers together"},
			&cli.DurationFlag{Name: "archive-timeout", Value: backup.DefaultArchiveWait, EnvVars: []string{envName("archive-timeout")},
				Usage: "how long to wait for the WAL up to the backup's stop to be archived before failing"},
			&cli.IntFlag{Name: "rebase-pages", Hidden: true, EnvVars: []string{envName("rebase-pages")},
				Usage: "rewrite a slot whole when more of its pages than this would be in patches (default 96 of 128)"},
			stringFlag("label", "label passed to pg_backup_start, written into backup_label (the snapshot id is appended)"),
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
			cpuProfileFlag(),
			metricsFileFlag(),
		}),
		Action: runBackup,
	}
}

func runBackup(c *cli.Context) error {
	log, status, err := progressLogger(c)
	if err != nil {
		return err
	}
	pgdata, err := requireString(c, "pgdata")
	if err != nil {
		return err
	}
	opts := backup.Options{
		PGData: pgdata, ConnString: c.String("pg-conn"), Parallel: c.Int("parallel"), Full: c.Bool("full"),
		SpreadCheckpoint: c.Bool("no-fast-checkpoint"), FailOnChecksumError: c.Bool("fail-on-checksum-error"),
		NoWALSummary: c.Bool("no-wal-summaries"), Label: c.String("label"), Logger: log, ToolVersion: versionString(),
		ArchiveWait: c.Duration("archive-timeout"), RebasePages: c.Int("rebase-pages"), NoPageDeltas: c.Bool("no-page-deltas"),
		DirectIO: c.Bool("direct-io"),
	}
	if opts.Parallel < 0 {
		return usageErrorf("--parallel %d: want at least 1", opts.Parallel)
	}
	if v := c.String("max-read-rate"); v != "" {
		if opts.MaxReadRate, err = bytesize.Parse(v); err != nil || opts.MaxReadRate <= 0 {
			return usageErrorf("--max-read-rate %q: want bytes per second, e.g. 200MiB (units are powers of 1024)", v)
		}
	}
	if status != nil {
		opts.Progress = func(p backup.Progress) { status.show(p.String(), p.Final) }
	} else {
		opts.Progress, opts.ProgressEvery = logProgress(log), logProgressEvery
	}
	packMemory, err := bytesize.Parse(c.String("pack-memory"))
	if err != nil || packMemory < 8<<20 {
		return usageErrorf("--pack-memory %q: want a size of at least 8MiB, such as 32MiB", c.String("pack-memory"))
	}
	readMem, err := readMemory(c)
	if err != nil {
		return err
	}
	setMemoryLimit(packMemory + readMem + int64(opts.Workers())*backup.WorkerMemory)
	to, err := repoChoice(c, "to")
	if err != nil {
		return err
	}
	r, err := openRepoAt(c.Context, c, log, to, backupRepoOptions(packMemory, readMem), 0)
	if err != nil {
		return err
	}
	defer r.Close()
	opts.WAL = walarchive.FromRepo(r, walarchive.Options{Logger: log})
	stop, err := startCPUProfile(c)
	if err != nil {
		return err
	}
	defer stop()
	res, err := backup.Run(c.Context, r, opts)
	if err != nil {
		return err
	}
	if res != nil && res.Snapshot != nil {
		m := metrics.NewSet()
		m.AddBackup(res)
		if err := writeMetrics(c, m); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "backup", backupJSON(res))
	}
	printBackup(c.App.Writer, res)
	return nil
}

func printBackup(w io.Writer, res *backup.Result) {
	s := res.Snapshot
	kind := "full"
	if s.Type == repo.SnapshotIncremental {
		kind = fmt.Sprintf("incremental of %s, changes found by %s", s.Parent, res.Method)
	}
	fmt.Fprintf(w, "snapshot %s committed (%s): %s in %d files, read %s, stored %s, %s to %s on timeline %d, %.1fs\n",
		s.ID, kind, bytesize.Format(s.Stats.LogicalBytes), s.Stats.Files, bytesize.Format(res.Stats.ReadBytes),
		bytesize.Format(s.Stats.NewBytes), pg.LSN(s.StartLSN), pg.LSN(s.StopLSN), s.StopTimeline, s.Stats.Seconds)
	if res.Fallback != "" && res.Method == backup.MethodLSNScan {
		fmt.Fprintf(w, "change detection: %s (%s)\n", res.Method, res.Fallback)
	}
	for _, src := range res.Sources {
		switch {
		case src.Reason != "":
			fmt.Fprintf(w, "  %s: not usable: %s\n", src.Method, src.Reason)
		case src.Used:
			fmt.Fprintf(w, "  %s: used, %d pages to read from %d summaries\n", src.Method, src.Pages, src.Summaries)
		default:
			fmt.Fprintf(w, "  %s: usable, %d pages to read from %d summaries\n", src.Method, src.Pages, src.Summaries)
		}
	}
	for _, e := range s.ChecksumErrors {
		fmt.Fprintf(w, "checksum failure: %s block %d (stored %#04x, computed %#04x)\n", e.File, e.Block, e.Found, e.Expected)
	}
	if n := len(s.ChecksumErrors); n > 0 {
		fmt.Fprintf(w, "%d page checksum failure(s) recorded in the snapshot; check the storage under the data directory\n", n)
	}
}

type backupResultJSON struct {
	Snapshot backup.SnapshotInfo   `json:"snapshot"`
	Key      string                `json:"key"`
	Method   string                `json:"method"`
	Fallback string                `json:"fallback,omitempty"`
	Sources  []backup.ChangeSource `json:"change_sources,omitempty"`
	Stats    backup.Stats          `json:"stats"`
	Timing   timingJSON            `json:"timing_seconds"`
	Errors   []repo.ChecksumError  `json:"checksum_errors,omitempty"`
}

type timingJSON struct {
	Start  float64 `json:"start"`
	Copy   float64 `json:"copy"`
	Stop   float64 `json:"stop"`
	Commit float64 `json:"commit"`
}

func backupJSON(res *backup.Result) backupResultJSON {
	tm := res.Timing
	return backupResultJSON{Snapshot: backup.Describe(res.Snapshot), Key: res.Key, Method: res.Method,
		Timing:   timingJSON{tm.Start.Seconds(), tm.Copy.Seconds(), tm.Stop.Seconds(), tm.Commit.Seconds()},
		Fallback: res.Fallback, Sources: res.Sources, Stats: res.Stats, Errors: res.Snapshot.ChecksumErrors}
}

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the snapshots in the repository",
		Flags: flagSet(repoFlags(), []cli.Flag{
			stringFlag("cluster", "only this cluster's snapshots (system identifier)"),
			&cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{envName("json")}},
		}),
		Action: runList,
	}
}

// openForListing opens the repository for list and info, with the
// --cluster they filter by (0: every cluster). The caller closes it.
func openForListing(c *cli.Context) (*repo.Repo, uint64, error) {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return nil, 0, err
	}
	var cluster uint64
	if v := c.String("cluster"); v != "" {
		if cluster, err = strconv.ParseUint(v, 10, 64); err != nil || cluster == 0 {
			return nil, 0, usageErrorf("--cluster %q: want the system identifier, a decimal number (pg_controldata shows it)", v)
		}
	}
	r, err := openRepo(c, log, repo.Options{})
	return r, cluster, err
}

func runList(c *cli.Context) error {
	r, cluster, err := openForListing(c)
	if err != nil {
		return err
	}
	defer r.Close()
	list, err := backup.List(c.Context, r, cluster)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "snapshots", list)
	}
	printList(c.App.Writer, list)
	return nil
}

func printList(w io.Writer, list []backup.SnapshotInfo) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no snapshots")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SNAPSHOT\tCLUSTER\tTYPE\tSTARTED\tDURATION\tLSN\tTL\tSIZE\tSTORED\tCHECKSUM ERRORS")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s-%s\t%d\t%s\t%s\t%d\n", s.ID, s.Cluster, s.Type,
			s.StartTime.Local().Format("2006-01-02 15:04:05"), (time.Duration(s.Seconds * float64(time.Second))).Round(100*time.Millisecond),
			s.StartLSN, s.StopLSN, s.Timeline, bytesize.Format(s.LogicalBytes), bytesize.Format(s.NewBytes), s.ChecksumErrors)
	}
	tw.Flush()
}

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "describe the repository, or one snapshot",
		ArgsUsage: "[snapshot-id]",
		Flags: flagSet(repoFlags(), []cli.Flag{
			stringFlag("cluster", "the cluster of the snapshot, when the repository holds several"),
			&cli.BoolFlag{Name: "json", Usage: "print JSON", EnvVars: []string{envName("json")}},
		}),
		Action: runInfo,
	}
}

func runInfo(c *cli.Context) error {
	if c.NArg() > 1 {
		return usageErrorf("info takes at most one snapshot id, got %d arguments", c.NArg())
	}
	r, cluster, err := openForListing(c)
	if err != nil {
		return err
	}
	defer r.Close()
	if id := c.Args().First(); id != "" {
		d, err := backup.Inspect(c.Context, r, cluster, id)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, "snapshot", d)
		}
		printSnapshotDetail(c.App.Writer, d)
		return nil
	}
	info, err := backup.Info(c.Context, r)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "repository", info)
	}
	printInfo(c.App.Writer, info)
	return nil
}

func printInfo(w io.Writer, in *backup.RepositoryInfo) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "repository\t%s\n", in.URL)
	fmt.Fprintf(tw, "id\t%s (format %d, created %s)\n", in.ID, in.Format, in.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "compression\t%s level %d, packs of %s\n", in.Compression, in.CompressionLevel, bytesize.Format(in.PackSize))
	fmt.Fprintf(tw, "snapshots\t%d\n", in.Snapshots)
	for _, cl := range in.Clusters {
		fmt.Fprintf(tw, "cluster %d\t%d snapshot(s), %s to %s, newest %s\n", cl.Cluster, cl.Snapshots,
			cl.Oldest.Local().Format("2006-01-02 15:04"), cl.Newest.Local().Format("2006-01-02 15:04"), cl.Latest)
	}
	fmt.Fprintf(tw, "stored\t%s in %d packs (data %s, metadata %s), WAL %s in %d objects\n", bytesize.Format(in.StoredBytes), in.Packs,
		bytesize.Format(in.DataBytes), bytesize.Format(in.MetaBytes), bytesize.Format(in.WALBytes), in.WALObjects)
	fmt.Fprintf(tw, "logical\t%s over all snapshots\n", bytesize.Format(in.LogicalBytes))
	fmt.Fprintf(tw, "dedup ratio\t%.1fx\n", in.DedupRatio)
	tw.Flush()
}

func printSnapshotDetail(w io.Writer, d *backup.SnapshotDetail) {
	s := d.SnapshotInfo
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "snapshot\t%s\n", s.ID)
	fmt.Fprintf(tw, "cluster\t%d (PostgreSQL %d)\n", s.Cluster, s.PGVersion)
	fmt.Fprintf(tw, "type\t%s\n", s.Type)
	if s.Parent != "" {
		fmt.Fprintf(tw, "parent\t%s\n", s.Parent)
	}
	fmt.Fprintf(tw, "started\t%s\n", s.StartTime.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "stopped\t%s (%.1fs)\n", s.StopTime.Local().Format(time.RFC3339), s.Seconds)
	fmt.Fprintf(tw, "WAL\t%s to %s, timeline %d\n", s.StartLSN, s.StopLSN, s.Timeline)
	fmt.Fprintf(tw, "size\t%s in %d files\n", bytesize.Format(s.LogicalBytes), s.Files)
	fmt.Fprintf(tw, "stored\t%s new\n", bytesize.Format(s.NewBytes))
	fmt.Fprintf(tw, "host\t%s (%s)\n", s.Host, s.ToolVersion)
	for _, ts := range d.Tablespaces {
		fmt.Fprintf(tw, "tablespace\t%d at %s\n", ts.OID, ts.Path)
	}
	fmt.Fprintf(tw, "checksum errors\t%d\n", s.ChecksumErrors)
	tw.Flush()
	for _, e := range d.ChecksumErrors {
		fmt.Fprintf(w, "  %s block %d (stored %#04x, computed %#04x)\n", e.File, e.Block, e.Found, e.Expected)
	}
	fmt.Fprintf(w, "backup_label:\n%s", d.BackupLabel)
}

// cpuProfileFlag is the hidden flag through which the benchmarks profile a
// command.
func cpuProfileFlag() cli.Flag {
	return &cli.StringFlag{Name: "cpuprofile", Hidden: true, Usage: "write a CPU profile (pprof) of the command to this file"}
}

// startCPUProfile starts the profile --cpuprofile asks for; the returned
// function stops it.
func startCPUProfile(c *cli.Context) (func(), error) {
	path := c.String("cpuprofile")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, usageErrorf("--cpuprofile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
