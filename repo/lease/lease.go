// Package lease implements leases on an object store: small plaintext JSON
// objects under leases/<scope>/<id> that say who is working on what, so that
// one backup per cluster runs at a time and garbage collection can wait for
// writers that started before it.
//
// A lease is created create-only, refreshed in the background while held and
// deleted on release. An exclusive lease conflicts with every other live
// lease of its scope; a shared lease conflicts only with a live exclusive
// one. Acquiring creates the own lease first and then lists the scope: if a
// conflicting live lease exists, the own one is deleted again and a
// *LockedError names the holder. Without compare-and-delete two racers may
// both back off, never both proceed. A lease not refreshed within its TTL
// is expired: it is reported (with who held it), ignored and removed.
//
// Clocks: expiry compares the holder's recorded refresh time with the local
// clock, so hosts must agree on time to well within the TTL.
//
// This package is not a general lock service and holds no secrets; it knows
// nothing of the repository format beyond its own objects.
package lease

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
)

// Prefix is the object key prefix of leases.
const Prefix = "leases/"

// Defaults.
const (
	// DefaultTTL is how long a lease lives without refresh.
	DefaultTTL = 5 * time.Minute
	// refreshDivisor: a lease is refreshed every TTL/refreshDivisor, so two
	// refreshes may fail before it expires.
	refreshDivisor = 3
	// maxInfoSize bounds a lease object in bytes.
	maxInfoSize = 64 << 10
	// Version of the lease object.
	Version = 1
)

