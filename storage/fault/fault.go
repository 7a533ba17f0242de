// Package fault wraps a storage.Store to inject failures on chosen calls,
// for tests of everything that must survive an unreliable object store:
// returned errors (transient or permanent), added latency, bodies that end
// early or break off mid-read, writes whose acknowledgement is lost, and a
// whole store that is unreachable for a while and then heals.
//
// Faults are chosen by operation, key prefix and call count ("the 2nd and
// 3rd Put under data/": Rule{Ops: Put, Prefix: "data/", Skip: 1, Times: 2}).
//
// It is a test tool, not a backend: nothing outside tests should import it.
package fault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
)

// Op is a set of Store operations.
type Op uint

// The operations a Rule can select. Get and GetRange are separate so a test
// can break whole reads and leave the ranged reads that resume them alone.
const (
	Put Op = 1 << iota
	Create
	Get
	GetRange
	Head
	List
	Delete

	All = Put | Create | Get | GetRange | Head | List | Delete
)

func (op Op) String() string {
	names := []string{"put", "create", "get", "getrange", "head", "list", "delete"}
	var parts []string
	for i, n := range names {
		if op&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "|")
}

// opName is the Op field of the storage.Error an injected fault returns,
// the same names the backends use.
func opName(op Op) string {
	if op == GetRange {
		return "get"
	}
	return op.String()
}

// Kind is what a Rule does to a call it selects. Truncate and Drop act on
// what a call returns (bodies of Get and GetRange, listings); on other
// calls they do nothing. A write that breaks off is Transient (nothing
// stored) or LoseAck (stored, but the caller does not know).
type Kind int

const (
	// Pass lets the call through (Delay still applies).
	Pass Kind = iota
	// Transient fails the call with a transient error before it reaches the store.
	Transient
	// Permanent fails the call with an error matching storage.ErrPermanent.
	Permanent
	// LoseAck performs the call, then reports a transient failure, as when
	// the server wrote the object but the answer never arrived.
	LoseAck
	// Truncate makes a body end cleanly (io.EOF) after After bytes: a
	// server or proxy that closes a response early without an error.
	Truncate
	// Drop makes a body read, or a listing, fail with a transient error
	// after After bytes (or keys): a connection reset mid-transfer.
	Drop
)

// ErrInjected is the cause of injected failures when Rule.Err is nil.
var ErrInjected = errors.New("injected fault")

// ErrUnreachable is the cause of every failure while the store is down.
var ErrUnreachable = errors.New("connection refused (injected outage)")

// Rule selects calls and says what to do to them.
type Rule struct {
	Ops    Op     // operations to select; 0 means All
	Prefix string // only keys (List: list prefixes) starting with this
	Skip   int    // let this many selected calls pass unharmed first
	Times  int    // then affect this many; 0 means every one after Skip
	Kind   Kind
	After  int64         // Truncate, Drop: bytes (List: keys) delivered first
	Delay  time.Duration // added before the call (or the faulty read)
	Err    error         // cause for Transient and Permanent; nil means ErrInjected
}

// Handle reports on a rule that was added.
type Handle struct {
	s    *Store
	rule Rule
	seen int // selected calls
	hits int // calls the rule acted on
}

// Hits returns how many calls the rule has acted on so far.
func (h *Handle) Hits() int {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	return h.hits
}

// Store injects faults into calls to another store.
type Store struct {
	inner storage.Store

	mu        sync.Mutex
	rules     []*Handle
	down      bool
	downUntil time.Time // zero: until Up
	calls     map[Op]int
}

var _ storage.Store = (*Store)(nil)

// New wraps inner. Without rules it passes every call through.
func New(inner storage.Store) *Store {
	return &Store{inner: inner, calls: make(map[Op]int)}
}

// String names the wrapped store.
func (s *Store) String() string { return s.inner.String() }

// Add installs a rule. Rules are consulted in the order added; every
// matching rule counts the call, the first that fails it decides how.
func (s *Store) Add(r Rule) *Handle {
	if r.Ops == 0 {
		r.Ops = All
	}
	h := &Handle{s: s, rule: r}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = append(s.rules, h)
	return h
}

// Clear removes all rules and ends any outage.
func (s *Store) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules, s.down = nil, false
}

// Down makes the store unreachable until Up: every call, and every read of
// a body opened before, fails with a transient ErrUnreachable.
func (s *Store) Down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down, s.downUntil = true, time.Time{}
}

// Up ends an outage.
func (s *Store) Up() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = false
}

// Outage makes the store unreachable for d from now; it heals by itself.
func (s *Store) Outage(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down, s.downUntil = true, time.Now().Add(d)
}

// Calls returns how many calls of the given operations the store has seen,
// faulty or not.
func (s *Store) Calls(ops Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for op, c := range s.calls {
		if op&ops != 0 {
			n += c
		}
	}
	return n
}

func (s *Store) isDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isDownLocked()
}

func (s *Store) isDownLocked() bool {
	if s.down && !s.downUntil.IsZero() && time.Now().After(s.downUntil) {
		s.down = false
	}
	return s.down
}

// verdict is what happens to one call.
type verdict struct {
	delay time.Duration
	fail  *Rule // Transient, Permanent or LoseAck
	body  *Rule // Truncate or Drop
	down  bool
}

