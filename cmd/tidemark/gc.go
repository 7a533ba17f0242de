package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/gc"
	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/repo"
)

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "delete packs no snapshot refers to and repack mostly dead ones, safely while backups run",
		Description: "Marks every blob every snapshot refers to, quarantines packs that hold none of them (or are in no index,\n" +
			"or are mostly dead) once they are older than --grace and than every running backup, and deletes a\n" +
			"quarantined pack only after every backup, restore, drill and verify that was running when it was\n" +
			"quarantined has ended and no snapshot committed since needs it. Backups that start after the quarantine\n" +
			"never reuse what is in it. The deletion happens in the next run, or in this one with --wait. See\n" +
			"docs/operations.md.",
		Flags: flagSet(repoFlags(), []cli.Flag{
			&cli.DurationFlag{Name: "grace", Value: time.Hour, Usage: "leave packs younger than this (and than the oldest running backup) alone; also covers clock differences between hosts", EnvVars: []string{envName("grace")}},
			stringFlag("repack-dead", "repack a pack when at least this share of its bytes is dead (default 50%; 100% turns repacking off)"),
			&cli.DurationFlag{Name: "wait", Usage: "wait up to this long for the leases the new quarantine must outlive, then delete in this run", EnvVars: []string{envName("wait")}},
			&cli.StringFlag{Name: "read-memory", Value: "16MiB", EnvVars: []string{envName("read-memory")},
				Usage: "bytes of metadata (file maps, trees) read from the repository at once"},
			&cli.BoolFlag{Name: "dry-run", Usage: "show what would be quarantined and deleted; change nothing", EnvVars: []string{envName("dry-run")}},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
			metricsFileFlag(),
		}),
		Action: runGC,
	}
}

func runGC(c *cli.Context) error {
	log, status, err := progressLogger(c)
	if err != nil {
		return err
	}
	opts := gc.Options{Grace: c.Duration("grace"), Wait: c.Duration("wait"), DryRun: c.Bool("dry-run"), Logger: log}
	if opts.Grace <= 0 {
		return usageErrorf("--grace %s: want a positive duration (it also absorbs clock differences between hosts)", opts.Grace)
	}
	if v := c.String("repack-dead"); v != "" {
		if opts.RepackDead, err = parsePercent(v); err != nil {
			return usageErrorf("--repack-dead %q: %v", v, err)
		}
	}
	// Repacking writes through a Writer (its packs) and reads what it
	// moves; marking reads metadata.
	readMem, err := readMemory(c)
	if err != nil {
		return err
	}
	setMemoryLimit(repo.DefaultPackMemory + readMem)
	r, err := openRepo(c, log, repo.Options{ReadMemory: readMem})
	if err != nil {
		return err
	}
	defer r.Close()
	start := time.Now()
	opts.Progress = progress.NewCounter()
	opts.Progress.Phase("list", 0, "")
	stopProgress := watchProgress("gc", status, log, opts.Progress)
	res, err := gc.Run(c.Context, r, opts)
	stopProgress()
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, "gc", res); err != nil {
			return err
		}
	} else {
		printGC(c.App.Writer, res, opts)
	}
	if opts.DryRun {
		return nil
	}
	m := metrics.NewSet()
	m.AddGC(res, time.Now(), time.Since(start))
	return writeMetrics(c, m)
}

func printGC(w io.Writer, res *gc.Result, opts gc.Options) {
	fmt.Fprintf(w, "marked %d snapshots: %d metadata blobs read, %d distinct blobs referenced; %d packs (%s) listed, %d index entries\n",
		res.Snapshots, res.MetaBlobs, res.Referenced, res.Packs, bytesize.Format(res.PackBytes), res.IndexBlobs)
	if opts.DryRun {
		for _, c := range res.Candidates {
			fmt.Fprintf(w, "  would %-10s %s (%s, %s)\n", c.Action, c.Key, c.Reason, bytesize.Format(c.Size))
		}
		fmt.Fprintf(w, "dry run: would quarantine %d packs (%s) and delete %d (%s); nothing changed\n",
			res.Quarantined.Packs, bytesize.Format(res.Quarantined.Bytes), res.Deleted.Packs, bytesize.Format(res.Deleted.Bytes))
		return
	}
	fmt.Fprintf(w, "deleted %d packs (%s); quarantined %d (%s); released %d a snapshot needs again; repacked %d (%s of live blobs copied)\n",
		res.Deleted.Packs, bytesize.Format(res.Deleted.Bytes), res.Quarantined.Packs, bytesize.Format(res.Quarantined.Bytes),
		res.Released.Packs, res.Repacked.Packs, bytesize.Format(res.CopiedBytes))
	if res.Pending > 0 {
		fmt.Fprintf(w, "%d quarantine(s) wait for %s to end; the next gc run deletes what they hold\n", res.Pending, strings.Join(res.Waiting, ", "))
	}
	if res.Locked.Packs > 0 {
		fmt.Fprintf(w, "%d packs (%s) no longer needed are still under the object lock; the first gc after %s takes them\n",
			res.Locked.Packs, bytesize.Format(res.Locked.Bytes), res.LockedUntil.UTC().Format(time.RFC3339))
	}
}
