package repo

import (
	"errors"
	"fmt"

	"filippo.io/age/plugin"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/lease"
)

// Sentinel errors, matched with errors.Is. The typed errors below match them
// and carry the subject for the message.
var (
	// ErrNoIdentity: none of the given identities opens any key file.
	ErrNoIdentity = errors.New("no identity matches this repository's keys")
	// ErrNotRepository: the store has no config object.
	ErrNotRepository = errors.New("no repository")
	// ErrRepositoryExists: init found a config object.
	ErrRepositoryExists = errors.New("repository already exists")
	// ErrUnsupportedVersion: an object was written by a newer format.
	ErrUnsupportedVersion = errors.New("unsupported repository format version")
	// ErrCorrupt: an object failed a check (authentication, keyed ID,
	// layout) or is missing or truncated although the index refers to it.
	ErrCorrupt = errors.New("corrupt object")
	// ErrBlobNotFound: the index knows no such blob.
	ErrBlobNotFound = errors.New("blob not in the index")
	// ErrNotDurable: Commit found a snapshot root that is not in the index.
	ErrNotDurable = errors.New("snapshot refers to a blob that is not durable")
	// ErrLastKey: removing the only key is refused.
	ErrLastKey = errors.New("refusing to remove the last key")
	// ErrWriterClosed: the writer was committed, closed or aborted.
	ErrWriterClosed = errors.New("writer is closed")
	// ErrSecretMismatch: a second repository does not share the first
	// one's master secret.
	ErrSecretMismatch = errors.New("repositories do not share a master secret")
)

// LockedError is returned when a conflicting lease is held; it names the
// holder. It is lease.LockedError.
type LockedError = lease.LockedError

// NoIdentityError says that no identity opened any of the repository's keys.
type NoIdentityError struct {
	URL  string // the store
	Keys int    // key files tried
	// Err is why an identity that might have fitted could not be tried
	// (an age plugin that is not installed, or that failed), if any.
	Err error
}

func (e *NoIdentityError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s at %s (%d keys tried): %v", ErrNoIdentity, e.URL, e.Keys, e.Err)
	}
	return fmt.Sprintf("%s at %s (%d keys tried): give the identity file (or passphrase) of one of the keys "+
		"listed by 'tidemark key list', or ask a key holder to run 'tidemark key add' for you", ErrNoIdentity, e.URL, e.Keys)
}

func (e *NoIdentityError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrNoIdentity, e.Err}
	}
	return []error{ErrNoIdentity}
}

// PluginMissingError says that the program of an age plugin that a key
// needs is not installed.
type PluginMissingError struct {
	Name string // the plugin's name: its program is age-plugin-<Name>
	Err  error
}

func (e *PluginMissingError) Error() string {
	return fmt.Sprintf("age plugin %q is not installed: tidemark runs its program age-plugin-%s, which is not in PATH "+
		"(install the plugin, or use another key)", e.Name, e.Name)
}

func (e *PluginMissingError) Unwrap() error { return e.Err }

// pluginError makes a missing plugin program's error a *PluginMissingError.
func pluginError(err error) error {
	var nf *plugin.NotFoundError
	if errors.As(err, &nf) {
		return &PluginMissingError{Name: nf.Name, Err: err}
	}
	return err
}

// NotRepositoryError says that there is no repository at URL.
type NotRepositoryError struct{ URL string }

func (e *NotRepositoryError) Error() string {
	return fmt.Sprintf("no repository at %s; run tidemark init", e.URL)
}

func (e *NotRepositoryError) Unwrap() error { return ErrNotRepository }

// ExistsError says that init found a repository.
type ExistsError struct{ URL string }

func (e *ExistsError) Error() string {
	return fmt.Sprintf("repository already exists at %s; use it as is, or choose another URL", e.URL)
}

func (e *ExistsError) Unwrap() error { return ErrRepositoryExists }

// SecretMismatchError says that the repository at URL, named as the second
// repository of the one at First, was initialized on its own.
type SecretMismatchError struct{ URL, First string }

func (e *SecretMismatchError) Error() string {
	return fmt.Sprintf("%s does not share the master secret of %s (it was initialized on its own, so blob IDs and WAL "+
		"MACs differ): create the second repository with 'tidemark init --repo2 URL --from-repo' against the first, "+
		"or unset repo2", e.URL, e.First)
}

func (e *SecretMismatchError) Unwrap() error { return ErrSecretMismatch }

// VersionError says that an object has a format version this build cannot read.
type VersionError struct {
	Key       string // object key
	Version   int    // found
	Supported int    // the newest this build reads
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("%s has format version %d, this tidemark reads up to %d; upgrade tidemark",
		e.Key, e.Version, e.Supported)
}

func (e *VersionError) Unwrap() error { return ErrUnsupportedVersion }

// CorruptError names an object that failed a check.
type CorruptError struct {
	Key string // object key
	Err error  // what failed
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s is corrupt: %v; run 'tidemark verify' to find what it affects "+
		"(and 'tidemark repair index' if the index is out of date)", e.Key, e.Err)
}

func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// BlobNotFoundError names a blob the index does not know.
type BlobNotFoundError struct{ ID blob.ID }

func (e *BlobNotFoundError) Error() string {
	return fmt.Sprintf("blob %s is not in the index; run 'tidemark repair index', then 'tidemark verify'", e.ID)
}

func (e *BlobNotFoundError) Unwrap() error { return ErrBlobNotFound }

func corrupt(key string, format string, args ...any) error {
	return &CorruptError{Key: key, Err: fmt.Errorf(format, args...)}
}
