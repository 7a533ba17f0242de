package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
	"github.com/tidemarkdb/tidemark/repo/lease"
	"github.com/tidemarkdb/tidemark/storage"
)

// Failover reads from a first repository and, from the moment its store is
// unreachable (storage.IsUnavailable: the store's own retries gave up),
// from a second repository that shares its master secret, for the rest of
// the run. Because the two share the secret, a blob has the same ID in both
// and is verified against it wherever it is read, and a snapshot has the
// same id in both (tidemark copy keeps it): a restore that loses its first
// repository halfway carries on from the second with the blobs it has not
// read yet.
//
// It falls back only when the first store is unreachable: a blob or
// snapshot the first lacks, or one that fails a check, is an answer, not a
// reason to look elsewhere (that would hide damage). It never switches
// back within a run.
type Failover struct {
	first *Repo
	// openSecond opens the second repository the first time it is needed.
	openSecond func(ctx context.Context) (*Repo, error)
	log        *slog.Logger

	mu     sync.Mutex
	second *Repo // set once opened
	active *Repo
	cause  error // why the first was given up
}

// NewFailover returns a reader of first that falls back to the repository
// openSecond opens (nil: none). openSecond is called at most once
// successfully, when the first becomes unreachable; the repository it
// returns must share first's master secret (CheckSharedSecret), or the
// fallback is refused. Either argument may be nil for a run that starts
// with the first already unreachable: NewFailover(nil, open) reads the
// second from the start.
func NewFailover(first *Repo, openSecond func(ctx context.Context) (*Repo, error), log *slog.Logger) *Failover {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Failover{first: first, openSecond: openSecond, log: log, active: first}
}

// FailoverTo returns a Failover that reads second from the start, for a run
// whose first repository could not even be opened; cause is why.
func FailoverTo(second *Repo, cause error, log *slog.Logger) *Failover {
	f := NewFailover(nil, nil, log)
	f.second, f.active, f.cause = second, second, cause
	return f
}

// Active returns the repository reads go to now.
func (f *Failover) Active() *Repo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.active
}

// FailedOver returns why the first repository was given up, or nil while
// it is in use.
func (f *Failover) FailedOver() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cause
}

// Close closes both repositories.
func (f *Failover) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first != nil {
		f.first.Close()
	}
	if f.second != nil {
		f.second.Close()
	}
	return nil
}

// switchOver makes the second repository the active one after r failed
// with err, and returns it; it returns nil (and err stands) when there is
// no second repository, r was not the first, or the failure says nothing
// about reaching the store.
func (f *Failover) switchOver(ctx context.Context, r *Repo, err error) *Repo {
	if err == nil || ctx.Err() != nil || !storage.IsUnavailable(err) {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.active != r || r != f.first {
		// Another call switched meanwhile: go on with what is active now.
		if f.active != r {
			return f.active
		}
		return nil
	}
	if f.second == nil {
		if f.openSecond == nil {
			return nil
		}
		second, oerr := f.openSecond(ctx)
		if oerr != nil {
			f.log.Error("the first repository is unreachable and the second cannot be opened",
				"first", f.first.store.String(), "err", err, "second_err", oerr)
			return nil
		}
		if cerr := f.first.CheckSharedSecret(second); cerr != nil {
			second.Close()
			f.log.Error("the first repository is unreachable and the second cannot stand in for it", "err", cerr)
			return nil
		}
		f.second = second
	}
	f.active, f.cause = f.second, err
	f.log.Warn("repository unreachable: reading from the second repository from now on",
		"first", f.first.store.String(), "second", f.second.store.String(), "err", err)
	return f.second
}

// Do runs fn on the active repository and, when that was the first one and
// it is unreachable, once more on the second. Readers of other objects of
// the repository (the WAL archive) fall back through it, so that one
// switch covers every read of a run.
func (f *Failover) Do(ctx context.Context, fn func(r *Repo) error) error {
	r := f.Active()
	err := fn(r)
	if r2 := f.switchOver(ctx, r, err); r2 != nil {
		return f.fromSecond(fn(r2))
	}
	return err
}

// fromSecond says, on an error of the second repository right after the
// switch, where it came from: "blob X is not in the index" means something
// else there (the second has not been copied that far) than in the first.
func (f *Failover) fromSecond(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("in the second repository %s (the first is unreachable): %w", f.Active().store, err)
}

// Snapshots lists the snapshots of the active repository (see Repo.Snapshots).
func (f *Failover) Snapshots(ctx context.Context, cluster uint64) ([]*Snapshot, error) {
	var out []*Snapshot
	err := f.Do(ctx, func(r *Repo) (err error) {
		out, err = r.Snapshots(ctx, cluster)
		return err
	})
	return out, err
}

// LoadSnapshot reads one snapshot (see Repo.LoadSnapshot).
func (f *Failover) LoadSnapshot(ctx context.Context, cluster uint64, id string) (*Snapshot, error) {
	var out *Snapshot
	err := f.Do(ctx, func(r *Repo) (err error) {
		out, err = r.LoadSnapshot(ctx, cluster, id)
		return err
	})
	return out, err
}

// Lookup returns where a blob is stored in the active repository. Its
// kind and lengths are the same in both.
func (f *Failover) Lookup(ctx context.Context, id blob.ID) (index.Location, error) {
	var loc index.Location
	err := f.Do(ctx, func(r *Repo) (err error) {
		loc, err = r.Lookup(ctx, id)
		return err
	})
	return loc, err
}

// BlobID returns a blob's ID, the same in both repositories.
func (f *Failover) BlobID(k blob.Kind, data []byte) blob.ID { return f.Active().BlobID(k, data) }

// ReadBlob reads one blob (see Repo.ReadBlob).
func (f *Failover) ReadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	n := len(buf)
	err := f.Do(ctx, func(r *Repo) (err error) {
		buf, err = r.ReadBlob(ctx, id, buf[:n])
		return err
	})
	return buf, err
}

