package walarchive

import (
	"fmt"
	"testing"
)

func TestMergeAndCovers(t *testing.T) {
	r := MergeRanges(Ranges{1: {{First: 5, Last: 7}, {First: 1, Last: 2}}}, Ranges{1: {{First: 3, Last: 4}, {First: 10, Last: 12}}})
	if got := fmt.Sprint(r[1]); got != "[{1 7} {10 12}]" {
		t.Fatalf("merged %s", got)
	}
	if !r.Covers(1, 2, 6) || r.Covers(1, 6, 10) || r.Covers(2, 1, 1) {
		t.Fatal("Covers is wrong")
	}
}
