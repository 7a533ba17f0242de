package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// probe runs a command with repo and pg flags through the real app wiring and
// returns the values the command saw.
func probe(t *testing.T, args ...string) (map[string]string, int, string) {
	t.Helper()
	got := map[string]string{}
	cmd := &cli.Command{
		Name:  "probe",
		Flags: flagSet(repoFlags(), pgFlags(), []cli.Flag{&cli.IntFlag{Name: "parallel", Value: 2}}),
		Action: func(c *cli.Context) error {
			for _, n := range []string{"repo", "pgdata", "pg-conn", "parallel", "log-format"} {
				got[n] = c.String(n)
			}
			got["identity"] = strings.Join(c.StringSlice("identity"), ",")
			return nil
		},
	}
	var stdout, stderr bytes.Buffer
	app := newApp(&stdout, &stderr, []*cli.Command{cmd})
	err := app.RunContext(context.Background(), append([]string{"tidemark", "probe"}, args...))
	return got, exitCode(err), errString(err)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// unsetenv removes a variable for the test; t.Setenv(v, "") would leave it
// set (to nothing), which counts as set.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "") // registers the restore
	os.Unsetenv(name)
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tidemark.conf")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedence(t *testing.T) {
	cfg := writeConfig(t, `
# global settings
repo = "file:///from/file"
pgdata = /file/pgdata
identity = /file/key.txt

[probe]
parallel = 7
`)
	for _, v := range []string{"PGDATA", "TIDEMARK_REPO", "TIDEMARK_PGDATA", "TIDEMARK_IDENTITY", "TIDEMARK_CONFIG"} {
		unsetenv(t, v)
	}

	got, code, msg := probe(t, "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	if got["repo"] != "file:///from/file" || got["pgdata"] != "/file/pgdata" || got["parallel"] != "7" || got["identity"] != "/file/key.txt" {
		t.Errorf("file values not applied: %v", got)
	}

	t.Setenv("TIDEMARK_REPO", "file:///from/env")
	t.Setenv("PGDATA", "/env/pgdata") // libpq's variable, lower than TIDEMARK_PGDATA
	got, _, _ = probe(t, "--config", cfg)
	if got["repo"] != "file:///from/env" || got["pgdata"] != "/env/pgdata" {
		t.Errorf("environment must beat the file: %v", got)
	}

	t.Setenv("TIDEMARK_PGDATA", "/tidemark/pgdata")
	got, _, _ = probe(t, "--config", cfg, "--repo", "file:///from/flag", "--parallel", "3")
	if got["repo"] != "file:///from/flag" || got["parallel"] != "3" || got["pgdata"] != "/tidemark/pgdata" {
		t.Errorf("flags must beat environment and file: %v", got)
	}

	t.Setenv("TIDEMARK_CONFIG", cfg)
	got, _, _ = probe(t)
	if got["parallel"] != "7" {
		t.Errorf("TIDEMARK_CONFIG not read: %v", got)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, text, want string
	}{
		{"unknown global", "repoo = x\n", `unknown setting "repoo"`},
		{"unknown in section", "[probe]\nparalel = 3\n", `command "probe" has no setting "paralel"`},
		{"unknown section", "[backupp]\nrepo = x\n", "unknown section [backupp]"},
		{"no equals", "repo\n", `expected "name = value"`},
		{"twice", "repo = a\nrepo = b\n", `"repo" is set twice`},
		{"bad value", "[probe]\nparallel = many\n", "parallel"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, code, msg := probe(t, "--config", writeConfig(t, tc.text))
			if code != exitUsage || !strings.Contains(msg, tc.want) {
				t.Errorf("got exit %d %q, want exit %d containing %q", code, msg, exitUsage, tc.want)
			}
		})
	}
	_, code, msg := probe(t, "--config", "/nonexistent/tidemark.conf")
	if code != exitUsage || !strings.Contains(msg, "/nonexistent/tidemark.conf") {
		t.Errorf("missing explicit config: exit %d %q", code, msg)
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"tidemark", "version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "tidemark ") {
		t.Errorf("version: exit %d, out %q err %q", code, out.String(), errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"tidemark", "version", "--bogus"}, &out, &errb); code != exitUsage {
		t.Errorf("bad flag: exit %d, want %d (%s)", code, exitUsage, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"tidemark", "no-such-command"}, &out, &errb); code != exitUsage {
		t.Errorf("unknown command: exit %d, want %d (%s)", code, exitUsage, errb.String())
	}
	if strings.Count(errb.String(), "\n") != 1 {
		t.Errorf("error must be one line: %q", errb.String())
	}
}
