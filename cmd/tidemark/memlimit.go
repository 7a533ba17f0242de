package main

import (
	"os"
	"runtime/debug"
	"sync"
)

// heapMargin is what a command's heap may hold beyond the buffers its
// settings bound (--pack-memory, --read-memory, ...): the S3 client, the
// runtime's own, and the garbage between two collections. The live heaps
// the benchmarks measured (make bench BENCH=Memory with
// TIDEMARK_PROFILE_DIR, peak_live_heap) stay under the bounds plus 10 to
// 15 MiB: 27 MiB for a full backup, 41 MiB for an incremental (40 MiB of
// packs, 8 MiB of reads), 15 MiB for a restore. With 32 MiB the heap of
// a long backup sat at its 80 MiB limit, twice what was live. A long
// command's RSS sits at its limit plus about 22 MiB of code and runtime
// outside the heap: with 24 MiB an incremental at pgbench scale 200 peaked
// at 103 MiB although its live heap had dropped from 66 to 57 MiB; 16 MiB
// leaves it 15 MiB above that for garbage (its buffers hold no pointers,
// so the extra collections cost little).
const heapMargin = 16 << 20

// streamMemory is what one object read as a stream holds (a WAL object
// being fetched or verified, a pack verify --read-data reads): its zstd
// decoder's window and buffers, the decrypted chunks, one blob. The
// commands that read several at once (verify --parallel, the prefetcher's
// --prefetch-parallel) count it for each in their memory limit.
const streamMemory = 4 << 20

// setMemoryLimit gives the Go runtime a soft memory limit of bounds (the
// bytes the command's settings let it hold in buffers) plus heapMargin
// plus what the repositories' blob indexes hold (procLimit), unless the
// operator set GOMEMLIMIT. Without one the collector lets the heap grow to
// twice what is live before it runs: a backup whose packs and buffers were
// 47 MiB reached 101 MiB of RSS, garbage included. With the limit the
// collector runs more often only when the heap nears it; when more is live
// than the limit, it runs often but the command still works.
func setMemoryLimit(bounds int64) { procLimit.setBounds(bounds) }

// procLimit is this process's memory limit: one per process, as the
// runtime's is.
var procLimit = &memoryLimit{index: map[int]int64{}}

// memoryLimit keeps the parts of the runtime's soft memory limit: a
// command's bounds, and what each open repository's blob index holds.
// The index grows with the repository up to --index-memory plus its
// overlay and about 1.8 bytes per spilled entry: at a million files a
// full backup's index held 16 MiB that a limit of bounds plus heapMargin
// did not count, so its live heap sat over the limit and the collector
// ran 56,340 times, a third of the backup's CPU. Counting the index only
// as it grows leaves the limit of a small repository's commands as it
// was.
type memoryLimit struct {
	mu     sync.Mutex
	bounds int64 // 0: no command set its bounds yet
	index  map[int]int64
	next   int
}

// setBounds sets the command's bounds and applies the limit.
func (l *memoryLimit) setBounds(bounds int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bounds = bounds
	l.applyLocked()
}

// indexReporter returns a function for repo.Options.OnIndexMemory of one
// repository: it counts what that repository's index holds.
func (l *memoryLimit) indexReporter() func(int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot := l.next
	l.next++
	return func(n int64) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.index[slot] = n
		l.applyLocked()
	}
}

// limitLocked returns the limit to apply, 0 when no command gave its
// bounds.
func (l *memoryLimit) limitLocked() int64 {
	if l.bounds == 0 {
		return 0
	}
	n := l.bounds + heapMargin
	for _, b := range l.index {
		n += b
	}
	return n
}

func (l *memoryLimit) applyLocked() {
	if n := l.limitLocked(); n > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(n)
	}
}
