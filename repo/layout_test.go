package repo

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestKindsDocumented holds Kinds and the table of docs/format.md §1 to
// the same top-level names.
func TestKindsDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/format.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, _ := strings.Cut(string(b), "## 1. Object layout")
	sec, _, _ = strings.Cut(sec, "\n## ")
	var doc []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`/]+)").FindAllStringSubmatch(sec, -1) {
		doc = append(doc, m[1])
	}
	slices.Sort(doc)
	doc = slices.Compact(doc)
	kinds := slices.Sorted(slices.Values(Kinds))
	if !slices.Equal(doc, kinds) {
		t.Errorf("docs/format.md §1 names %v, repo.Kinds %v", doc, kinds)
	}
	if KindOf("data/ab/cd") != "data" || KindOf("stray") != "other" || KindOf("verify/state") != "verify" {
		t.Error("KindOf")
	}
}
