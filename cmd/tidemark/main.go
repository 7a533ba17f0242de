// Command tidemark takes physical backups of PostgreSQL clusters, archives
// their WAL, and restores them to any point in time. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// Set at build time: go build -ldflags "-X main.version=... -X main.commit=...
// -X main.date=..." (goreleaser.yaml sets all three).
var (
	version = ""
	commit  = ""
	date    = ""
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	writeProfiles := startProfiles(os.Args)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	writeProfiles()
	stop()
	os.Exit(code)
}

// run executes one tidemark invocation and returns its exit code. Errors are
// printed to stderr as one line: "tidemark: <what failed and what to do>".
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr, commands())
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	if ctx.Err() != nil {
		code = exitInterrupted
	}
	var ce *codedError
	if errors.As(err, &ce) {
		// A command that owns its exit protocol (wal-fetch) has decided.
		code = ce.code
	}
	fmt.Fprintf(stderr, "tidemark: %s\n", oneLine(err.Error()))
	return code
}

// codedError carries an exit code chosen by the command itself, for commands
// whose callers read the code with a protocol of their own (restore_command).
type codedError struct {
	err  error
	code int
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// oneLine keeps an error message on one line, as log scrapers and
// PostgreSQL's server log expect.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// commands lists every command tidemark has, in help order.
func commands() []*cli.Command {
	return []*cli.Command{
		initCommand(), keyCommand(), checkCommand(),
		backupCommand(), listCommand(), infoCommand(),
		restoreCommand(),
		walPushCommand(), walFetchCommand(), walPrefetchCommand(), agentCommand(), walReceiveCommand(), walCommand(), markCommand(),
		rehearseCommand(), copyCommand(),
		verifyCommand(), drillCommand(), expireCommand(), gcCommand(), metricsCommand(),
		repairCommand(),
		versionCommand(), completionCommand(), manCommand(),
	}
}

func newApp(stdout, stderr io.Writer, cmds []*cli.Command) *cli.App {
	known := map[string]bool{}
	for _, c := range cmds {
		collectNames(c, known)
	}
	for _, c := range cmds {
		prepare(c, c.Name, known)
	}
	return &cli.App{
		Name:                 "tidemark",
		Usage:                "PostgreSQL backup and point-in-time recovery",
		Version:              versionString(),
		HideVersion:          true,
		Commands:             cmds,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		// Errors go back to run, which prints them once and picks the exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageErrorf("%v", err)
		},
	}
}

// collectNames records every flag name of every command, and every command
// name as a config section "[name]", so the config file can be checked for
// typos whatever command runs.
func collectNames(c *cli.Command, known map[string]bool) {
	// Sections are top-level commands only: subcommands read their
	// parent's, so "[add]" would be read by nothing.
	known["["+c.Name+"]"] = true
	collectFlagNames(c, known)
}

func collectFlagNames(c *cli.Command, known map[string]bool) {
	for _, f := range c.Flags {
		for _, n := range f.Names() {
			known[n] = true
		}
	}
	for _, sub := range c.Subcommands {
		collectFlagNames(sub, known)
	}
}

// prepare gives every command the common flags and a Before step that applies
// the config file, so that flag > environment > config file > default holds
// for every setting of every command. section is the top-level command name:
// subcommands ("key add") read their parent's section.
func prepare(c *cli.Command, section string, known map[string]bool) {
	for _, sub := range c.Subcommands {
		prepare(sub, section, known)
	}
	if len(c.Subcommands) > 0 && c.Action == nil {
		return
	}
	c.Flags = append(c.Flags, commonFlags()...)
	for _, f := range commonFlags() {
		for _, n := range f.Names() {
			known[n] = true
		}
	}
	c.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return usageErrorf("%s: %v", section, err)
	}
	before := c.Before
	c.Before = func(ctx *cli.Context) error {
		cf, err := loadConfig(ctx)
		if err != nil {
			return err
		}
		if err := applyConfig(ctx, cf, section, known); err != nil {
			return err
		}
		if _, err := parseRates(ctx); err != nil {
			return err
		}
		if before != nil {
			return before(ctx)
		}
		return nil
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print version, commit and Go version",
		Action: func(c *cli.Context) error {
			_, err := fmt.Fprintln(c.App.Writer, versionString())
			return err
		},
	}
}

// versionString is "tidemark <version> (commit <hash>[, built <date>], <go
// version>)". Without ldflags it falls back to what the Go toolchain
// recorded in the binary.
func versionString() string {
	v, c := version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	if c == "" {
		c = "unknown"
	}
	if date != "" {
		return fmt.Sprintf("tidemark %s (commit %s, built %s, %s)", v, c, date, runtime.Version())
	}
	return fmt.Sprintf("tidemark %s (commit %s, %s)", v, c, runtime.Version())
}
