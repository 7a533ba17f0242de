package backup

import (
	"math/rand/v2"
	"testing"
)

// TestReadSpans checks how an incremental joins reads of changed pages:
// every changed page is read exactly once, spans are in order and apart,
// no span reads more than readSlack times its changed pages or joins
// across more than maxReadGap unchanged ones, a window half of whose pages
// changed at random is read with one read, and lone pages far apart are
// read alone.
func TestReadSpans(t *testing.T) {
	spans := func(changed []bool) [][2]uint32 {
		var out [][2]uint32
		if err := readSpans(changed, func(from, to uint32) error {
			out = append(out, [2]uint32{from, to})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		density := rng.Float64()
		changed := make([]bool, 1+rng.IntN(128))
		for p := range changed {
			changed[p] = rng.Float64() < density
		}
		read := make([]int, len(changed))
		last := uint32(0)
		for k, s := range spans(changed) {
			from, to := s[0], s[1]
			if from >= to || k > 0 && from <= last {
				t.Fatalf("case %d: span %v after %d", i, s, last)
			}
			if !changed[from] || !changed[to-1] {
				t.Fatalf("case %d: span %v starts or ends on an unchanged page", i, s)
			}
			ch, gap := uint32(0), uint32(0)
			for p := from; p < to; p++ {
				read[p]++
				if changed[p] {
					ch++
					gap = 0
				} else if gap++; gap > maxReadGap {
					t.Fatalf("case %d: span %v joins across more than %d unchanged pages", i, s, maxReadGap)
				}
			}
			if to-from > readSlack*ch {
				t.Fatalf("case %d: span %v reads %d pages for %d changed", i, s, to-from, ch)
			}
			last = to
		}
		for p, c := range changed {
			if c && read[p] != 1 {
				t.Fatalf("case %d: changed page %d read %d times", i, p, read[p])
			}
		}
	}

	half := make([]bool, 128)
	for p := range half {
		half[p] = rng.IntN(100) < 54
	}
	half[0], half[127] = true, true
	if got := spans(half); len(got) != 1 || got[0] != [2]uint32{0, 128} {
		t.Errorf("a window with 54%% of its pages changed at random is read as %v, want one read", got)
	}
	sparse := make([]bool, 128)
	sparse[3], sparse[40], sparse[100] = true, true, true
	if got := spans(sparse); len(got) != 3 {
		t.Errorf("three lone pages are read as %v, want three reads", got)
	}
	if got := spans(make([]bool, 128)); len(got) != 0 {
		t.Errorf("an unchanged window is read as %v", got)
	}
}