// callerError carries an error of the caller's fn through ReadBlobs, so
// that it is never taken for the store's.
type callerError struct{ err error }

func (e *callerError) Error() string { return e.err.Error() }

// ReadBlobs reads many blobs (see Repo.ReadBlobs). When the first
// repository becomes unreachable partway, the blobs fn has not yet been
// given are read from the second: fn sees each blob once.
func (f *Failover) ReadBlobs(ctx context.Context, ids []blob.ID, fn func(id blob.ID, data []byte) error) error {
	r := f.Active()
	var mu sync.Mutex
	done := make(map[blob.ID]struct{})
	err := r.ReadBlobs(ctx, ids, func(id blob.ID, data []byte) error {
		if err := fn(id, data); err != nil {
			return &callerError{err}
		}
		mu.Lock()
		done[id] = struct{}{}
		mu.Unlock()
		return nil
	})
	var ce *callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	r2 := f.switchOver(ctx, r, err)
	if r2 == nil {
		return err
	}
	rest := make([]blob.ID, 0, len(ids)-len(done))
	for _, id := range ids {
		if _, ok := done[id]; !ok {
			rest = append(rest, id)
		}
	}
	return f.fromSecond(r2.ReadBlobs(ctx, rest, fn))
}

// AcquireLease takes a lease in the active repository.
func (f *Failover) AcquireLease(ctx context.Context, scope string, opts lease.Options) (*lease.Lease, error) {
	var l *lease.Lease
	err := f.Do(ctx, func(r *Repo) (err error) {
		l, err = r.AcquireLease(ctx, scope, opts)
		return err
	})
	return l, err
}

// Store returns the active repository's store.
func (f *Failover) Store() storage.Store { return f.Active().Store() }

// Encrypt encrypts to the active repository's recipients.
func (f *Failover) Encrypt(dst io.Writer) (io.WriteCloser, error) { return f.Active().Encrypt(dst) }

// Decrypt decrypts with the active repository's identities.
func (f *Failover) Decrypt(src io.Reader) (io.Reader, error) { return f.Active().Decrypt(src) }

// String names the repositories for messages.
func (f *Failover) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first == nil {
		return f.second.store.String()
	}
	if f.active == f.first {
		return f.first.store.String()
	}
	return fmt.Sprintf("%s (in place of %s)", f.active.store.String(), f.first.store.String())
}
