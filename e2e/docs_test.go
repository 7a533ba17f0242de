package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestWALDocUnitIsShipped: the agent unit docs/wal.md shows is an excerpt
// of the one contrib/systemd ships: every line of it is in the shipped file,
// in the same section.
func TestWALDocUnitIsShipped(t *testing.T) {
	const header = "# contrib/systemd/tidemark-agent.service (excerpt)\n"
	doc, err := os.ReadFile("../docs/wal.md")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(doc), header)
	if i < 0 {
		t.Fatalf("docs/wal.md has no block starting %q", header)
	}
	block := string(doc)[i+len(header):]
	block = block[:strings.Index(block, "```")]
	unit, err := os.ReadFile("../contrib/systemd/tidemark-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	sections := func(text string) map[string][]string {
		out := map[string][]string{}
		sec := ""
		for _, l := range strings.Split(text, "\n") {
			l = strings.TrimSpace(l)
			switch {
			case l == "" || strings.HasPrefix(l, "#"):
			case strings.HasPrefix(l, "["):
				sec = l
			default:
				out[sec] = append(out[sec], l)
			}
		}
		return out
	}
	shipped := sections(string(unit))
	n := 0
	for sec, lines := range sections(block) {
		for _, l := range lines {
			n++
			if !slices.Contains(shipped[sec], l) {
				t.Errorf("docs/wal.md shows %q in %s of the agent unit; contrib/systemd/tidemark-agent.service does not have it", l, sec)
			}
		}
	}
	if n < 10 {
		t.Fatalf("docs/wal.md's excerpt of the agent unit has %d lines", n)
	}
}
