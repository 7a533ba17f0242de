// Package mem is an in-process object store for unit tests of tidemark's own
// logic. It is not a backend users can choose: tests that exercise storage
// behaviour run against storage/fs and real S3 servers. It passes the same
// conformance suite (storage/storagetest) as they do.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"iter"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
)

// Store keeps objects in a map. The zero value is not usable; call New.
type Store struct {
	mu   sync.Mutex
	objs map[string]object
}

type object struct {
	data    []byte
	modTime time.Time
}

// New returns an empty store.
func New() *Store { return &Store{objs: make(map[string]object)} }

func (s *Store) String() string { return "mem://" }

func read(r io.ReaderAt, size int64) ([]byte, error) {
	buf := make([]byte, size)
	if _, err := r.ReadAt(buf, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return buf, nil
}

func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	if err := check(ctx, "put", key); err != nil {
		return err
	}
	buf, err := read(r, size)
	if err != nil {
		return &storage.Error{Op: "put", Key: key, Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objs[key] = object{buf, time.Now()}
	return nil
}

func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	if err := check(ctx, "create", key); err != nil {
		return err
	}
	buf, err := read(r, size)
	if err != nil {
		return &storage.Error{Op: "create", Key: key, Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objs[key]; ok {
		return &storage.Error{Op: "create", Key: key, Err: storage.ErrExists}
	}
	s.objs[key] = object{buf, time.Now()}
	return nil
}

func (s *Store) lookup(op, key string) (object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[key]
	if !ok {
		return object{}, &storage.Error{Op: op, Key: key, Err: storage.ErrNotFound}
	}
	return o, nil
}

func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := check(ctx, "get", key); err != nil {
		return nil, err
	}
	o, err := s.lookup("get", key)
	if err != nil {
		return nil, err
	}
	return &reader{ctx: ctx, r: bytes.NewReader(o.data)}, nil
}

func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := check(ctx, "get", key); err != nil {
		return nil, err
	}
	o, err := s.lookup("get", key)
	if err != nil {
		return nil, err
	}
	if off < 0 || length < 0 || off+length > int64(len(o.data)) {
		return nil, &storage.Error{Op: "get", Key: key,
			Err: fmt.Errorf("bytes %d-%d of %d: %w", off, off+length, len(o.data), storage.ErrRange)}
	}
	return &reader{ctx: ctx, r: bytes.NewReader(o.data[off : off+length])}, nil
}

func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := check(ctx, "head", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	o, err := s.lookup("head", key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	return storage.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		s.mu.Lock()
		var infos []storage.ObjectInfo
		for k, o := range s.objs {
			if strings.HasPrefix(k, prefix) && k > startAfter {
				infos = append(infos, storage.ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
			}
		}
		s.mu.Unlock()
		slices.SortFunc(infos, func(a, b storage.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
		for _, info := range infos {
			if err := ctx.Err(); err != nil {
				yield(storage.ObjectInfo{}, err)
				return
			}
			if !yield(info, nil) {
				return
			}
		}
	}
}

func (s *Store) Delete(ctx context.Context, keys ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := storage.CheckKey(k); err != nil {
			return &storage.Error{Op: "delete", Key: k, Err: err}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		delete(s.objs, k)
	}
	return nil
}

// check refuses a call whose context ended or whose key no backend takes.
func check(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := storage.CheckKey(key); err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	return nil
}

// reader ends a read when its context does, as a network body would.
type reader struct {
	ctx context.Context
	r   *bytes.Reader
}

func (r *reader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *reader) Close() error { return nil }

// Corrupt flips one bit of a stored object, for tests of corruption
// detection. It reports whether the object exists.
func (s *Store) Corrupt(key string, off int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[key]
	if !ok || off >= len(o.data) {
		return false
	}
	data := slices.Clone(o.data)
	data[off] ^= 0x01
	s.objs[key] = object{data, o.modTime}
	return true
}
