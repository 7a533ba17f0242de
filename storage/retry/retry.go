// Package retry wraps any storage.Store with tidemark's one retry policy:
// failures the backend marks transient (storage.IsTransient: 5xx, throttling,
// timeouts, dropped connections) are retried with jittered exponential
// backoff until a total time bound, and object bodies are resumable, so a
// connection that breaks in the middle of a 32 MiB pack costs one ranged GET
// of the rest rather than the whole read.
//
// Backends deliberately do not retry on their own (the S3 backend turns the
// SDK's retries off): a single policy is easier to bound and to log.
//
// It is not a circuit breaker and does not retry permanent failures: a wrong
// credential or a full disk is reported at once.
package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
)

// Defaults for Options fields left zero.
const (
	// DefaultMaxElapsed bounds the retries of one operation. Five minutes
	// rides out a server restart or a short network outage, and is still
	// short enough for archive_command, which PostgreSQL simply calls again.
	DefaultMaxElapsed = 5 * time.Minute
	// DefaultInitialBackoff is the mean wait before the first retry.
	DefaultInitialBackoff = 200 * time.Millisecond
	// DefaultMaxBackoff caps the wait between two attempts.
	DefaultMaxBackoff = 15 * time.Second
	// DefaultMaxResumes is how many times in a row a body may be resumed
	// without delivering a single byte in between.
	DefaultMaxResumes = 5
)

// Options tune the policy. The zero value gives the defaults.
type Options struct {
	Logger         *slog.Logger  // each retry is logged at Warn; nil discards
	MaxElapsed     time.Duration // give up when the next attempt would start later than this after the first
	InitialBackoff time.Duration // mean wait before the first retry; doubles per attempt
	MaxBackoff     time.Duration // cap on the mean wait
	MaxResumes     int           // consecutive body resumes without progress
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxElapsed <= 0 {
		o.MaxElapsed = DefaultMaxElapsed
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = DefaultInitialBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxResumes <= 0 {
		o.MaxResumes = DefaultMaxResumes
	}
	return o
}

// Store is a retrying view of another store.
type Store struct {
	inner storage.Store
	opts  Options
}

var _ storage.Store = (*Store)(nil)

// New wraps inner.
func New(inner storage.Store, opts Options) *Store {
	return &Store{inner: inner, opts: opts.withDefaults()}
}

// String names the wrapped store: retrying is not part of its identity.
func (s *Store) String() string { return s.inner.String() }

// Unwrap returns the wrapped store.
func (s *Store) Unwrap() storage.Store { return s.inner }

// GiveUpError is the cause in the *storage.Error returned once the time
// bound or the resume bound is spent. It is not transient: whoever gets it
// should not retry again.
type GiveUpError struct {
	Attempts int
	Elapsed  time.Duration
	Store    string
	Last     error // the last failure's cause
}

func (e *GiveUpError) Error() string {
	return fmt.Sprintf("gave up after %d attempts over %s on %s: %v",
		e.Attempts, e.Elapsed.Round(time.Millisecond), e.Store, e.Last)
}

// Unwrap gives the last failure's cause and storage.ErrUnavailable: the
// store stayed unreachable for the whole retry budget.
func (e *GiveUpError) Unwrap() []error { return []error{e.Last, storage.ErrUnavailable} }

// policy is the state of one run of retries. A run that makes progress (a
// listed key, a body byte) starts over, so a long read that suffers a few
// unrelated glitches is not cut short by the sum of them.
type policy struct {
	s        *Store
	op, key  string
	start    time.Time
	attempts int
}

func (s *Store) newPolicy(op, key string) *policy {
	return &policy{s: s, op: op, key: key, start: time.Now()}
}

func (p *policy) progress() { p.start, p.attempts = time.Now(), 0 }

// next decides about a failed attempt: nil means wait done, try again;
// otherwise the error to return.
func (p *policy) next(ctx context.Context, err error) error {
	p.attempts++
	if !storage.IsTransient(err) {
		return err
	}
	if ctx.Err() != nil {
		return p.stopped(ctx, err)
	}
	wait := p.s.backoff(p.attempts)
	elapsed := time.Since(p.start)
	if elapsed+wait > p.s.opts.MaxElapsed {
		return p.giveUp(err, elapsed)
	}
	p.s.opts.Logger.WarnContext(ctx, "storage operation failed, retrying",
		"store", p.s.inner.String(), "op", p.op, "key", p.key,
		"attempt", p.attempts, "retry_in", wait.Round(time.Millisecond), "err", err)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return p.stopped(ctx, err)
	case <-t.C:
		return nil
	}
}

func (p *policy) giveUp(last error, elapsed time.Duration) error {
	return &storage.Error{Op: p.op, Key: p.key, Err: &GiveUpError{
		Attempts: p.attempts, Elapsed: elapsed, Store: p.s.inner.String(), Last: cause(last)}}
}

