package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/retention"
)

func expireCommand() *cli.Command {
	return &cli.Command{
		Name:  "expire",
		Usage: "remove the snapshots a retention policy does not keep, and the WAL no kept snapshot needs",
		Description: "Keeps the newest snapshot always, and what --keep-within (a point-in-time window: every moment in it stays\n" +
			"recoverable), --keep-last, --keep-daily, --keep-weekly and --keep-monthly say (or the [expire] section of the\n" +
			"config file). Snapshots are ordered by their recorded times and LSNs, never by name. The WAL of the window is\n" +
			"kept from the start of the snapshot it needs onwards, on every timeline; other kept snapshots keep their own\n" +
			"start to stop. Packs are left to tidemark gc. A cluster being restored or drilled, or backed up, is left alone.",
		Flags: flagSet(repoFlags(), []cli.Flag{
			stringFlag("keep-within", "keep every moment of this last period recoverable: 7d, 36h, 2w"),
			&cli.IntFlag{Name: "keep-last", Usage: "keep the newest N snapshots", EnvVars: []string{envName("keep-last")}},
			&cli.IntFlag{Name: "keep-daily", Usage: "keep the newest snapshot of each of the last N days that have one", EnvVars: []string{envName("keep-daily")}},
			&cli.IntFlag{Name: "keep-weekly", Usage: "keep the newest snapshot of each of the last N ISO weeks that have one", EnvVars: []string{envName("keep-weekly")}},
			&cli.IntFlag{Name: "keep-monthly", Usage: "keep the newest snapshot of each of the last N months that have one", EnvVars: []string{envName("keep-monthly")}},
			stringFlag("cluster", "only this cluster (system identifier)"),
			&cli.BoolFlag{Name: "dry-run", Usage: "show what would be removed; change nothing", EnvVars: []string{envName("dry-run")}},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
			metricsFileFlag(),
		}),
		Action: runExpire,
	}
}

// parseRetention reads a duration with d (days) and w (weeks) besides Go's
// units.
func parseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		d      time.Duration
	}{{"d", 24 * time.Hour}, {"w", 7 * 24 * time.Hour}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(n, 64)
			if err != nil || v <= 0 {
				return 0, fmt.Errorf("want a positive duration such as 7d, 36h or 2w")
			}
			return time.Duration(v * float64(u.d)), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want a positive duration such as 7d, 36h or 2w")
	}
	return d, nil
}

