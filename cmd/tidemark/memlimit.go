package main

import (
	"os"
	"runtime/debug"
)

// heapMargin is what a command's heap holds beyond the buffers its
// settings bound (--pack-memory, --read-memory, ...): the repository's
// index and a restore's plan, the S3 client, the runtime's own. The
// benchmarks (make bench BENCH=Memory) put it at 20 to 30 MiB for
// databases of 0.3 to 3 GiB.
const heapMargin = 32 << 20

// streamMemory is what one object read as a stream holds (a WAL object
// being fetched or verified, a pack verify --read-data reads): its zstd
// decoder's window and buffers, the decrypted chunks, one blob. The
// commands that read several at once (verify --parallel, the prefetcher's
// --prefetch-parallel) count it for each in their memory limit.
const streamMemory = 4 << 20

// metaReadMemory is the ReadMemory of the commands that read only
// metadata (file maps, trees) through ReadBlobs: verify and gc.
const metaReadMemory = 16 << 20

// setMemoryLimit gives the Go runtime a soft memory limit of bounds (the
// bytes the command's settings let it hold in buffers) plus heapMargin,
// unless the operator set GOMEMLIMIT. Without one the collector lets the
// heap grow to twice what is live before it runs: a backup whose packs
// and buffers were 47 MiB reached 101 MiB of RSS, garbage included. With
// the limit the collector runs more often only when the heap nears it;
// when more is live than the limit (a huge repository's index), it runs
// often but the command still works.
func setMemoryLimit(bounds int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(bounds + heapMargin)
}
