// Package fs is the local-directory object store, tidemark's embedded default
// backend (repository URL file:///path). An object is a regular file whose
// path below the root is its key.
//
// Writes are crash-safe: an object is written to a temporary file in a
// directory List never looks into, fsynced, and only then moved to its name
// (rename for Put, link(2) for the create-only Create), after which the
// parent directory is fsynced. A crash, kill -9 or full disk therefore never
// leaves a half-written object visible; the temporary files such a crash
// leaves behind are removed by the next New on the same directory.
//
// Unlike S3, a key cannot both be an object and continue below it ("a" and
// "a/b"): writing the second fails with a permanent error. The repository
// format never does this.
//
// It is not a cache, a lock manager or a network file system client: it
// assumes a POSIX file system with working rename, link (or
// RENAME_NOREPLACE) and flock, as a local disk or a sane NFS mount provides.
// Empty directories are left in place after Delete: removing them would race
// with a concurrent Put into the same directory.
package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemarkdb/tidemark/storage"
)

// TempDirName is the directory below the root that holds objects being
// written. Keys whose first segment is this name are refused, and List never
// descends into it.
const TempDirName = ".tidemark-tmp"

// staleAge is how old an unlocked temporary file must be before New removes
// it. The flock held by every writer is the real guard; the age only closes
// the tiny window between creating a temporary file and locking it.
const staleAge = time.Minute

// copyBufSize is the buffer for copying object bodies: large enough that a
// 32 MiB pack takes few write(2) calls, small enough to not matter in memory.
const copyBufSize = 1 << 20

// Store is an object store in a local directory. It is safe for concurrent
// use, also by several processes sharing the directory.
type Store struct {
	root string // absolute, cleaned
	tmp  string // root/TempDirName
}

var _ storage.Store = (*Store)(nil)

// New opens the store rooted at dir, creating the directory if needed, and
// removes temporary files left behind by writers that died.
func New(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open file store %s: %w", dir, err)
	}
	s := &Store{root: abs, tmp: filepath.Join(abs, TempDirName)}
	if err := os.MkdirAll(s.tmp, 0o777); err != nil {
		return nil, s.wrap("open", "", err)
	}
	if err := s.removeStale(staleAge); err != nil {
		return nil, err
	}
	return s, nil
}

// String returns the store's URL.
func (s *Store) String() string { return "file://" + s.root }

// Name is what String returns for a store opened on dir, known without
// opening it.
func Name(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("file store %s: %w", dir, err)
	}
	return "file://" + abs, nil
}

// Root returns the absolute directory the store lives in.
func (s *Store) Root() string { return s.root }

