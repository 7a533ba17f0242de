package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/preflight"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "check the server and the repository before the first backup: each setting pass, warn or fail, with the fix",
		Description: "Connects to the server and reports wal_level, archive_mode, archive_command (it must run tidemark wal-push,\n" +
			"by absolute path, into this repository), max_wal_senders, data checksums or wal_log_hints, summarize_wal\n" +
			"(17+), full_page_writes and whether this OS user reads PGDATA and the tablespaces; opens the repository with\n" +
			"the configured identity, creates and deletes a lease (writable; the store's clock against this host's); asks\n" +
			"the agent if one runs; then switches the server to a new WAL segment (pg_switch_wal) and waits for it to\n" +
			"reach the repository, unless --no-switch. Exits 0 when nothing failed (warnings allowed), 8 otherwise.",
		Flags: flagSet(repoFlags(), pgFlags(), []cli.Flag{
			stringFlag("socket", "the agent's socket (default PGDATA/tidemark-agent.sock; checked when it exists)"),
			&cli.BoolFlag{Name: "agent", Usage: "fail when no agent answers (default: check the agent only when its socket exists)", EnvVars: []string{envName("agent")}},
			&cli.BoolFlag{Name: "no-switch", Usage: "skip the round trip (pg_switch_wal, then wait for the segment in the repository)", EnvVars: []string{envName("no-switch")}},
			&cli.DurationFlag{Name: "switch-wait", Value: time.Minute, Usage: "how long the round trip waits for the segment", EnvVars: []string{envName("switch-wait")}},
			&cli.BoolFlag{Name: "json", Usage: "print the checks as JSON", EnvVars: []string{envName("json")}},
		}),
		Action: runCheck,
	}
}

func runCheck(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	opts := preflight.Options{ConnString: c.String("pg-conn"), PGData: c.String("pgdata"), RepoURL: c.String("repo"),
		Socket: c.String("socket"), AgentExpected: c.Bool("agent"), NoSwitch: c.Bool("no-switch"), SwitchWait: c.Duration("switch-wait"),
		Logger: log}
	opts.SameRepo = func(a, b string) bool {
		na, errA := location.Name(a)
		nb, errB := location.Name(b)
		return errA == nil && errB == nil && na == nb
	}
	if opts.RepoURL != "" {
		opts.Open = func(ctx context.Context) (*repo.Repo, error) { return openRepo(c, log, repo.Options{}) }
	}
	rep, err := preflight.Run(c.Context, opts)
	if rep != nil {
		if c.Bool("json") {
			if jerr := writeJSON(c.App.Writer, "check", rep); jerr != nil {
				return jerr
			}
		} else {
			printCheck(c.App.Writer, rep)
		}
	}
	if errors.Is(err, preflight.ErrFailed) {
		n := 0
		for _, ch := range rep.Checks {
			if ch.Status == preflight.Fail {
				n++
			}
		}
		return &codedError{err: fmt.Errorf("check: %d check(s) failed; each says what to do", n), code: exitRefused}
	}
	return err
}

func printCheck(w io.Writer, rep *preflight.Report) {
	group := ""
	for _, ch := range rep.Checks {
		if ch.Group != group {
			group = ch.Group
			fmt.Fprintf(w, "%s\n", group)
		}
		fmt.Fprintf(w, "  %-4s  %-22s %s\n", strings.ToUpper(string(ch.Status)), ch.Name, ch.Detail)
		if ch.Fix != "" && (ch.Status == preflight.Warn || ch.Status == preflight.Fail) {
			fmt.Fprintf(w, "        %-22s fix: %s\n", "", ch.Fix)
		}
	}
	if rep.OK {
		fmt.Fprintln(w, "ok: nothing failed")
	}
}
