package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/wal"
)

func markCommand() *cli.Command {
	return &cli.Command{
		Name:      "mark",
		Usage:     "create a named restore point and wait until the archive holds it (before a migration: restore --target-name NAME goes back to it)",
		ArgsUsage: "NAME",
		Flags: flagSet(repoFlags(), []cli.Flag{
			stringFlag("pg-conn", "connection string of the primary (default: libpq environment variables)"),
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "how long to wait for the archive", EnvVars: []string{envName("timeout")}},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON", EnvVars: []string{envName("json")}},
		}),
		Action: runMark,
	}
}

func runMark(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if c.NArg() != 1 {
		return usageErrorf("mark takes one argument, the restore point's name")
	}
	st, err := openStore(c, log)
	if err != nil {
		return err
	}
	res, err := wal.Mark(c.Context, st, wal.MarkOptions{ConnString: c.String("pg-conn"), Name: c.Args().First(), Timeout: c.Duration("timeout"), Logger: log})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, "mark", res)
	}
	fmt.Fprintf(c.App.Writer, "restore point %s at LSN %s (cluster %d) is archived in %s after %.1f s: tidemark restore --target-name %s goes back to it\n",
		res.Name, res.LSN, res.Cluster, res.Segment, res.Archived.Seconds(), res.Name)
	return nil
}
