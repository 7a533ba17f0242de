package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/restore"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

func drillCommand() *cli.Command {
	return &cli.Command{
		Name:  "drill",
		Usage: "prove a backup restores: restore, recover to a target, check, clean up, report",
		Description: "Restores a snapshot (the newest, --backup ID or --random) into a scratch directory, starts PostgreSQL of its\n" +
			"major version there (archiving off, Unix socket only, as --pg-user when run as root) with restore_command =\n" +
			"tidemark wal-fetch, recovers to the target (default: a random time recoverable from the snapshot) and\n" +
			"promotes; then proves where it stopped (the timeline history the promotion wrote must name the target, and the\n" +
			"heartbeat row of tidemark agent --heartbeat, read back, must be the source's at that point: without one the\n" +
			"drill fails unless --allow-unproven), runs pg_amcheck\n" +
			"where installed and --check-sql, stops the server and verifies every data page's checksum. Stores a report\n" +
			"in the repository (drills/<cluster>/<id>), removes the scratch cluster and exits 6 on any failure.",
		Flags: flagSet(repoFlags(), repo2Flags(), []cli.Flag{
			stringFlag("backup", "backup id to drill, or latest (default)"),
			&cli.BoolFlag{Name: "random", Usage: "drill a random kept backup", EnvVars: []string{envName("random")}},
			stringFlag("target-time", "recover to this time instead of a random one"),
			stringFlag("target-lsn", "recover to this WAL position"),
			stringFlag("target-xid", "recover to this transaction ID"),
			stringFlag("target-name", "recover to this restore point"),
			stringFlag("target", "immediate: stop as soon as the backup is consistent"),
			&cli.BoolFlag{Name: "target-inclusive", Usage: "stop just after the target, or with --target-inclusive=false just before it", DefaultText: "true, as PostgreSQL", EnvVars: []string{envName("target-inclusive")}},
			stringFlag("db-name", "database of the heartbeat and the checks (default postgres)"),
			stringFlag("check-sql", "file of SQL checks; each statement must return one row holding true"),
			&cli.StringFlag{Name: "amcheck", Value: "auto", Usage: "pg_amcheck: auto (when installed), on (required) or off", EnvVars: []string{envName("amcheck")}},
			&cli.BoolFlag{Name: "allow-unproven", Usage: "pass a drill whose recovery point could not be proven because the source writes no heartbeat (tidemark agent --heartbeat)", EnvVars: []string{envName("allow-unproven")}},
			&cli.DurationFlag{Name: "heartbeat-slack", Value: 5 * time.Second, Usage: "how much more than one heartbeat interval the newest heartbeat may lie before the target", EnvVars: []string{envName("heartbeat-slack")}},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON", EnvVars: []string{envName("json")}},
			metricsFileFlag(),
		}, scratchFlags()),
		Action: runDrill,
	}
}

func runDrill(c *cli.Context) error {
	log, status, err := progressLogger(c)
	if err != nil {
		return err
	}
	opts := scratchOptions(c, log)
	opts.Backup, opts.Random = c.String("backup"), c.Bool("random")
	opts.Amcheck, opts.HeartbeatSlack = c.String("amcheck"), c.Duration("heartbeat-slack")
	opts.AllowUnproven = c.Bool("allow-unproven")
	if opts.Random && opts.Backup != "" {
		return usageErrorf("--random and --backup: give one")
	}
	switch opts.Amcheck {
	case "auto", "on", "off":
	default:
		return usageErrorf("--amcheck %q: want auto, on or off", opts.Amcheck)
	}
	if opts.Target, err = parseTarget(c); err != nil {
		return err
	}
	if p := c.String("check-sql"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return usageErrorf("--check-sql: %v", err)
		}
		if opts.Checks, err = drill.ParseChecks(p, string(b)); err != nil {
			return usageErrorf("--check-sql: %v", err)
		}
		if len(opts.Checks) == 0 {
			return usageErrorf("--check-sql %s holds no statement", p)
		}
	}
	// The drill's progress: the restore counts its bytes; recovery and
	// the checks that follow are shown as a phase with its elapsed time.
	ctr := progress.NewCounter()
	ctr.Phase("choose a backup", 0, "")
	r, arch, err := openScratch(c, log, &opts, ctr)
	if err != nil {
		return err
	}
	defer r.Close()
	defer watchProgress("drill", status, log, ctr)()
	rep, err := drill.Run(c.Context, r, arch, opts)
	if rep != nil && rep.Snapshot != "" {
		if c.Bool("json") {
			if jerr := writeJSON(c.App.Writer, "drill", rep); jerr != nil {
				return jerr
			}
		} else {
			printDrill(c.App.Writer, rep)
		}
		m := metrics.NewSet()
		m.AddDrill(rep)
		if merr := writeMetrics(c, m); merr != nil && err == nil {
			return merr
		}
	}
	return err
}