// stopped reports a context that ended while retrying: the context error
// is what errors.Is should find, the last failure is what a human wants.
func (p *policy) stopped(ctx context.Context, last error) error {
	return &storage.Error{Op: p.op, Key: p.key,
		Err: fmt.Errorf("%w while retrying (last failure: %v)", ctx.Err(), cause(last))}
}

// cause strips the *storage.Error layer, whose op and key the caller's
// error repeats anyway.
func cause(err error) error {
	var se *storage.Error
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

// backoff returns the wait before retry number n (1-based): exponential
// with "equal jitter" (half fixed, half random), so that many clients
// hitting one throttled server spread out without ever retrying at once.
func (s *Store) backoff(n int) time.Duration {
	d := s.opts.InitialBackoff
	for i := 1; i < n && d < s.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

func (s *Store) do(ctx context.Context, op, key string, f func() error) error {
	p := s.newPolicy(op, key)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if err = p.next(ctx, err); err != nil {
			return err
		}
	}
}

// Put retries the whole upload; r is read again from offset 0.
func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.do(ctx, "put", key, func() error { return s.inner.Put(ctx, key, r, size) })
}

// Create retries like Put. A retry after a transient failure may find the
// key taken by the attempt that failed (the store wrote the object, the
// answer was lost). So when ErrExists follows a transient failure, the
// stored object is compared with r: identical bytes count as success. For
// data that must be unique per writer (leases, locks), make the content
// unique (a writer id), which such objects carry anyway.
func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	uncertain := false
	return s.do(ctx, "create", key, func() error {
		err := s.inner.Create(ctx, key, r, size)
		if storage.IsTransient(err) {
			uncertain = true
		}
		if uncertain && errors.Is(err, storage.ErrExists) {
			same, cerr := s.sameContent(ctx, key, r, size)
			if cerr != nil {
				return cerr
			}
			if same {
				s.opts.Logger.InfoContext(ctx, "create retried after an unanswered attempt: stored object is identical, treating as created",
					"store", s.inner.String(), "key", key)
				return nil
			}
		}
		return err
	})
}

// sameContent compares the stored object with r without holding either in
// memory.
func (s *Store) sameContent(ctx context.Context, key string, r io.ReaderAt, size int64) (bool, error) {
	info, err := s.inner.Head(ctx, key)
	if err != nil || info.Size != size {
		return false, err
	}
	rc, err := s.Get(ctx, key)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	const chunk = 1 << 20
	a, b := make([]byte, min(size, chunk)), make([]byte, min(size, chunk))
	for off := int64(0); off < size; {
		n := int(min(size-off, chunk))
		if _, err := io.ReadFull(rc, a[:n]); err != nil {
			return false, err
		}
		if _, err := r.ReadAt(b[:n], off); err != nil && !(err == io.EOF && off+int64(n) == size) {
			return false, &storage.Error{Op: "create", Key: key, Err: err}
		}
		if !bytes.Equal(a[:n], b[:n]) {
			return false, nil
		}
		off += int64(n)
	}
	return true, nil
}

// Get opens the object; the body resumes with ranged reads when it breaks.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := s.do(ctx, "get", key, func() (err error) {
		rc, err = s.inner.Get(ctx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumer{s: s, ctx: ctx, key: key, length: bodySize(rc), body: rc}, nil
}

// GetRange opens part of the object; the body resumes like Get's.
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := s.do(ctx, "get", key, func() (err error) {
		rc, err = s.inner.GetRange(ctx, key, off, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumer{s: s, ctx: ctx, key: key, off: off, length: length, body: rc}, nil
}

// Head retries the lookup.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	var info storage.ObjectInfo
	err := s.do(ctx, "head", key, func() (err error) {
		info, err = s.inner.Head(ctx, key)
		return err
	})
	return info, err
}

// Delete retries the whole batch: deleting is idempotent.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	key := ""
	if len(keys) > 0 {
		key = keys[0]
	}
	return s.do(ctx, "delete", key, func() error { return s.inner.Delete(ctx, keys...) })
}

// List resumes a listing that fails part way after the last key it
// yielded, so the caller sees every key exactly once.
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		p := s.newPolicy("list", prefix)
		after := startAfter
		for {
			var failed error
			for info, err := range s.inner.List(ctx, prefix, after) {
				if err != nil {
					failed = err
					break
				}
				after = info.Key
				p.progress()
				if !yield(info, nil) {
					return
				}
			}
			if failed == nil {
				return
			}
			if err := p.next(ctx, failed); err != nil {
				yield(storage.ObjectInfo{}, err)
				return
			}
		}
	}
}

// bodySize asks a body how many bytes it will deliver in total; backends
// whose bodies know it (fs, s3) let a resumer tell a truncated body from a
// complete one. -1 when unknown.
func bodySize(rc io.ReadCloser) int64 {
	if sz, ok := rc.(interface{ Size() int64 }); ok {
		return sz.Size()
	}
	return -1
}

