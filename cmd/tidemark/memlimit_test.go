package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// TestMemoryLimitCountsIndexes: the runtime's limit is the command's
// bounds plus heapMargin plus what every open repository's index last
// reported, applied as either changes; none before a command gave its
// bounds.
func TestMemoryLimitCountsIndexes(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	l := &memoryLimit{index: map[int]int64{}}
	first, second := l.indexReporter(), l.indexReporter()
	first(3 << 20)
	if n := l.limitLocked(); n != 0 {
		t.Fatalf("limit %d before the command's bounds, want none", n)
	}
	l.setBounds(50 << 20)
	second(5 << 20)
	first(4 << 20)
	want := int64(50<<20 + heapMargin + 9<<20)
	if n := l.limitLocked(); n != want {
		t.Fatalf("limit %d, want %d", n, want)
	}
	if n := debug.SetMemoryLimit(-1); n != want {
		t.Fatalf("runtime limit %d, want %d", n, want)
	}
}
