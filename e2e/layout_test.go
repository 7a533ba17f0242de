package e2e

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/storage/location"
)

// documentedKeys returns the key patterns of docs/format.md §1, the table
// of every object tidemark writes: "<name>" is one path segment, "..." the
// rest of the key.
func documentedKeys(t *testing.T) []*regexp.Regexp {
	t.Helper()
	b, err := os.ReadFile("../docs/format.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, _ := strings.Cut(string(b), "## 1. Object layout")
	sec, _, _ = strings.Cut(sec, "\n## ")
	cell := regexp.MustCompile("^\\| `([^`]+)`")
	seg := regexp.MustCompile(`<[^>]+>`)
	var out []*regexp.Regexp
	for line := range strings.SplitSeq(sec, "\n") {
		m := cell.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		p := regexp.QuoteMeta(m[1])
		p = strings.ReplaceAll(p, `\.\.\.`, ".+")
		p = seg.ReplaceAllString(p, "[^/]+")
		out = append(out, regexp.MustCompile("^"+p+"$"))
	}
	if len(out) < 10 {
		t.Fatalf("docs/format.md §1 lists %d key patterns: is the table still there?", len(out))
	}
	return out
}

// checkKeysDocumented fails the test when the repository holds an object
// that docs/format.md §1 does not list: every object the code writes has
// its row there.
func (e *restoreEnv) checkKeysDocumented() {
	t := e.t
	t.Helper()
	pats := documentedKeys(t)
	// A cleanup runs after t.Context() ended.
	st, err := location.Open(context.Background(), e.url, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for oi, err := range st.List(context.Background(), "", "") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, oi.Key)
	}
	for _, k := range keys {
		found := false
		for _, p := range pats {
			if p.MatchString(k) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("the repository holds %s, which docs/format.md §1 does not list", k)
		}
	}
}

func TestDocumentedKeyPatterns(t *testing.T) {
	pats := documentedKeys(t)
	match := func(k string) bool {
		for _, p := range pats {
			if p.MatchString(k) {
				return true
			}
		}
		return false
	}
	for _, k := range []string{"config", "keys/ab12", "data/ab/ab12", "wal/7000/0000000100000000/000000010000000000000003",
		"retention/7000", "verify/state", "gc/quarantine/20260101T000000Z-0a0b0c0d", "drills/7000/x",
		"leases/backup/7000/20260101T000000Z-0a0b0c0d", "leases/gc/x"} {
		if !match(k) {
			t.Errorf("%s matches no documented pattern", k)
		}
	}
	for _, k := range []string{"other/thing", "snapshots/x", "data/ab", "leases/x"} {
		if match(k) {
			t.Errorf("%s matches a documented pattern", k)
		}
	}
}
