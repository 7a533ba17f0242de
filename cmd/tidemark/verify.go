package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/progress"
	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/verify"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check that every snapshot resolves, the WAL is continuous and the history files agree (and, asked, the contents of packs and WAL)",
		Description: "Checks, and prints exactly what it checked: every snapshot's trees and maps read and every blob they name\n" +
			"found in the index, in a pack that exists with the recorded size (one listing, no request per pack); the WAL\n" +
			"from each snapshot to the archive head on every timeline it leads to (gaps by segment name, with the snapshots\n" +
			"they break); the timeline history files. --read-data downloads every pack, authenticates it and recomputes\n" +
			"every blob's keyed ID, then every archived WAL object: decrypted, authenticated, decompressed, and every page\n" +
			"header of a segment checked against its name, timeline and the cluster (a damaged one is named with the\n" +
			"snapshots and the recovery target times it takes away); --read-data-subset 10% reads the next tenth of both,\n" +
			"in rotations remembered in the repository. Exit 6 on any problem.",
		Flags: flagSet(repoFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "read-data", Usage: "download and check every pack and every WAL object", EnvVars: []string{envName("read-data")}},
			stringFlag("read-data-subset", "download and check the next N% of the packs and of the WAL objects (e.g. 10%), continuing where the last run stopped"),
			&cli.IntFlag{Name: "parallel", Value: 4, Usage: "packs (then WAL objects) read at once", EnvVars: []string{envName("parallel")}},
			&cli.StringFlag{Name: "read-memory", Value: "16MiB", EnvVars: []string{envName("read-memory")},
				Usage: "bytes of metadata (file maps, trees) read from the repository at once"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON", EnvVars: []string{envName("json")}},
			metricsFileFlag(),
		}),
		Action: runVerify,
	}
}

// parsePercent reads "10%", "10" or "0.5%" as a fraction.
func parsePercent(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%")), 64)
	if err != nil || v <= 0 || v > 100 {
		return 0, fmt.Errorf("want a percentage above 0 and at most 100, such as 10%%")
	}
	return v / 100, nil
}

func runVerify(c *cli.Context) error {
	log, status, err := progressLogger(c)
	if err != nil {
		return err
	}
	opts := verify.Options{ReadData: c.Bool("read-data"), Parallel: c.Int("parallel"), Logger: log}
	if v := c.String("read-data-subset"); v != "" {
		if opts.ReadData {
			return usageErrorf("--read-data and --read-data-subset: give one")
		}
		if opts.Subset, err = parsePercent(v); err != nil {
			return usageErrorf("--read-data-subset %q: %v", v, err)
		}
		if opts.Subset >= 1 {
			opts.ReadData, opts.Subset = true, 0
		}
	}
	if opts.Parallel < 1 {
		return usageErrorf("--parallel %d: want at least 1", opts.Parallel)
	}
	readMem, err := readMemory(c)
	if err != nil {
		return err
	}
	setMemoryLimit(int64(opts.Parallel)*streamMemory + readMem)
	r, err := openRepo(c, log, repo.Options{ReadMemory: readMem})
	if err != nil {
		return err
	}
	defer r.Close()
	if opts.ReadData || opts.Subset > 0 {
		opts.Progress = progress.NewCounter()
		opts.Progress.Phase("check snapshots and WAL", 0, "")
		defer watchProgress("verify", status, log, opts.Progress)()
	}
	rep, err := verify.Run(c.Context, r, walarchive.FromRepo(r, walarchive.Options{Logger: log}), opts)
	if rep == nil {
		return err
	}
	if !errors.Is(err, verify.ErrProblems) && err != nil {
		return fmt.Errorf("verify did not finish, so it proves nothing: %w", err)
	}
	if c.Bool("json") {
		if jerr := writeJSON(c.App.Writer, "verify", rep); jerr != nil {
			return jerr
		}
	} else {
		printVerify(c.App.Writer, rep)
	}
	m := metrics.NewSet()
	m.AddVerify(rep)
	if merr := writeMetrics(c, m); merr != nil && err == nil {
		return merr
	}
	return err
}

func printVerify(w io.Writer, rep *verify.Report) {
	fmt.Fprintf(w, "verify of %s (%s)\n", rep.Store, rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	fmt.Fprintln(w, "checked:")
	for _, s := range rep.Checked {
		fmt.Fprintf(w, "  - %s\n", s)
	}
	fmt.Fprintln(w, "not checked:")
	for _, s := range rep.NotChecked {
		fmt.Fprintf(w, "  - %s\n", s)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if rep.OK() {
		fmt.Fprintln(w, "no problems found")
		return
	}
	fmt.Fprintf(w, "%d problem(s):\n", len(rep.Problems))
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  %s %s\n", strings.ToUpper(p.Kind), p)
	}
}