func (s *Store) judge(op Op, keys ...string) verdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
	var v verdict
	v.down = s.isDownLocked()
	for _, h := range s.rules {
		if h.rule.Ops&op == 0 || !anyPrefix(keys, h.rule.Prefix) {
			continue
		}
		h.seen++
		if h.seen <= h.rule.Skip || (h.rule.Times > 0 && h.seen > h.rule.Skip+h.rule.Times) {
			continue
		}
		h.hits++
		v.delay += h.rule.Delay
		r := h.rule
		switch r.Kind {
		case Transient, Permanent, LoseAck:
			if v.fail == nil {
				v.fail = &r
			}
		case Truncate, Drop:
			if v.body == nil {
				v.body = &r
			}
		}
	}
	return v
}

func anyPrefix(keys []string, prefix string) bool {
	for _, k := range keys {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// injected builds the error a rule or an outage returns.
func injected(op Op, key string, r *Rule) error {
	if r == nil {
		return &storage.Error{Op: opName(op), Key: key, Err: ErrUnreachable, Transient: true}
	}
	cause := r.Err
	if cause == nil {
		cause = ErrInjected
	}
	if r.Kind == Permanent && !errors.Is(cause, storage.ErrPermanent) {
		cause = fmt.Errorf("%w: %w", cause, storage.ErrPermanent)
	}
	return &storage.Error{Op: opName(op), Key: key, Err: cause, Transient: r.Kind != Permanent}
}

// before applies delay, outage and up-front failures. It returns the
// verdict for what happens after the call, or the error to return instead.
func (s *Store) before(ctx context.Context, op Op, keys ...string) (verdict, error) {
	key := ""
	if len(keys) > 0 {
		key = keys[0]
	}
	v := s.judge(op, keys...)
	if v.delay > 0 {
		t := time.NewTimer(v.delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, &storage.Error{Op: opName(op), Key: key, Err: ctx.Err()}
		case <-t.C:
		}
	}
	if v.down {
		return v, injected(op, key, nil)
	}
	if v.fail != nil && v.fail.Kind != LoseAck {
		return v, injected(op, key, v.fail)
	}
	return v, nil
}

// after turns a successful call into a lost acknowledgement when asked.
func after(v verdict, op Op, key string, err error) error {
	if err == nil && v.fail != nil && v.fail.Kind == LoseAck {
		return injected(op, key, v.fail)
	}
	return err
}

func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	v, err := s.before(ctx, Put, key)
	if err != nil {
		return err
	}
	return after(v, Put, key, s.inner.Put(ctx, key, r, size))
}

func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	v, err := s.before(ctx, Create, key)
	if err != nil {
		return err
	}
	return after(v, Create, key, s.inner.Create(ctx, key, r, size))
}

func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.open(ctx, Get, key, func() (io.ReadCloser, error) { return s.inner.Get(ctx, key) })
}

func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	return s.open(ctx, GetRange, key, func() (io.ReadCloser, error) { return s.inner.GetRange(ctx, key, off, length) })
}

func (s *Store) open(ctx context.Context, op Op, key string, get func() (io.ReadCloser, error)) (io.ReadCloser, error) {
	v, err := s.before(ctx, op, key)
	if err != nil {
		return nil, err
	}
	rc, err := get()
	if err = after(v, op, key, err); err != nil {
		if rc != nil {
			rc.Close()
		}
		return nil, err
	}
	return &body{s: s, inner: rc, key: key, rule: v.body}, nil
}

func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	v, err := s.before(ctx, Head, key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	info, err := s.inner.Head(ctx, key)
	return info, after(v, Head, key, err)
}

func (s *Store) Delete(ctx context.Context, keys ...string) error {
	v, err := s.before(ctx, Delete, keys...)
	if err != nil {
		return err
	}
	key := ""
	if len(keys) > 0 {
		key = keys[0]
	}
	return after(v, Delete, key, s.inner.Delete(ctx, keys...))
}

// List applies Drop after After keys; an outage that starts mid-listing
// breaks it at the next key.
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		v, err := s.before(ctx, List, prefix)
		if err != nil {
			yield(storage.ObjectInfo{}, err)
			return
		}
		var n int64
		for info, err := range s.inner.List(ctx, prefix, startAfter) {
			if err == nil && s.isDown() {
				err = injected(List, prefix, nil)
			}
			if err == nil && v.body != nil && v.body.Kind == Drop && n >= v.body.After {
				err = injected(List, prefix, &Rule{Kind: Transient, Err: v.body.Err})
			}
			if err != nil {
				yield(storage.ObjectInfo{}, err)
				return
			}
			n++
			if !yield(info, nil) {
				return
			}
		}
		if err := after(v, List, prefix, nil); err != nil {
			yield(storage.ObjectInfo{}, err)
		}
	}
}

// body applies Truncate, Drop and outages to an object being read.
type body struct {
	s     *Store
	inner io.ReadCloser
	key   string
	rule  *Rule
	n     int64
}

func (b *body) Read(p []byte) (int, error) {
	if b.s.isDown() {
		return 0, injected(Get, b.key, nil)
	}
	if b.rule != nil {
		left := b.rule.After - b.n
		if left <= 0 {
			if b.rule.Kind == Truncate {
				return 0, io.EOF
			}
			return 0, injected(Get, b.key, &Rule{Kind: Transient, Err: b.rule.Err})
		}
		if int64(len(p)) > left {
			p = p[:left]
		}
	}
	n, err := b.inner.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *body) Close() error { return b.inner.Close() }

// Size passes on the length the wrapped body announced, so that a truncated
// body looks like what it imitates: a response shorter than its header said.
func (b *body) Size() int64 {
	if sz, ok := b.inner.(interface{ Size() int64 }); ok {
		return sz.Size()
	}
	return -1
}
