package walarchive

import (
	"io"
	"sync"
	"sync/atomic"
)

// writeBehind hashes and writes a decoded file in a goroutine of its own
// while the caller decodes the next buffer. A wal-fetch served from the
// archive spent, per 16 MiB segment, about 25 ms reading, decrypting and
// decompressing, 10 ms hashing the MAC and 8 ms writing the file, all in
// one goroutine while recovery waited; in two, the second core does the
// last two beside the first.
type writeBehind struct {
	h, w   io.Writer
	full   chan []byte
	free   chan []byte
	done   chan struct{}
	failed atomic.Bool
	err    error // the first error of w, read after done
	once   sync.Once
}

// writeBehindBuffers is how many buffers circulate: one decoding, one
// being written, one queued.
const writeBehindBuffers = 3

// newWriteBehind starts the goroutine; buffers are size bytes.
func newWriteBehind(h, w io.Writer, size int) *writeBehind {
	b := &writeBehind{h: h, w: w, full: make(chan []byte, writeBehindBuffers),
		free: make(chan []byte, writeBehindBuffers), done: make(chan struct{})}
	for range writeBehindBuffers {
		b.free <- make([]byte, size)
	}
	go b.run()
	return b
}

func (b *writeBehind) run() {
	defer close(b.done)
	for p := range b.full {
		if b.err == nil {
			b.h.Write(p)
			if _, err := b.w.Write(p); err != nil {
				b.err = err
				b.failed.Store(true)
			}
		}
		b.free <- p[:cap(p)]
	}
}

// buffer returns a buffer to decode into.
func (b *writeBehind) buffer() []byte { return <-b.free }

// send queues p, a buffer from buffer() cut to what it holds; an empty one
// goes back to the free list.
func (b *writeBehind) send(p []byte) {
	if len(p) == 0 {
		b.free <- p[:cap(p)]
		return
	}
	b.full <- p
}

// writeFailed reports whether a write has failed already: decoding the
// rest would be for nothing.
func (b *writeBehind) writeFailed() bool { return b.failed.Load() }

// close waits until every queued buffer is hashed and written and returns
// the first write error. It may be called more than once.
func (b *writeBehind) close() error {
	b.once.Do(func() { close(b.full) })
	<-b.done
	return b.err
}
