package main

import (
	"os"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestJSONCommandsPinned: every command with a --json flag has its keys
// pinned in e2e/testdata/json-keys.txt, which e2e TestJSONKeys writes
// from running each one ("name: key" lines, the name being the command
// path, perhaps followed by a variant such as "restore --dry-run").
func TestJSONCommandsPinned(t *testing.T) {
	b, err := os.ReadFile("../../e2e/testdata/json-keys.txt")
	if err != nil {
		t.Fatal(err)
	}
	pinned := map[string]bool{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if name, _, ok := strings.Cut(line, ":"); ok {
			pinned[name] = true
		}
	}
	covered := func(path string) bool {
		for name := range pinned {
			if name == path || strings.HasPrefix(name, path+" ") {
				return true
			}
		}
		return false
	}
	var walk func(prefix string, cmds []*cli.Command)
	n := 0
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			path := strings.TrimSpace(prefix + " " + c.Name)
			for _, f := range c.Flags {
				if f.Names()[0] == "json" {
					n++
					if !covered(path) {
						t.Errorf("tidemark %s has --json but e2e TestJSONKeys does not run it (testdata/json-keys.txt has no %q)", path, path)
					}
				}
			}
			walk(path, c.Subcommands)
		}
	}
	walk("", commands())
	if n < 15 {
		t.Errorf("found --json on %d commands only", n)
	}
}
