// Package storage defines the object store that a tidemark repository lives in:
// a flat namespace of immutable-by-convention objects addressed by slash-separated
// keys, as offered by S3-compatible servers and by a local directory.
//
// It is not the repository format: packs, index, snapshots and keys are built on
// top of this interface by repo. Backends live in sub-packages
// (storage/fs, storage/s3); wrappers that add behaviour (storage/retry,
// storage/fault) implement the same interface.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"strings"
	"time"
)

// Store is an object store. Implementations must be safe for concurrent use.
//
// Keys are relative, slash-separated, never start with a slash and never contain
// "." or ".." segments. A Store never exposes a partially written object: an
// object is either absent or complete.
type Store interface {
	// Put writes the object, replacing any existing one. It returns only after
	// the store has acknowledged the whole body (size bytes read from r at
	// offset 0) and, where the backend supports it, verified a checksum of it.
	// r may be read more than once (retries, multipart parts).
	Put(ctx context.Context, key string, r io.ReaderAt, size int64) error

	// Create is Put that fails with an error matching ErrExists when the key
	// already exists. It is atomic: of two concurrent Creates of one key,
	// exactly one succeeds.
	Create(ctx context.Context, key string, r io.ReaderAt, size int64) error

	// Get returns a reader of the whole object. The caller closes it.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// GetRange returns a reader of length bytes starting at off. A range that
	// extends past the end of the object is an error matching ErrRange.
	GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)

	// Head returns the object's metadata.
	Head(ctx context.Context, key string) (ObjectInfo, error)

	// List yields the objects whose keys start with prefix and sort strictly
	// after startAfter (empty: from the beginning), in lexicographic key order.
	// It pages through the store: memory does not grow with the number of
	// objects. A yielded error ends the sequence.
	List(ctx context.Context, prefix, startAfter string) iter.Seq2[ObjectInfo, error]

	// Delete removes the objects. Keys that do not exist are not an error.
	Delete(ctx context.Context, keys ...string) error

	// String describes the store for messages, without credentials
	// (for example "s3://bucket/prefix" or "file:///var/lib/tidemark").
	String() string
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Errors that callers test for with errors.Is. Backends wrap them with the
// operation and the key, for example "get data/ab/abcd…: object not found".
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrExists: Create found the key already taken.
	ErrExists = errors.New("object already exists")
	// ErrRange: a byte range outside the object.
	ErrRange = errors.New("range outside object")
	// ErrPermanent: a failure that retrying will not cure (access denied, no
	// such bucket, invalid request, a checksum the server rejected repeatedly).
	ErrPermanent = errors.New("permanent storage failure")
	// ErrLocked: a delete or overwrite the store refused because the object
	// is under a retention lock (see Retention) that has not passed yet.
	ErrLocked = errors.New("object is under a retention lock")
	// ErrUnavailable: the store could not be reached, or kept failing in
	// ways a retry may cure until the retries gave up (connection refused,
	// a name that does not resolve, timeouts, 5xx). It says nothing about
	// any object, so a second repository may be tried where the first
	// stands for it (restore, wal-fetch and drill fall back on it).
	ErrUnavailable = errors.New("object store unavailable")
)

// Retention is a write-once-read-many lock on objects (S3 Object Lock): an
// object written under it can be neither deleted nor overwritten until
// Period after it was written, whatever the credentials (compliance mode)
// or without a permission to bypass it (governance mode).
//
// It is an optional capability of a backend, asked for by the repository
// (repo), which knows which keys must be immutable: the backend offers a
// view of itself that writes the keys Covers reports under the lock. Keys
// not covered (leases, records that are rewritten) are written as usual.
type Retention struct {
	Mode   string        // RetentionCompliance or RetentionGovernance
	Period time.Duration // how long after its write an object stays locked
	// Covers reports the keys to lock. They must be create-only or
	// content-addressed: Put of a covered key that exists leaves the object
	// as it is, since it cannot be replaced anyway.
	Covers func(key string) bool
	Now    func() time.Time // the clock the lock starts from; nil: time.Now
}

// Retention modes.
const (
	RetentionCompliance = "compliance"
	RetentionGovernance = "governance"
)

// Error is a storage failure with its operation and object key. Backends
// return it so that messages always name the object, and so that a caller can
// tell a transient failure (worth retrying) from a permanent one.
type Error struct {
	Op        string // "put", "create", "get", "head", "list", "delete"
	Key       string // object key or list prefix
	Err       error  // underlying cause
	Transient bool   // a retry may succeed (5xx, throttling, timeouts, resets)
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %v", e.Op, e.Key, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// IsTransient reports whether err is a storage failure that a retry may cure.
// Backends decide: a request timeout is transient, the caller's context ending
// is not (retry loops check the context themselves).
func IsTransient(err error) bool {
	var se *Error
	if errors.As(err, &se) {
		return se.Transient
	}
	return false
}

// IsUnavailable reports whether err says that the store could not be
// reached rather than anything about an object: a transient failure, one
// matching ErrUnavailable (the retries gave up), or a name that does not
// resolve. Not found, exists,
// a corrupt object, access denied and the caller's context ending are not.
func IsUnavailable(err error) bool {
	// A name that does not resolve is permanent for retries (a typo in the
	// endpoint stays a typo) but, for a second repository, a region that
	// cannot be reached.
	var dns *net.DNSError
	return IsTransient(err) || errors.Is(err, ErrUnavailable) || errors.As(err, &dns)
}

// ErrInvalidKey is matched by CheckKey's errors.
var ErrInvalidKey = errors.New("invalid key")

// CheckKey refuses keys that are not relative slash-separated paths: they
// could escape a directory root or alias another key on some backend. Every
// backend refuses the same keys, so that a repository can move between
// them. The error wraps ErrInvalidKey and ErrPermanent.
func CheckKey(key string) error {
	why := ""
	switch {
	case key == "":
		why = "empty"
	case strings.ContainsRune(key, 0):
		why = "contains a NUL byte"
	default:
		for seg := range strings.SplitSeq(key, "/") {
			if seg == "" {
				why = "empty path segment"
			} else if seg == "." || seg == ".." {
				why = `"." or ".." segment`
			}
		}
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("%w: %s (%w)", ErrInvalidKey, why, ErrPermanent)
}
