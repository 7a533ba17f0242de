package main

import (
	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/metrics"
	"github.com/tidemarkdb/tidemark/repo"
)

// Prometheus metrics (package metrics): the one-shot commands write a
// node_exporter textfile (--metrics-file), atomically; the agent also
// serves them over HTTP (--metrics-listen). Give each command its own file
// (tidemark-backup.prom, tidemark-drill.prom, ...): each rewrites its file
// whole.

func metricsFileFlag() cli.Flag {
	return stringFlag("metrics-file", "write Prometheus metrics to this file (node_exporter textfile format), atomically")
}

// writeMetrics writes s to --metrics-file when it is set. A failure is
// logged, not returned: the command's own work is done, and the metrics
// going stale is what monitoring notices.
func writeMetrics(c *cli.Context, s *metrics.Set) error {
	p := c.String("metrics-file")
	if p == "" {
		return nil
	}
	if err := s.WriteFile(p); err != nil {
		if log, lerr := newLogger(c, c.App.ErrWriter); lerr == nil {
			log.Error("could not write the metrics file; the command itself succeeded", "file", p, "err", err)
		}
	}
	return nil
}

func metricsCommand() *cli.Command {
	return &cli.Command{
		Name:  "metrics",
		Usage: "write the repository's Prometheus metrics: last backup, last drill, WAL archived, size",
		Description: "Lists the whole repository once (one LIST per 1000 objects) and reads each cluster's snapshots and newest\n" +
			"drill report. Writes --metrics-file, or prints the metrics without it.",
		Flags:  flagSet(repoFlags(), []cli.Flag{metricsFileFlag()}),
		Action: runMetrics,
	}
}

func runMetrics(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	s := metrics.NewSet()
	if err := s.AddRepository(c.Context, r); err != nil {
		return err
	}
	if p := c.String("metrics-file"); p != "" {
		return s.WriteFile(p)
	}
	return s.Write(c.App.Writer)
}