// removeStale deletes temporary files older than minAge that no live writer
// holds a lock on: those are left over from a crash or kill -9.
func (s *Store) removeStale(minAge time.Duration) error {
	entries, err := os.ReadDir(s.tmp)
	if err != nil {
		return s.wrap("open", TempDirName, err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < minAge {
			continue
		}
		p := filepath.Join(s.tmp, e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		// A writer holds LOCK_EX until it has moved or removed its file, so
		// getting the lock proves the writer is gone.
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			_ = os.Remove(p)
		}
		f.Close()
	}
	return nil
}

// checkKey refuses the keys every backend refuses (storage.CheckKey), and
// the directory of temporary files.
func checkKey(op, key string) error {
	bad := func(why string) error {
		return &storage.Error{Op: op, Key: key, Err: permanent("invalid key", errors.New(why))}
	}
	if err := storage.CheckKey(key); err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	if first, _, _ := strings.Cut(key, "/"); first == TempDirName {
		return bad(TempDirName + " is reserved for temporary files")
	}
	return nil
}

func (s *Store) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

// wrap turns an OS error into a *storage.Error. Full disks and permission
// problems are permanent and say what to do; everything else that a local
// file system reports is not worth retrying either, except the few errors a
// network file system gives for a passing outage.
func (s *Store) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var (
		errno syscall.Errno
		src   *sourceError
	)
	if errors.As(err, &src) || !errors.As(err, &errno) {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	switch errno {
	case syscall.ENOENT:
		if op == "put" || op == "create" {
			// A directory vanished under a write (a concurrent cleanup);
			// trying again recreates it.
			return &storage.Error{Op: op, Key: key, Err: err, Transient: true}
		}
		return &storage.Error{Op: op, Key: key, Err: storage.ErrNotFound}
	case syscall.ENOTDIR:
		if op != "put" && op != "create" {
			// The path runs through an object ("a" for key "a/b"): no
			// such object, as S3 would say.
			return &storage.Error{Op: op, Key: key, Err: storage.ErrNotFound}
		}
		return &storage.Error{Op: op, Key: key, Err: permanent(
			"a prefix of the key is itself an object in "+s.root+", which a file system cannot also hold as a directory", err)}
	case syscall.ENOSPC, syscall.EDQUOT:
		return &storage.Error{Op: op, Key: key, Err: permanent(
			"disk full on the file system holding "+s.root+"; free space or move the repository", err)}
	case syscall.EACCES, syscall.EPERM:
		return &storage.Error{Op: op, Key: key, Err: permanent(
			"permission denied in "+s.root+"; run as the user that owns the repository or fix its permissions", err)}
	case syscall.EROFS:
		return &storage.Error{Op: op, Key: key, Err: permanent(s.root+" is on a read-only file system", err)}
	case syscall.EISDIR, syscall.ENAMETOOLONG, syscall.EINVAL:
		return &storage.Error{Op: op, Key: key, Err: permanent("unusable path in "+s.root, err)}
	case syscall.ETIMEDOUT, syscall.EAGAIN, syscall.EINTR, syscall.ESTALE, syscall.EIO:
		// What NFS returns while its server is away; a local EIO is a
		// failing disk, which the bounded retry reports soon enough.
		return &storage.Error{Op: op, Key: key, Err: err, Transient: true}
	}
	return &storage.Error{Op: op, Key: key, Err: err}
}

// permanent is a failure that matches storage.ErrPermanent and reads as the
// advice followed by the system's own words.
func permanent(advice string, cause error) error { return &permError{advice, cause} }

type permError struct {
	advice string
	cause  error
}

func (e *permError) Error() string   { return e.advice + ": " + e.cause.Error() }
func (e *permError) Unwrap() []error { return []error{storage.ErrPermanent, e.cause} }

// Put writes the object through a temporary file and renames it into place.
func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.write(ctx, "put", key, r, size, os.Rename)
}

// Create writes the object through a temporary file and links it to its
// name, which fails if the name exists: of two racing Creates exactly one
// wins, and the loser never touches the winner's object.
func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.write(ctx, "create", key, r, size, linkNoReplace)
}

