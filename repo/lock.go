package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/repo/keys"
	"github.com/tidemarkdb/tidemark/storage"
)

// Lock is the object lock of a repository (Config.Lock): every object
// LockCovers names is written so that nobody can delete or overwrite it
// for Period after it was written, not even with the repository's own
// credentials (compliance mode) or without a permission to bypass the
// lock (governance mode). A repository is locked from init on or never:
// the setting is in the config, which is written once.
type Lock struct {
	Mode string `json:"mode"` // storage.RetentionCompliance or storage.RetentionGovernance
	// PeriodSeconds is how long each object stays locked after its write.
	PeriodSeconds int64 `json:"period_seconds"`
}

// maxLockPeriod bounds the lock (100 years).
const maxLockPeriod = 100 * 365 * 24 * time.Hour

// Period is the lock's duration.
func (l *Lock) Period() time.Duration { return time.Duration(l.PeriodSeconds) * time.Second }

func (l *Lock) validate() error {
	if l.Mode != storage.RetentionCompliance && l.Mode != storage.RetentionGovernance {
		return fmt.Errorf("lock mode %q is neither compliance nor governance", l.Mode)
	}
	if l.PeriodSeconds <= 0 || l.Period() > maxLockPeriod || l.PeriodSeconds > int64(maxLockPeriod/time.Second) {
		return fmt.Errorf("lock period of %d seconds outside 1 second..100 years", l.PeriodSeconds)
	}
	return nil
}

// lockSlack is added to an object's lock when deciding whether it has
// passed: the retain-until date was computed from the writer's clock and
// is enforced by the store's, so a delete planned to the second could
// still be refused. A tenth of the period, at most an hour.
func (l *Lock) slack() time.Duration { return min(time.Hour, l.Period()/10) }

// walPrefix is walarchive.Prefix (which imports this package); a test
// there checks they agree.
const walPrefix = "wal/"

// LockCovers reports whether a locked repository locks the object key:
// everything a restore needs and nothing that must change. Covered are the
// config, key files, packs, index objects, snapshots and the WAL archive
// (segments, their block summaries, history files, the cluster marker);
// not covered are leases, garbage-collection quarantine records, the record
// of expired WAL, verify's state and drill reports, which are rewritten or
// deleted in the normal course.
func LockCovers(key string) bool {
	if key == ConfigKey {
		return true
	}
	for _, p := range []string{keys.Prefix, "data/", "meta/", indexPrefix, SnapshotPrefix, walPrefix} {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// retainer is the optional capability of a store to keep objects under a
// retention lock (storage.Retention); the S3 driver has it, through
// storage/retry.
type retainer interface {
	CheckRetention(ctx context.Context) error
	WithRetention(r storage.Retention) (storage.Store, error)
}

// lockedStore returns the view of store that writes covered keys under l.
func lockedStore(store storage.Store, l *Lock, now func() time.Time) (storage.Store, error) {
	rt, ok := store.(retainer)
	if !ok {
		return nil, fmt.Errorf("the repository at %s is locked (object lock, %s mode), and this store cannot lock objects", store, l.Mode)
	}
	return rt.WithRetention(storage.Retention{Mode: l.Mode, Period: l.Period(), Covers: LockCovers, Now: now})
}

// checkLockable says whether store can hold a locked repository.
func checkLockable(ctx context.Context, store storage.Store) error {
	rt, ok := store.(retainer)
	if !ok {
		return fmt.Errorf("%s cannot lock objects against deletion: object lock needs an s3:// repository in a bucket with S3 Object Lock", store)
	}
	return rt.CheckRetention(ctx)
}

// Lock returns the repository's object lock, nil when it has none.
func (r *Repo) Lock() *Lock { return r.cfg.Lock }

// LockedUntil returns when the lock of the object key, last written at
// mod (as a listing or Head reports it), has surely passed: the zero time
// for an object the repository does not lock. Expire and gc never try to
// delete an object before then; they leave it for a later run.
func (r *Repo) LockedUntil(key string, mod time.Time) time.Time {
	l := r.cfg.Lock
	if l == nil || !LockCovers(key) {
		return time.Time{}
	}
	return mod.Add(l.Period() + l.slack())
}

// StillLocked reports whether the object key, written at mod, may still be
// locked at now.
func (r *Repo) StillLocked(key string, mod, now time.Time) bool {
	u := r.LockedUntil(key, mod)
	return !u.IsZero() && now.Before(u)
}

// IsLocked reports a delete the store refused because of the lock.
func IsLocked(err error) bool { return errors.Is(err, storage.ErrLocked) }

// versionRestorer is the optional capability of a store that keeps object
// versions (an S3 bucket with object lock) to bring back the original of
// an object that was deleted or overwritten.
type versionRestorer interface {
	RestoreOriginals(ctx context.Context, covers func(key string) bool) (restored, lost []string, err error)
}

// RestoreOriginals brings back every object of a locked repository that
// someone deleted or overwrote (each was written once, so its oldest
// version is the original): the recovery after an attacker with the
// repository's credentials tried to destroy it. It works on the store
// alone, since the config and key files may be hidden too. restored are
// the keys brought back, lost those with no version left.
func RestoreOriginals(ctx context.Context, store storage.Store) (restored, lost []string, err error) {
	vr, ok := store.(versionRestorer)
	if !ok {
		return nil, nil, fmt.Errorf("%s keeps no object versions to restore from: only an s3:// repository in a bucket with object lock does", store)
	}
	return vr.RestoreOriginals(ctx, LockCovers)
}
