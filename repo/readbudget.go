package repo

import (
	"context"
	"sync"
)

// readBudget bounds the bytes the ReadBlobs calls of a Repo hold at once.
// Unlike a Writer's budget it keeps no buffers: a span's reader takes its
// buffers from spanPool and gives them back. A request larger than the
// whole budget is granted when nothing else is held, so a huge blob is
// still read, alone.
type readBudget struct {
	mu      sync.Mutex
	total   int64
	used    int64
	peak    int64         // the most ever held: what tests check
	changed chan struct{} // closed and replaced whenever used drops
}

func newReadBudget(total int64) *readBudget {
	return &readBudget{total: total, changed: make(chan struct{})}
}

func (b *readBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used+n <= b.total || b.used == 0 {
			b.used += n
			b.peak = max(b.peak, b.used)
			b.mu.Unlock()
			return nil
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *readBudget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	close(b.changed)
	b.changed = make(chan struct{})
}

// spanPool recycles the buffers of span readers from one ReadBlobs call to
// the next: a backup reads a patch's base slots with one call per patch,
// and fresh buffers for each (a decoded slot, the decrypted chunks) made
// its heap churn by eight times the base slots it read.
var spanPool = sync.Pool{New: func() any { return new(spanBuffers) }}
