package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/verify/drill"
)

func rehearseCommand() *cli.Command {
	return &cli.Command{
		Name:  "rehearse",
		Usage: "rehearse a schema migration on a clone restored from the repository: duration, locks, rewrites, WAL per statement",
		Description: "Restores the newest backup into a scratch cluster (as drill does: archiving off, Unix socket only), recovers it\n" +
			"to the end of the archive, optionally starts a pgbench load against it (--load), runs the statements of --sql\n" +
			"one by one and reports for each its duration, the strongest lock it held and for how long, the tables it\n" +
			"rewrote and their rows, the WAL it generated, and whether it would have queued behind the load. The clone is\n" +
			"then discarded; nothing is written to the repository. Exits 1 when a statement fails.",
		Flags: flagSet(repoFlags(), repo2Flags(), []cli.Flag{
			stringFlag("sql", "file holding the migration: statements separated by semicolons"),
			stringFlag("db-name", "database to run the migration and the load in (default postgres)"),
			stringFlag("load", "pgbench arguments for a load during the migration, e.g. '-c 4 -j 2 -N' or '-c 8 -f workload.sql'"),
			&cli.DurationFlag{Name: "probe-timeout", Value: 100 * time.Millisecond, Usage: "lock_timeout of each statement's first try under the load", EnvVars: []string{envName("probe-timeout")}},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON", EnvVars: []string{envName("json")}},
		}, scratchFlags()),
		Action: runRehearse,
	}
}

func runRehearse(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	path, err := requireString(c, "sql")
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return usageErrorf("--sql: %v", err)
	}
	ro := drill.RehearseOptions{ProbeTimeout: c.Duration("probe-timeout"), LoadArgs: strings.Fields(c.String("load"))}
	if ro.Statements, err = drill.ParseChecks(path, string(b)); err != nil {
		return usageErrorf("--sql: %v", err)
	}
	if len(ro.Statements) == 0 {
		return usageErrorf("--sql %s holds no statement", path)
	}
	opts := scratchOptions(c, log)
	r, arch, err := openScratch(c, log, &opts, nil)
	if err != nil {
		return err
	}
	defer r.Close()
	reh, err := drill.Rehearse(c.Context, r, arch, opts, ro)
	if reh != nil && reh.Snapshot != "" {
		if c.Bool("json") {
			if jerr := writeJSON(c.App.Writer, "rehearsal", reh); jerr != nil {
				return jerr
			}
		} else {
			printRehearsal(c.App.Writer, reh)
		}
	}
	return err
}

func printRehearsal(w io.Writer, reh *drill.Rehearsal) {
	status := "all statements ran"
	if !reh.OK {
		status = "FAILED: " + reh.Reason
	}
	fmt.Fprintf(w, "rehearsal on a clone of backup %s (cluster %d) recovered to the end of the archive in %.1f s: %s\n",
		reh.Snapshot, reh.Cluster, reh.RecoverSeconds, status)
	if reh.Load != nil {
		fmt.Fprintf(w, "  under load: pgbench %s\n", strings.Join(reh.Load.Args, " "))
	}
	for _, st := range reh.Statements {
		fmt.Fprintf(w, "  %s: %.3f s, WAL %s", st.Name, st.Seconds, bytesize.Format(st.WALBytes))
		if st.Lock != "none" {
			fmt.Fprintf(w, ", %s on %s for %.3f s", st.Lock, st.LockRelation, st.LockSeconds)
		}
		if len(st.Rewritten) > 0 {
			fmt.Fprintf(w, ", rewrote %s (%d rows)", strings.Join(st.Rewritten, ", "), st.RowsRewritten)
		}
		if st.RowsAffected > 0 {
			fmt.Fprintf(w, ", %d rows", st.RowsAffected)
		}
		if st.WouldWait {
			fmt.Fprintf(w, ", WOULD QUEUE behind the load (waited %.3f s)", st.WaitedSeconds)
		}
		if st.Error != "" {
			fmt.Fprintf(w, ", ERROR %s", st.Error)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "    %s\n", oneLine(st.Statement))
	}
}