func runExpire(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	p := retention.Policy{Last: c.Int("keep-last"), Daily: c.Int("keep-daily"), Weekly: c.Int("keep-weekly"), Monthly: c.Int("keep-monthly")}
	if v := c.String("keep-within"); v != "" {
		if p.Within, err = parseRetention(v); err != nil {
			return usageErrorf("--keep-within %q: %v", v, err)
		}
	}
	if p.Last < 0 || p.Daily < 0 || p.Weekly < 0 || p.Monthly < 0 {
		return usageErrorf("--keep-* counts must not be negative")
	}
	if p.Empty() {
		return usageErrorf("no retention policy: give --keep-within, --keep-last, --keep-daily, --keep-weekly or --keep-monthly, or set them in the [expire] section of the config file")
	}
	opts := retention.Options{Policy: p, DryRun: c.Bool("dry-run"), Logger: log}
	if v := c.String("cluster"); v != "" {
		if opts.Cluster, err = strconv.ParseUint(v, 10, 64); err != nil || opts.Cluster == 0 {
			return usageErrorf("--cluster %q: want the system identifier, a decimal number", v)
		}
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	res, err := retention.Run(c.Context, r, walarchive.FromRepo(r, walarchive.Options{Logger: log}), opts)
	var se *retention.SkippedError
	if err != nil && !errors.As(err, &se) {
		return err
	}
	if c.Bool("json") {
		if jerr := writeJSON(c.App.Writer, "expire", expireJSON(res, opts)); jerr != nil {
			return jerr
		}
	} else {
		printExpire(c.App.Writer, res, opts)
	}
	m := metrics.NewSet()
	m.AddExpire(res, time.Now())
	if !opts.DryRun {
		if merr := writeMetrics(c, m); merr != nil && err == nil {
			return merr
		}
	}
	if se != nil {
		return &codedError{err: err, code: exitLocked}
	}
	return nil
}

type expireSnapshotJSON struct {
	ID       string    `json:"id"`
	StopTime time.Time `json:"stop_time"`
	StopLSN  string    `json:"stop_lsn"`
	Timeline uint32    `json:"timeline"`
	Keep     bool      `json:"keep"`
	PITR     bool      `json:"pitr,omitempty"`
	Reasons  []string  `json:"reasons,omitempty"`
}

type expireRangeJSON struct {
	Timeline uint32 `json:"timeline"`
	First    string `json:"first"`
	Last     string `json:"last"`
	Segments uint64 `json:"segments"`
}

type expireClusterJSON struct {
	Cluster          uint64               `json:"cluster,string"`
	Skipped          string               `json:"skipped,omitempty"`
	Snapshots        []expireSnapshotJSON `json:"snapshots"`
	WALRemoved       []expireRangeJSON    `json:"wal_removed"`
	WALFiles         int                  `json:"wal_files"`
	WALBytes         int64                `json:"wal_bytes"`
	LockedSnapshots  int                  `json:"locked_snapshots,omitempty"`
	LockedWALFiles   int                  `json:"locked_wal_files,omitempty"`
	UnknownTimelines []pg.TimelineID      `json:"timelines_without_history,omitempty"`
}

func expireJSON(res *retention.Result, opts retention.Options) any {
	out := struct {
		DryRun   bool                `json:"dry_run"`
		Policy   string              `json:"policy"`
		Clusters []expireClusterJSON `json:"clusters"`
	}{DryRun: opts.DryRun, Policy: opts.Policy.String()}
	for _, cr := range res.Clusters {
		cj := expireClusterJSON{Cluster: cr.Cluster, Skipped: cr.Skipped, WALFiles: len(cr.WAL), WALBytes: cr.WALBytes, UnknownTimelines: cr.UnknownTimelines,
			LockedSnapshots: cr.LockedSnapshots, LockedWALFiles: cr.LockedWAL}
		for _, d := range cr.Decisions {
			s := d.Snapshot
			cj.Snapshots = append(cj.Snapshots, expireSnapshotJSON{ID: s.ID, StopTime: s.StopTime, StopLSN: pg.LSN(s.StopLSN).String(),
				Timeline: s.StopTimeline, Keep: d.Keep, PITR: d.PITR, Reasons: d.Reasons})
		}
		segSize := uint32(16 << 20)
		if n := len(cr.Decisions); n > 0 {
			segSize = uint32(cr.Decisions[n-1].Snapshot.WALSegmentSize)
		}
		for tli, rs := range cr.WALRanges {
			for _, r := range rs {
				cj.WALRemoved = append(cj.WALRemoved, expireRangeJSON{Timeline: uint32(tli), First: pg.SegmentName(tli, r.First, segSize),
					Last: pg.SegmentName(tli, r.Last, segSize), Segments: uint64(r.Last-r.First) + 1})
			}
		}
		out.Clusters = append(out.Clusters, cj)
	}
	return out
}

func printExpire(w io.Writer, res *retention.Result, opts retention.Options) {
	verb, walVerb := "removed", "removed"
	if opts.DryRun {
		verb, walVerb = "would remove", "would remove"
	}
	fmt.Fprintf(w, "policy: keep %s (and always the newest snapshot)\n", opts.Policy)
	for _, cr := range res.Clusters {
		fmt.Fprintf(w, "cluster %d:\n", cr.Cluster)
		if cr.Skipped != "" {
			fmt.Fprintf(w, "  left alone: %s\n", cr.Skipped)
			continue
		}
		removed := 0
		for _, d := range cr.Decisions {
			s := d.Snapshot
			if d.Keep {
				wal := "its own WAL"
				if d.PITR {
					wal = "WAL to the archive head"
				}
				fmt.Fprintf(w, "  keep   %s  stopped %s  LSN %-12s tl %d  (%s; %s)\n", s.ID, s.StopTime.UTC().Format(time.RFC3339), pg.LSN(s.StopLSN), s.StopTimeline, strings.Join(d.Reasons, ", "), wal)
				continue
			}
			removed++
			fmt.Fprintf(w, "  remove %s  stopped %s  LSN %-12s tl %d\n", s.ID, s.StopTime.UTC().Format(time.RFC3339), pg.LSN(s.StopLSN), s.StopTimeline)
		}
		fmt.Fprintf(w, "  %s %d snapshot(s); %s %d WAL file(s), %s\n", verb, removed, walVerb, len(cr.WAL), bytesize.Format(cr.WALBytes))
		segSize := uint32(16 << 20)
		if n := len(cr.Decisions); n > 0 {
			segSize = uint32(cr.Decisions[n-1].Snapshot.WALSegmentSize)
		}
		for tli, rs := range cr.WALRanges {
			for _, r := range rs {
				fmt.Fprintf(w, "    WAL %s .. %s (%d segments)\n", pg.SegmentName(tli, r.First, segSize), pg.SegmentName(tli, r.Last, segSize), r.Last-r.First+1)
			}
		}
		if cr.LockedSnapshots > 0 || cr.LockedWAL > 0 {
			fmt.Fprintf(w, "  kept for the object lock: %d snapshot(s) and %d WAL file(s) (%s) no longer needed; a run after their lock passes removes them\n",
				cr.LockedSnapshots, cr.LockedWAL, bytesize.Format(cr.LockedWALBytes))
		}
		for _, t := range cr.UnknownTimelines {
			fmt.Fprintf(w, "  timeline %d has WAL but no history file: all its WAL is kept (tidemark verify reports it)\n", t)
		}
	}
	if !opts.DryRun {
		fmt.Fprintln(w, "packs only removed snapshots used stay until tidemark gc")
	}
}