// linkNoReplace publishes tmp under final unless final exists. link(2) is
// the portable way; file systems without hard links get renameat2 with
// RENAME_NOREPLACE.
func linkNoReplace(tmp, final string) error {
	err := os.Link(tmp, final)
	if err == nil || errors.Is(err, os.ErrExist) {
		return err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && (errno == syscall.EPERM || errno == syscall.ENOTSUP || errno == syscall.EOPNOTSUPP) {
		if rerr := renameNoReplace(tmp, final); rerr == nil || errors.Is(rerr, os.ErrExist) {
			return rerr
		}
	}
	return err
}

func (s *Store) write(ctx context.Context, op, key string, r io.ReaderAt, size int64,
	publish func(tmp, final string) error) error {
	if err := checkKey(op, key); err != nil {
		return err
	}
	if size < 0 {
		return &storage.Error{Op: op, Key: key, Err: permanent("invalid size", fmt.Errorf("%d is negative", size))}
	}
	if err := ctx.Err(); err != nil {
		return s.wrap(op, key, err)
	}
	tmp, f, err := s.createTemp()
	if err != nil {
		return s.wrap(op, key, err)
	}
	// From here on the temporary file is ours to remove, unless it was
	// renamed into place (then Remove fails harmlessly).
	defer os.Remove(tmp)
	err = writeBody(ctx, f, r, size)
	if cerr := f.Close(); err == nil {
		err = cerr // the lock is released here, after the data is durable
	}
	if err != nil {
		return s.wrap(op, key, err)
	}
	final := s.path(key)
	dir := filepath.Dir(final)
	if err := s.mkdirAll(dir); err != nil {
		return s.wrap(op, key, err)
	}
	if err := publish(tmp, final); err != nil {
		if errors.Is(err, os.ErrExist) {
			return &storage.Error{Op: op, Key: key, Err: storage.ErrExists}
		}
		return s.wrap(op, key, err)
	}
	return s.wrap(op, key, syncDir(dir))
}

// createTemp creates and locks a fresh temporary file.
func (s *Store) createTemp() (string, *os.File, error) {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	name := filepath.Join(s.tmp, fmt.Sprintf("%s-%d", hex.EncodeToString(rnd[:]), os.Getpid()))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if errors.Is(err, os.ErrNotExist) {
		// Someone removed the temp directory under us; recreate it once.
		if err = os.MkdirAll(s.tmp, 0o777); err == nil {
			f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		}
	}
	if err != nil {
		return "", nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		os.Remove(name)
		return "", nil, err
	}
	return name, f, nil
}

// writeBody copies exactly size bytes of r to f and makes them durable.
func writeBody(ctx context.Context, f *os.File, r io.ReaderAt, size int64) error {
	src := &ctxReader{ctx: ctx, r: io.NewSectionReader(r, 0, size)}
	n, err := io.CopyBuffer(f, src, make([]byte, min(size+1, copyBufSize)))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("short body: read %d of %d bytes", n, size)
	}
	return f.Sync()
}

// mkdirAll is os.MkdirAll that also fsyncs the parent of every directory it
// creates, so that a rename into a new directory survives a crash.
func (s *Store) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if dir == s.root || len(dir) <= len(s.root) {
		return os.MkdirAll(dir, 0o777)
	}
	parent := filepath.Dir(dir)
	if err := s.mkdirAll(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o777); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get opens the whole object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f, size, err := s.open(ctx, "get", key)
	if err != nil {
		return nil, err
	}
	return &body{ctx: ctx, f: f, r: io.NewSectionReader(f, 0, size), size: size, key: key, s: s}, nil
}

// GetRange opens length bytes of the object from off.
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	f, size, err := s.open(ctx, "get", key)
	if err != nil {
		return nil, err
	}
	if off < 0 || length < 0 || off > size || length > size-off {
		f.Close()
		return nil, &storage.Error{Op: "get", Key: key,
			Err: fmt.Errorf("bytes %d-%d of %d: %w", off, off+length, size, storage.ErrRange)}
	}
	return &body{ctx: ctx, f: f, r: io.NewSectionReader(f, off, length), size: length, key: key, s: s}, nil
}

func (s *Store) open(ctx context.Context, op, key string) (*os.File, int64, error) {
	if err := checkKey(op, key); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, s.wrap(op, key, err)
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, 0, s.wrap(op, key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, s.wrap(op, key, err)
	}
	if !fi.Mode().IsRegular() {
		// A directory is where keys continue, not an object.
		f.Close()
		return nil, 0, &storage.Error{Op: op, Key: key, Err: storage.ErrNotFound}
	}
	return f, fi.Size(), nil
}

// body is an object being read. It honours its context between reads and
// reports its length so a resuming reader can tell a short read.
type body struct {
	ctx  context.Context
	f    *os.File
	r    io.Reader
	size int64
	key  string
	s    *Store
}

func (b *body) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, b.s.wrap("get", b.key, err)
	}
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = b.s.wrap("get", b.key, err)
	}
	return n, err
}

func (b *body) Close() error { return b.f.Close() }

// Size is the number of bytes the body delivers in total.
func (b *body) Size() int64 { return b.size }

