package repo

import (
	"context"
	"sync"
)

// budget bounds the bytes of pack buffers a Writer holds, including a small
// free list of buffers kept for reuse (so large buffers are not re-zeroed
// and collected for every pack). Waiting for budget first gives up free
// buffers, so the free list can never starve the writer.
//
// Only finished packs (queued or uploading) are waited for: they free their
// bytes without further progress of the writer. Open packs (one per class)
// are granted memory even beyond the total when nothing finished is
// pending, so the bound can be exceeded by at most the open packs and the
// writer never deadlocks on itself.
type budget struct {
	mu      sync.Mutex
	total   int64
	used    int64 // reserved by live buffers and by the free list
	final   int64 // part of used held by finished packs
	free    [][]byte
	maxFree int
	changed chan struct{} // closed and replaced whenever used drops
}

func newBudget(total int64, maxFree int) *budget {
	return &budget{total: total, maxFree: maxFree, changed: make(chan struct{})}
}

// acquire reserves n bytes, waiting while the budget is exhausted. A request
// larger than the whole budget is granted when nothing else is reserved.
func (b *budget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		for b.used+n > b.total && len(b.free) > 0 {
			last := b.free[len(b.free)-1]
			b.free = b.free[:len(b.free)-1]
			b.used -= int64(cap(last))
		}
		if b.used+n <= b.total || b.final == 0 {
			b.used += n
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

func (b *budget) releaseLocked(n int64) {
	b.used -= n
	close(b.changed)
	b.changed = make(chan struct{})
}

// release returns n reserved bytes.
func (b *budget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releaseLocked(n)
}

// finish marks n reserved bytes as held by a finished pack.
func (b *budget) finish(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.final += n
}

// getBuffer returns a free buffer (its capacity already reserved) or nil.
func (b *budget) getBuffer() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.free) == 0 {
		return nil
	}
	buf := b.free[len(b.free)-1]
	b.free = b.free[:len(b.free)-1]
	return buf[:0]
}

// putBuffer returns the buffer of a finished pack, whose reservation is
// reserved: it is kept for reuse if keep is set and there is room on the
// free list, else dropped and unreserved.
func (b *budget) putBuffer(buf []byte, reserved int64, keep bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.final -= reserved
	if extra := reserved - int64(cap(buf)); extra > 0 {
		b.used -= extra
	}
	if keep && len(b.free) < b.maxFree {
		b.free = append(b.free, buf[:0])
		close(b.changed)
		b.changed = make(chan struct{})
		return
	}
	b.releaseLocked(int64(cap(buf)))
}

// drop releases the free list (when a writer ends).
func (b *budget) drop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.free {
		b.used -= int64(cap(f))
	}
	b.free = nil
}