// Info is a lease object as stored.
type Info struct {
	Format    int       `json:"format"`
	Scope     string    `json:"scope"`
	ID        string    `json:"id"`
	Exclusive bool      `json:"exclusive"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Command   string    `json:"command"`
	Started   time.Time `json:"started"`
	Refreshed time.Time `json:"refreshed"`
	TTL       Seconds   `json:"ttl_seconds"`
}

// Seconds is a duration stored as whole seconds.
type Seconds int64

// Duration converts to time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(s) * time.Second }

// Key returns the lease's object key.
func (i *Info) Key() string { return Prefix + i.Scope + "/" + i.ID }

// Expired reports whether the lease was not refreshed within its TTL at now.
func (i *Info) Expired(now time.Time) bool { return now.After(i.Refreshed.Add(i.TTL.Duration())) }

// String describes the holder for messages.
func (i *Info) String() string {
	return fmt.Sprintf("%q on host %s (pid %d) since %s", i.Command, i.Host, i.PID, i.Started.Format(time.RFC3339))
}

// Encode returns the JSON of a lease.
func (i *Info) Encode() []byte {
	b, _ := json.MarshalIndent(i, "", "  ")
	return b
}

// ErrFormat is matched by decoding failures.
var ErrFormat = errors.New("malformed lease")

// Decode parses a lease object.
func Decode(b []byte) (*Info, error) {
	if len(b) > maxInfoSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrFormat, len(b))
	}
	var i Info
	if err := json.Unmarshal(b, &i); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if i.Format != Version {
		return nil, fmt.Errorf("%w: format %d", ErrFormat, i.Format)
	}
	if err := ValidScope(i.Scope); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if i.TTL <= 0 || !validSegment(i.ID) {
		return nil, fmt.Errorf("%w: id %q ttl %d", ErrFormat, i.ID, i.TTL)
	}
	return &i, nil
}

// ValidScope checks a scope: one or more slash-separated segments of
// letters, digits, '.', '_' and '-' (not "." or "..").
func ValidScope(s string) error {
	if s == "" {
		return errors.New("empty lease scope")
	}
	for _, seg := range strings.Split(s, "/") {
		if !validSegment(seg) {
			return fmt.Errorf("lease scope %q: bad segment %q", s, seg)
		}
	}
	return nil
}

func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// LockedError says that a conflicting live lease is held.
type LockedError struct {
	Scope  string
	Holder Info
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("%s is locked by %s (lease %s, refreshed %s); wait for it to finish, "+
		"or if that process is gone, the lease expires %s",
		e.Scope, e.Holder.String(), e.Holder.Key(), e.Holder.Refreshed.Format(time.RFC3339),
		e.Holder.Refreshed.Add(e.Holder.TTL.Duration()).Format(time.RFC3339))
}

// ErrLost is the cause of a lease that could not be refreshed in time or was
// removed by someone else.
var ErrLost = errors.New("lease lost")

// Options configure Acquire.
type Options struct {
	Exclusive bool
	TTL       time.Duration // DefaultTTL when zero
	Command   string        // what the holder is doing, for messages
	Host      string        // os.Hostname() when empty
	PID       int           // os.Getpid() when zero
	Logger    *slog.Logger  // slog.DiscardHandler when nil
	// Now is the clock (time.Now when nil); tests inject one.
	Now func() time.Time
	// ReclaimGone removes a conflicting lease whose holder was a process
	// on this host that no longer exists (kill -9, a crash) rather than
	// waiting out its TTL, so that a rerun resumes at once. A holder on
	// another host, or a live process here, is never touched.
	ReclaimGone bool
}

// Lease is a held lease.
type Lease struct {
	store storage.Store
	log   *slog.Logger
	now   func() time.Time

	mu   sync.Mutex
	info Info
	err  error

	lost    chan struct{}
	stop    chan struct{}
	stopped chan struct{}

	// Expired lists the expired leases of the scope that Acquire found and
	// removed, so that callers can report who held them.
	Expired []Info
}

// NewID returns a lease id that sorts by creation time and is unique.
func NewID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Acquire creates a lease in scope, checks for conflicts and starts
// refreshing it. A conflict returns a *LockedError.
func Acquire(ctx context.Context, store storage.Store, scope string, opts Options) (*Lease, error) {
	if err := ValidScope(scope); err != nil {
		return nil, err
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	if opts.TTL < time.Second {
		opts.TTL = time.Second
	}
	if opts.Host == "" {
		opts.Host, _ = os.Hostname()
	}
	if opts.PID == 0 {
		opts.PID = os.Getpid()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	now := opts.Now().UTC()
	l := &Lease{store: store, log: opts.Logger, now: opts.Now,
		lost: make(chan struct{}), stop: make(chan struct{}), stopped: make(chan struct{})}
	l.info = Info{Format: Version, Scope: scope, ID: NewID(now), Exclusive: opts.Exclusive,
		Host: opts.Host, PID: opts.PID, Command: opts.Command, Started: now, Refreshed: now,
		TTL: Seconds((opts.TTL + time.Second - 1) / time.Second)}
	key := l.info.Key()
	body := l.info.Encode()
	if err := store.Create(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
		return nil, fmt.Errorf("create lease %s: %w", key, err)
	}
	others, err := List(ctx, store, scope)
	if err != nil {
		l.deleteOwn()
		return nil, err
	}
	var conflict *Info
	for i := range others {
		o := &others[i]
		if o.ID == l.info.ID {
			continue
		}
		if o.Expired(opts.Now()) {
			l.Expired = append(l.Expired, *o)
			l.log.Warn("removing expired lease", "lease", o.Key(), "holder", o.String(),
				"refreshed", o.Refreshed)
			if err := store.Delete(ctx, o.Key()); err != nil {
				l.log.Warn("could not remove expired lease", "lease", o.Key(), "err", err)
			}
			continue
		}
		if (opts.Exclusive || o.Exclusive) && opts.ReclaimGone && HolderGone(*o) {
			l.log.Warn("removing the lease of an earlier run on this host whose process is gone", "lease", o.Key(), "holder", o.String())
			if err := store.Delete(ctx, o.Key()); err != nil {
				l.deleteOwn()
				return nil, fmt.Errorf("remove the stale lease %s: %w", o.Key(), err)
			}
			continue
		}
		if (opts.Exclusive || o.Exclusive) && conflict == nil {
			conflict = o
		}
	}
	if conflict != nil {
		l.deleteOwn()
		return nil, &LockedError{Scope: scope, Holder: *conflict}
	}
	go l.refreshLoop(opts.TTL / refreshDivisor)
	return l, nil
}

// HolderGone reports whether a lease holder was a process on this host that
// no longer exists. A reused PID makes it look alive: the safe side.
func HolderGone(h Info) bool {
	host, err := os.Hostname()
	if err != nil || h.Host != host || h.PID <= 0 || h.PID == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(h.PID, 0), syscall.ESRCH)
}

func (l *Lease) deleteOwn() {
	// Own cleanup must happen even if the caller's context ended.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.store.Delete(ctx, l.info.Key()); err != nil {
		l.log.Warn("could not remove own lease", "lease", l.info.Key(), "err", err)
	}
}

// List returns the leases of a scope (and of its sub-scopes), live and
// expired. Unreadable lease objects are skipped with no error: they cannot
// be told apart from one being deleted.
func List(ctx context.Context, store storage.Store, scope string) ([]Info, error) {
	prefix := Prefix + scope + "/"
	var out []Info
	for oi, err := range store.List(ctx, prefix, "") {
		if err != nil {
			return nil, fmt.Errorf("list leases %s: %w", prefix, err)
		}
		rc, err := store.Get(ctx, oi.Key)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read lease %s: %w", oi.Key, err)
		}
		b, err := io.ReadAll(io.LimitReader(rc, maxInfoSize+1))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("read lease %s: %w", oi.Key, err)
		}
		info, err := Decode(b)
		if err != nil || info.Key() != oi.Key {
			continue
		}
		out = append(out, *info)
	}
	return out, nil
}

// Info returns the lease as last written.
func (l *Lease) Info() Info {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.info
}

// Lost is closed when the lease could not be refreshed before it expired,
// or was removed by someone else. Err then says why.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err returns the reason the lease was lost, or nil.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *Lease) refreshLoop(every time.Duration) {
	defer close(l.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			if err := l.Refresh(context.Background()); err != nil {
				l.log.Warn("lease refresh failed", "lease", l.info.Key(), "err", err)
				if errors.Is(err, ErrLost) {
					return
				}
			}
		}
	}
}

// Refresh rewrites the lease with the current time. The background loop
// calls it; it is exported for tests and for callers that want to refresh
// at a point of their choosing.
func (l *Lease) Refresh(ctx context.Context) error {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return l.err
	}
	info := l.info
	l.mu.Unlock()
	key := info.Key()
	ctx, cancel := context.WithTimeout(ctx, info.TTL.Duration())
	defer cancel()
	_, err := l.store.Head(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return l.fail(fmt.Errorf("%w: %s was removed (it was taken for expired)", ErrLost, key))
	}
	last := info.Refreshed
	if err == nil {
		info.Refreshed = l.now().UTC()
		body := info.Encode()
		err = l.store.Put(ctx, key, bytes.NewReader(body), int64(len(body)))
	}
	if err != nil {
		if l.now().After(last.Add(info.TTL.Duration())) {
			return l.fail(fmt.Errorf("%w: %s not refreshed within %s: %w", ErrLost, key, info.TTL.Duration(), err))
		}
		return fmt.Errorf("refresh lease %s: %w", key, err)
	}
	l.mu.Lock()
	l.info = info
	l.mu.Unlock()
	return nil
}

func (l *Lease) fail(err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
		close(l.lost)
	}
	return l.err
}

// Release stops refreshing and deletes the lease. It is safe to call more
// than once.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	select {
	case <-l.stop:
		l.mu.Unlock()
		return nil
	default:
		close(l.stop)
	}
	l.mu.Unlock()
	<-l.stopped
	if err := l.store.Delete(ctx, l.info.Key()); err != nil {
		return fmt.Errorf("release lease %s: %w", l.info.Key(), err)
	}
	return nil
}