// Head returns the object's size and modification time.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("head", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, s.wrap("head", key, err)
	}
	fi, err := os.Stat(s.path(key))
	if err != nil {
		return storage.ObjectInfo{}, s.wrap("head", key, err)
	}
	if !fi.Mode().IsRegular() {
		return storage.ObjectInfo{}, &storage.Error{Op: "head", Key: key, Err: storage.ErrNotFound}
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete unlinks the objects and fsyncs their directories.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	dirs := make(map[string]bool)
	for _, key := range keys {
		if err := checkKey("delete", key); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return s.wrap("delete", key, err)
		}
		p := s.path(key)
		// unlink(2), not os.Remove: a key that names a directory must not
		// delete an empty directory.
		err := syscall.Unlink(p)
		switch {
		case err == nil:
			dirs[filepath.Dir(p)] = true
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR):
			// Not an object: nothing to delete.
		default:
			return s.wrap("delete", key, err)
		}
	}
	for dir := range dirs {
		if err := syncDir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return s.wrap("delete", strings.TrimPrefix(filepath.ToSlash(dir), filepath.ToSlash(s.root)+"/"), err)
		}
	}
	return nil
}

// List walks the tree depth first, reading one directory at a time, so
// memory grows with the size of a directory, not of the store. Entries are
// sorted as their keys sort: a directory "a" holds keys "a/...", so it is
// ordered as "a/" ('/' sorts after '-' and '.', so "a-c" < "a.b" < "a/b").
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		// The walk starts in the deepest directory the prefix names; the
		// rest of the prefix filters that directory's entries.
		dir, namePrefix := "", prefix
		if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
			dir, namePrefix = prefix[:i+1], prefix[i+1:]
			if checkKey("list", strings.TrimSuffix(dir, "/")) != nil {
				return // no key can start with an invalid path
			}
		}
		w := walker{s: s, ctx: ctx, startAfter: startAfter, yield: yield}
		w.walk(dir, namePrefix)
	}
}

type walker struct {
	s          *Store
	ctx        context.Context
	startAfter string
	yield      func(storage.ObjectInfo, error) bool
}

type dirEntry struct {
	sortKey string // the name, with "/" appended for a directory
	entry   os.DirEntry
}

// walk lists the directory rel ("" or ending in "/"), keeping only entries
// whose name starts with namePrefix. It returns false when listing must stop.
func (w *walker) walk(rel, namePrefix string) bool {
	entries, err := os.ReadDir(filepath.Join(w.s.root, filepath.FromSlash(rel)))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return true // a prefix no object has
		}
		return w.yield(storage.ObjectInfo{}, w.s.wrap("list", rel, err))
	}
	sorted := make([]dirEntry, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, namePrefix) || (rel == "" && name == TempDirName) {
			continue
		}
		if e.IsDir() {
			// Skip a directory when every key below it sorts before startAfter.
			dk := rel + name + "/"
			if w.startAfter >= dk && !strings.HasPrefix(w.startAfter, dk) {
				continue
			}
			sorted = append(sorted, dirEntry{name + "/", e})
		} else if e.Type().IsRegular() && rel+name > w.startAfter {
			sorted = append(sorted, dirEntry{name, e})
		}
	}
	entries = nil // let the unsorted copy go before descending
	slices.SortFunc(sorted, func(a, b dirEntry) int { return strings.Compare(a.sortKey, b.sortKey) })
	for _, d := range sorted {
		if err := w.ctx.Err(); err != nil {
			return w.yield(storage.ObjectInfo{}, w.s.wrap("list", rel, err))
		}
		if d.entry.IsDir() {
			if !w.walk(rel+d.sortKey, "") {
				return false
			}
			continue
		}
		fi, err := d.entry.Info()
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted while we listed
		}
		if err != nil {
			return w.yield(storage.ObjectInfo{}, w.s.wrap("list", rel+d.sortKey, err))
		}
		if !w.yield(storage.ObjectInfo{Key: rel + d.sortKey, Size: fi.Size(), ModTime: fi.ModTime()}, nil) {
			return false
		}
	}
	return true
}

// ctxReader stops a long copy when its context ends, and tells the
// caller's read errors from the store's write errors.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = &sourceError{err}
	}
	return n, err
}

// sourceError is a failure to read the caller's data: whatever its errno,
// it says nothing about the store.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "read the data to write: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }
