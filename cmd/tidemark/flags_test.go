package main

import (
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestEveryFlagHasItsVariable walks every flag of every command: each has
// its TIDEMARK_* variable, named after the flag, first among its variables,
// unless README lists it among the flags that have none (and then it has
// none). README says every setting has a variable; this keeps it true.
func TestEveryFlagHasItsVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The list is the paragraph after the sentence that opens it.
	opening := regexp.MustCompile(`Flags\s+without\s+an\s+environment\s+variable,\s+on\s+purpose:`)
	text := string(readme)
	loc := opening.FindStringIndex(text)
	if loc == nil {
		t.Fatalf("README lacks the paragraph %q", opening)
	}
	paras := strings.Split(text[loc[0]:], "\n\n")
	if len(paras) < 2 {
		t.Fatal("README's list of flags without a variable is empty")
	}
	list := paras[1]
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^- `--([a-z0-9-]+)`").FindAllStringSubmatch(list, -1) {
		documented[m[1]] = true
	}
	if len(documented) == 0 {
		t.Fatalf("no flags found in README's list:\n%s", list)
	}

	app := newApp(io.Discard, io.Discard, commands())
	without := map[string][]string{} // flag -> commands
	var walk func(path string, c *cli.Command)
	walk = func(path string, c *cli.Command) {
		for _, f := range c.Flags {
			name := f.Names()[0]
			var env []string
			if ef, ok := f.(interface{ GetEnvVars() []string }); ok {
				env = ef.GetEnvVars()
			}
			switch {
			case len(env) == 0:
				without[name] = append(without[name], path)
			case env[0] != envName(name):
				t.Errorf("%s --%s: its first variable is %s, want %s", path, name, env[0], envName(name))
			}
		}
		for _, s := range c.Subcommands {
			walk(path+" "+s.Name, s)
		}
	}
	for _, c := range app.Commands {
		walk(c.Name, c)
	}
	for name, cmds := range without {
		if !documented[name] {
			t.Errorf("--%s (%s) has no TIDEMARK_* variable and README does not say why", name, strings.Join(slices.Compact(cmds), ", "))
		}
	}
	for name := range documented {
		if without[name] == nil {
			t.Errorf("README lists --%s among the flags without a variable, but no command has it without one", name)
		}
	}
}
