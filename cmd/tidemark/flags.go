package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// envName is the environment variable of a flag: TIDEMARK_ and the flag name
// upper-cased with dashes as underscores ("pg-conn" -> TIDEMARK_PG_CONN).
func envName(flag string) string {
	return "TIDEMARK_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// stringFlag is a string flag with its TIDEMARK_* variable (and any extra
// variables, lower precedence, after it).
func stringFlag(name, usage string, extraEnv ...string) *cli.StringFlag {
	return &cli.StringFlag{Name: name, Usage: usage, EnvVars: append([]string{envName(name)}, extraEnv...)}
}

// commonFlags are on every command: where settings come from and how logs look.
func commonFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("config", "config file (default "+defaultConfigPath+" when it exists)"),
		&cli.StringFlag{Name: "log-format", Usage: "log format: text or json", Value: "text", EnvVars: []string{envName("log-format")}},
		&cli.StringFlag{Name: "log-level", Usage: "log level: debug, info, warn or error", Value: "info", EnvVars: []string{envName("log-level")}},
	}
}

// repoFlags locate and unlock the repository.
func repoFlags() []cli.Flag {
	return append(repoURLFlags(),
		&cli.StringSliceFlag{Name: "identity", Usage: "age identity file that unlocks the repository (repeatable)", EnvVars: []string{envName("identity")}},
		stringFlag("passphrase-file", "file holding a passphrase that unlocks the repository"),
		&cli.StringFlag{Name: "index-memory", Value: "13MiB", EnvVars: []string{envName("index-memory")},
			Usage: "bytes of the repository's blob index kept in memory; the rest spills to sorted files in the temp directory"},
	)
}

// repoURLFlags locate the repository, for commands that need no key.
func repoURLFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("repo", "repository URL: file:///path, s3://bucket/prefix?endpoint=...&region=..., azure://container/prefix?account=... or gs://bucket/prefix"),
	}
}

// repo2Flags locate and unlock the second repository (another region or
// provider) of the commands that use it: WAL goes to both, restores fall
// back to it, backup and copy write to it.
func repo2Flags() []cli.Flag {
	return []cli.Flag{
		stringFlag("repo2", "second repository URL (another region or provider), created with init --repo2 URL --from-repo"),
		&cli.StringSliceFlag{Name: "repo2-identity", Usage: "age identity file that unlocks the second repository (repeatable; default: the --identity files)", EnvVars: []string{envName("repo2-identity")}},
		stringFlag("repo2-passphrase-file", "file holding a passphrase that unlocks the second repository (default: --passphrase-file)"),
	}
}

// pgFlags locate the PostgreSQL cluster: its data directory and a connection.
// The connection also honours the libpq variables (PGHOST, PGPORT, PGUSER,
// PGDATABASE, PGPASSWORD, ...).
func pgFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("pgdata", "PostgreSQL data directory", "PGDATA"),
		stringFlag("pg-conn", "PostgreSQL connection string (default: libpq environment variables)"),
	}
}

// flagSet joins flag groups for one command.
func flagSet(groups ...[]cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// newLogger builds the command's logger from --log-format and --log-level.
func newLogger(c *cli.Context, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.String("log-format") {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usageErrorf("--log-format %q: want text or json", c.String("log-format"))
	}
}

// isTerminal reports whether w is a terminal, for progress bars.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// requireString returns a flag's value or a usage error naming the flag and
// its environment variable.
func requireString(c *cli.Context, name string) (string, error) {
	v := c.String(name)
	if v == "" {
		return "", usageErrorf("--%s is required (or set %s, or %q in the config file)", name, envName(name), name)
	}
	return v, nil
}

// usageError is a mistake in how tidemark was called; it exits with exitUsage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}
