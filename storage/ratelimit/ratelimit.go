// Package ratelimit wraps any storage.Store so that uploads and downloads
// average at most a number of bytes per second each (--max-upload-rate,
// --max-download-rate): object bodies are paced as they are read, so one
// limit holds across every upload (or download) in flight through the
// wrapper, retries and resumed reads included. Listings, HEADs and deletes
// are not limited: they move next to no bytes.
//
// An upload's body is charged as it is read for sending; a backend that
// reads it once more beforehand for a checksum reads through
// storage.Unmetered, so that pass is not charged. It is not a scheduler:
// requests are not reordered or prioritised.
package ratelimit

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"

	"golang.org/x/time/rate"

	"github.com/tidemarkdb/tidemark/storage"
)

// maxBurst bounds the bytes read at once through a limited body, so that
// a limit is kept over fractions of a second rather than per object.
const maxBurst = 256 << 10

// Store is a rate-limited view of another store.
type Store struct {
	inner    storage.Store
	up, down waiter // nil: not limited
}

// waiter is what Store takes of a *rate.Limiter: a wait for n bytes, and
// the most it may ask for at once.
type waiter interface {
	WaitN(ctx context.Context, n int) error
	Burst() int
}

var _ storage.Store = (*Store)(nil)

// New wraps inner. upload and download are bytes per second; 0 does not
// limit that direction. With neither limited it returns inner itself.
func New(inner storage.Store, upload, download int64) storage.Store {
	if upload <= 0 && download <= 0 {
		return inner
	}
	s := &Store{inner: inner}
	if upload > 0 {
		s.up = limiter(upload)
	}
	if download > 0 {
		s.down = limiter(download)
	}
	return s
}

func limiter(bytesPerSecond int64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(min(bytesPerSecond, maxBurst)))
}

// String names the wrapped store: limiting is not part of its identity.
func (s *Store) String() string { return s.inner.String() }

// Unwrap returns the wrapped store.
func (s *Store) Unwrap() storage.Store { return s.inner }

// wait takes n bytes from l, in pieces no larger than its burst.
func wait(ctx context.Context, l waiter, n int) error {
	for n > 0 {
		k := min(n, l.Burst())
		if err := l.WaitN(ctx, k); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		n -= k
	}
	return nil
}

// upBody is an upload's body, charged as it is read, each byte once: a
// backend may read a body more than once (over plain http the S3 SDK reads
// it to sign the payload, then to send it), and what goes over the wire
// is the object once. A retried upload is not charged again.
type upBody struct {
	ctx context.Context
	l   waiter
	r   io.ReaderAt

	mu      sync.Mutex
	charged []span // disjoint, sorted
}

type span struct{ start, end int64 }

// uncharged returns how many bytes of [off, off+n) were not charged yet,
// and marks them charged.
func (b *upBody) uncharged(off, n int64) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	end := off + n
	fresh := n
	merged := span{off, end}
	out := b.charged[:0:0]
	for _, c := range b.charged {
		if c.end < off || c.start > end {
			out = append(out, c)
			continue
		}
		fresh -= min(c.end, end) - max(c.start, off)
		merged = span{min(merged.start, c.start), max(merged.end, c.end)}
	}
	out = append(out, merged)
	slices.SortFunc(out, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	b.charged = out
	return fresh
}

func (b *upBody) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.r.ReadAt(p, off)
	if werr := wait(b.ctx, b.l, int(b.uncharged(off, int64(n)))); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

// Unmetered is the body without the charge (storage.Unmetered).
func (b *upBody) Unmetered() io.ReaderAt { return b.r }

func (s *Store) body(ctx context.Context, r io.ReaderAt) io.ReaderAt {
	if s.up == nil {
		return r
	}
	return &upBody{ctx: ctx, l: s.up, r: r}
}

// Put uploads at most at the upload rate.
func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.inner.Put(ctx, key, s.body(ctx, r), size)
}

// Create uploads at most at the upload rate.
func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.inner.Create(ctx, key, s.body(ctx, r), size)
}

// downBody is a download's body, charged as it is read.
type downBody struct {
	ctx context.Context
	l   waiter
	io.ReadCloser
}

// Read charges what it read, after reading it: a read may return less
// than asked, and the next read waits for this one's charge.
func (b *downBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p[:min(len(p), b.l.Burst())])
	if werr := wait(b.ctx, b.l, n); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

func (s *Store) limitBody(ctx context.Context, rc io.ReadCloser, err error) (io.ReadCloser, error) {
	if err != nil || s.down == nil {
		return rc, err
	}
	return &downBody{ctx: ctx, l: s.down, ReadCloser: rc}, nil
}

// Get downloads at most at the download rate.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.inner.Get(ctx, key)
	return s.limitBody(ctx, rc, err)
}

// GetRange downloads at most at the download rate.
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	rc, err := s.inner.GetRange(ctx, key, off, length)
	return s.limitBody(ctx, rc, err)
}

// Head is not limited.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	return s.inner.Head(ctx, key)
}

// List is not limited.
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return s.inner.List(ctx, prefix, startAfter)
}

// Delete is not limited.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	return s.inner.Delete(ctx, keys...)
}

// retainer is the retention capability of the wrapped store
// (storage.Retention, S3 Object Lock): a locked repository must open
// through a limited store as through any other.
type retainer interface {
	CheckRetention(ctx context.Context) error
	WithRetention(r storage.Retention) (storage.Store, error)
}

// CheckRetention passes the wrapped store's check on.
func (s *Store) CheckRetention(ctx context.Context) error {
	rt, ok := s.inner.(retainer)
	if !ok {
		return fmt.Errorf("%s cannot lock objects against deletion (object lock is supported on S3 only): %w", s.inner, storage.ErrPermanent)
	}
	return rt.CheckRetention(ctx)
}

// WithRetention returns the wrapped store's locking view, limited like the
// store itself.
func (s *Store) WithRetention(r storage.Retention) (storage.Store, error) {
	rt, ok := s.inner.(retainer)
	if !ok {
		return nil, fmt.Errorf("%s cannot lock objects against deletion (object lock is supported on S3 only): %w", s.inner, storage.ErrPermanent)
	}
	inner, err := rt.WithRetention(r)
	if err != nil {
		return nil, err
	}
	return &Store{inner: inner, up: s.up, down: s.down}, nil
}