// scratchFlags are the flags of the commands that restore into a scratch
// cluster and start it (drill, rehearse).
func scratchFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("cluster", "system identifier of the cluster, when the repository holds several"),
		stringFlag("scratch-dir", "where to make the scratch cluster (default: the temporary directory)"),
		stringFlag("pg-bin", "bin directory of the PostgreSQL server of the backup's major version (default: the server running on --pgdata, pg_config, the packagers' directories, PATH)"),
		stringFlag("pgdata", "data directory of the source cluster on this host, if any: its running server's binaries are used", "PGDATA"),
		stringFlag("pg-user", "OS user to run the server as when run as root (default postgres)"),
		stringFlag("db-user", "database superuser to connect as (default postgres)"),
		&cli.StringSliceFlag{Name: "pg-option", Usage: "extra server setting NAME=VALUE for the scratch cluster (repeatable), e.g. shared_buffers=1GB", EnvVars: []string{envName("pg-option")}},
		&cli.DurationFlag{Name: "timeout", Value: 6 * time.Hour, Usage: "give up recovery after this long", EnvVars: []string{envName("timeout")}},
		&cli.BoolFlag{Name: "keep-on-failure", Usage: "leave the scratch directory of a failed run for inspection", EnvVars: []string{envName("keep-on-failure")}},
		retryForFlag(retry.DefaultMaxElapsed),
	}
}

// scratchOptions reads scratchFlags.
func scratchOptions(c *cli.Context, log *slog.Logger) drill.Options {
	return drill.Options{ScratchDir: c.String("scratch-dir"), PGBin: c.String("pg-bin"), PGData: c.String("pgdata"),
		PGUser: c.String("pg-user"), DBUser: c.String("db-user"), DBName: c.String("db-name"),
		ServerOptions: c.StringSlice("pg-option"), Timeout: c.Duration("timeout"), KeepOnFailure: c.Bool("keep-on-failure"),
		ToolVersion: versionString(), Logger: log}
}

// openScratch opens the repository for a scratch-cluster command and wires
// the restore and restore_command into opts. With repo2 set, it falls back
// to it as a restore does, and a drill stores its report where it read
// from. The restore counts its bytes on ctr (nil: not shown), and then
// starts ctr's recovery phase.
func openScratch(c *cli.Context, log *slog.Logger, opts *drill.Options, ctr *progress.Counter) (*repo.Failover, *walarchive.Failover, error) {
	if v := c.String("cluster"); v != "" {
		var err error
		if opts.Cluster, err = strconv.ParseUint(v, 10, 64); err != nil || opts.Cluster == 0 {
			return nil, nil, usageErrorf("--cluster %q: want the system identifier, a decimal number", v)
		}
	}
	fetch, err := fetchCommand(c)
	if err != nil {
		return nil, nil, err
	}
	opts.Fetch = fetch
	r, err := openFailover(c, log, repo.Options{ReadConcurrency: 4, ReadMemory: defaultReadMemory}, c.Duration("retry-for"))
	if err != nil {
		return nil, nil, err
	}
	arch := walarchive.NewFailover(r, walarchive.Options{Logger: log})
	opts.Restore = func(ctx context.Context, q drill.RestoreRequest) (drill.RestoreResult, error) {
		res, err := restore.Run(ctx, r, restore.ArchiveOf(arch), restore.Options{PGData: q.PGData, Cluster: q.Cluster,
			Backup: q.Backup, Target: q.Target, TablespaceMap: q.TablespaceMap, Owner: q.Owner,
			RestoreCommand: q.RestoreCommand, SpoolDir: q.SpoolDir, Logger: q.Logger, Now: q.Now, Progress: ctr})
		ctr.Phase("recover (WAL replay) and check", 0, "")
		if err != nil {
			return drill.RestoreResult{}, err
		}
		return drill.RestoreResult{Files: res.Files, Bytes: res.Bytes}, nil
	}
	return r, arch, nil
}

func printDrill(w io.Writer, rep *drill.Report) {
	status := "PASSED"
	if !rep.OK {
		status = "FAILED"
	}
	fmt.Fprintf(w, "drill %s of backup %s (cluster %d, PostgreSQL %d, stopped %s, LSN %s, timeline %d): %s\n",
		rep.ID, rep.Snapshot, rep.Cluster, rep.PGMajor, rep.SnapshotStop.UTC().Format(time.RFC3339), rep.SnapshotLSN, rep.Timeline, status)
	t := rep.Target
	switch t.Kind {
	case "time":
		how := ""
		if t.Random {
			how = fmt.Sprintf(" (random, window %s .. %s)", t.WindowStart.Format(time.RFC3339), t.WindowEnd.Format(time.RFC3339Nano))
		}
		fmt.Fprintf(w, "  target: time %s%s\n", t.Time.Format(time.RFC3339Nano), how)
	case "lsn":
		fmt.Fprintf(w, "  target: LSN %s\n", t.LSN)
	case "xid":
		fmt.Fprintf(w, "  target: xid %d\n", t.XID)
	case "name":
		fmt.Fprintf(w, "  target: restore point %s\n", t.Name)
	default:
		fmt.Fprintf(w, "  target: %s\n", t.Kind)
	}
	if t.Reached != "" {
		fmt.Fprintf(w, "  PostgreSQL: %s\n", t.Reached)
	}
	if t.Stopped != "" {
		fmt.Fprintf(w, "  recovery ended: %s\n", t.Stopped)
	}
	fmt.Fprintf(w, "  proof of the recovery point: %s\n", rep.Proof)
	fmt.Fprintf(w, "  time to recover: %.1f s (restore %.1f s, %d files, %s; replay and promotion %.1f s)\n",
		rep.RecoverSeconds, rep.RestoreSeconds, rep.RestoredFiles, bytesize.Format(rep.RestoredBytes), rep.ReplaySeconds)
	for _, ch := range rep.Checks {
		fmt.Fprintf(w, "  %-7s %s: %s\n", ch.Status, ch.Name, ch.Detail)
	}
	if rep.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", rep.Reason)
	}
	if rep.Key != "" {
		fmt.Fprintf(w, "  report: %s\n", rep.Key)
	}
}