// resumer reads a body and, when the body fails with a transient error or
// ends before its length, continues with a GetRange from where it stopped.
type resumer struct {
	s      *Store
	ctx    context.Context
	key    string
	off    int64 // object offset of the first byte of this body
	length int64 // bytes in total, -1 if unknown (a Get of a body without Size)
	pos    int64 // bytes delivered so far
	body   io.ReadCloser
	broken error // why body must be replaced before the next read
	// resumes counts resumes since the last delivered byte; resumedAt is
	// pos at the last resume.
	resumes   int
	resumedAt int64
	closed    bool
}

func (r *resumer) Read(p []byte) (int, error) {
	for {
		if r.broken != nil {
			if err := r.resume(); err != nil {
				return 0, err
			}
		}
		n, err := r.body.Read(p)
		r.pos += int64(n)
		complete := r.length >= 0 && r.pos >= r.length
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && (r.length < 0 || complete):
			return n, io.EOF
		case complete && storage.IsTransient(err):
			// Everything arrived; the connection broke only afterwards.
			return n, io.EOF
		case err == io.EOF:
			err = &storage.Error{Op: "get", Key: r.key, Transient: true,
				Err: fmt.Errorf("body ended after %d of %d bytes: %w", r.pos, r.length, io.ErrUnexpectedEOF)}
		case !storage.IsTransient(err):
			return n, err
		}
		r.broken = err
		if n > 0 {
			return n, nil
		}
	}
}

func (r *resumer) resume() error {
	if r.pos > r.resumedAt {
		r.resumes = 0
	}
	r.resumes++
	r.resumedAt = r.pos
	if r.body != nil {
		_ = r.body.Close()
		r.body = nil
	}
	at := r.off + r.pos
	if r.resumes > r.s.opts.MaxResumes {
		return &storage.Error{Op: "get", Key: r.key, Err: fmt.Errorf(
			"gave up after %d resumes at byte %d without progress on %s: %w (%w)",
			r.resumes-1, at, r.s.inner.String(), cause(r.broken), storage.ErrUnavailable)}
	}
	if err := r.ctx.Err(); err != nil {
		return &storage.Error{Op: "get", Key: r.key, Err: err}
	}
	wait := r.s.backoff(r.resumes)
	r.s.opts.Logger.WarnContext(r.ctx, "object read broke off, resuming",
		"store", r.s.inner.String(), "key", r.key, "offset", at,
		"resume", r.resumes, "retry_in", wait.Round(time.Millisecond), "err", r.broken)
	t := time.NewTimer(wait)
	select {
	case <-r.ctx.Done():
		t.Stop()
		return &storage.Error{Op: "get", Key: r.key, Err: r.ctx.Err()}
	case <-t.C:
	}
	if r.length < 0 {
		info, err := r.s.Head(r.ctx, r.key)
		if err != nil {
			return err
		}
		r.length = info.Size - r.off
	}
	var body io.ReadCloser
	err := r.s.do(r.ctx, "get", r.key, func() (err error) {
		body, err = r.s.inner.GetRange(r.ctx, r.key, at, r.length-r.pos)
		return err
	})
	if err != nil {
		return err
	}
	r.body, r.broken = body, nil
	return nil
}

func (r *resumer) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.broken != nil {
		return nil // resume already closed it, or will never open another
	}
	return r.body.Close()
}

// Size is the number of bytes the body delivers in total, -1 if unknown.
func (r *resumer) Size() int64 { return r.length }

// retainer is the retention capability of a backend (storage.Retention).
type retainer interface {
	CheckRetention(ctx context.Context) error
	WithRetention(r storage.Retention) (storage.Store, error)
}

// CheckRetention passes the wrapped store's check on, once retried; a
// store without the capability says so.
func (s *Store) CheckRetention(ctx context.Context) error {
	rt, ok := s.inner.(retainer)
	if !ok {
		return fmt.Errorf("%s cannot lock objects against deletion (object lock is supported on S3 only): %w", s.inner, storage.ErrPermanent)
	}
	return s.do(ctx, "check object lock", "", func() error { return rt.CheckRetention(ctx) })
}

// WithRetention returns the wrapped store's locking view, retried like the
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
	return &Store{inner: inner, opts: s.opts}, nil
}

// RestoreOriginals passes the wrapped store's version recovery on (see
// storage/s3), once retried.
func (s *Store) RestoreOriginals(ctx context.Context, covers func(key string) bool) (restored, lost []string, err error) {
	ro, ok := s.inner.(interface {
		RestoreOriginals(ctx context.Context, covers func(key string) bool) ([]string, []string, error)
	})
	if !ok {
		return nil, nil, fmt.Errorf("%s keeps no object versions to restore from (S3 buckets with object lock do): %w", s.inner, storage.ErrPermanent)
	}
	err = s.do(ctx, "restore versions", "", func() error {
		restored, lost, err = ro.RestoreOriginals(ctx, covers)
		return err
	})
	return restored, lost, err
}
