// Package gcs is the object store on Google Cloud Storage (and
// fake-gcs-server, its emulator), built on cloud.google.com/go/storage:
// objects in one bucket, under a key prefix.
//
// What it guarantees beyond the plain API:
//   - Every upload carries the CRC32C of its body, which the service checks
//     before it finalizes the object: a body damaged on the way is refused.
//   - Create is atomic through the DoesNotExist precondition
//     (ifGenerationMatch=0).
//   - Every failure is a *storage.Error naming the object, classified as
//     not found, range, exists, permanent (with a hint) or transient.
//
// Credentials come from Application Default Credentials
// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's user credentials, the metadata
// server), never from the URL. An http:// endpoint (an emulator on
// loopback) is used without credentials.
//
// It does not retry: the SDK's retries are switched off so that
// storage/retry is the only retry policy. It does not know tidemark's
// format.
package gcs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// Defaults for Options fields left zero.
const (
	// DefaultResumableThreshold: objects at least this large go up as a
	// resumable upload in chunks; smaller ones (packs, WAL segments) in
	// one request.
	DefaultResumableThreshold = 64 << 20
	// DefaultChunkSize is the chunk of a resumable upload (held in memory).
	DefaultChunkSize = 16 << 20
	deleteParallel   = 16
)

// Options say where the store is and how to talk to it.
type Options struct {
	Bucket string
	Prefix string // key prefix inside the bucket; "" or "a/b"
	// Endpoint is the service's base URL, "" for Google's. An emulator's:
	// http://127.0.0.1:4443.
	Endpoint string

	ResumableThreshold int64         // default DefaultResumableThreshold
	ChunkSize          int           // default DefaultChunkSize
	ListPageSize       int           // objects per list page; 0 is the service's (1000)
	StallTimeout       time.Duration // default driver.DefaultStallTimeout

	Logger *slog.Logger // nil discards
}

// Store is a bucket (and key prefix) as an object store. It is safe for
// concurrent use.
type Store struct {
	client *gcs.Client
	bkt    *gcs.BucketHandle
	prefix string // "" or ending in "/"
	opts   Options
	log    *slog.Logger
	name   string
}

var _ storage.Store = (*Store)(nil)

// Name is what String returns for a store opened with opts.
func Name(opts Options) string {
	name := "gs://" + opts.Bucket
	if p := strings.Trim(opts.Prefix, "/"); p != "" {
		name += "/" + p
	}
	if opts.Endpoint != "" {
		name += "?endpoint=" + opts.Endpoint
	}
	return name
}

// New makes a store. It does not contact the service.
func New(ctx context.Context, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		return nil, errors.New("gcs store: no bucket given")
	}
	if opts.ResumableThreshold <= 0 {
		opts.ResumableThreshold = DefaultResumableThreshold
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := driver.NewHTTPClient(nil, opts.StallTimeout, 0)
	copts := []option.ClientOption{gcs.WithJSONReads()}
	if opts.Endpoint != "" {
		u, err := url.Parse(opts.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("gcs store: endpoint %q is not an http:// or https:// URL", opts.Endpoint)
		}
		copts = append(copts, option.WithEndpoint(strings.TrimSuffix(opts.Endpoint, "/")+"/storage/v1/"))
		if u.Scheme == "http" {
			// No token goes over plain http: an emulator takes none.
			copts = append(copts, option.WithoutAuthentication(), option.WithHTTPClient(hc))
		}
	}
	if opts.Endpoint == "" || strings.HasPrefix(opts.Endpoint, "https:") {
		// Application Default Credentials over the tuned transport.
		tr, err := authTransport(ctx, hc.Transport)
		if err != nil {
			return nil, fmt.Errorf("gcs store: no Application Default Credentials (set GOOGLE_APPLICATION_CREDENTIALS, or run gcloud auth application-default login): %w", err)
		}
		copts = append(copts, option.WithHTTPClient(&http.Client{Transport: tr}))
	}
	c, err := gcs.NewClient(ctx, copts...)
	if err != nil {
		return nil, fmt.Errorf("gcs store: %w", err)
	}
	// One retry policy, storage/retry's; the SDK's would multiply it.
	c.SetRetry(gcs.WithPolicy(gcs.RetryNever))
	s := &Store{client: c, bkt: c.Bucket(opts.Bucket), prefix: strings.Trim(opts.Prefix, "/"), opts: opts, log: log, name: Name(opts)}
	if s.prefix != "" {
		s.prefix += "/"
	}
	return s, nil
}

// String returns gs://bucket/prefix.
func (s *Store) String() string { return s.name }

// Bucket returns the SDK's bucket handle, for tests that look behind the
// store.
func (s *Store) Bucket() *gcs.BucketHandle { return s.bkt }

func (s *Store) obj(key string) *gcs.ObjectHandle { return s.bkt.Object(s.prefix + key) }

func checkKey(op, key string) error { return driver.CheckKey(op, key) }

// Put writes the object, replacing any existing one.
func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.put(ctx, "put", key, r, size, false)
}

// Create writes the object only if the key is free, atomically.
func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.put(ctx, "create", key, r, size, true)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (s *Store) put(ctx context.Context, op, key string, r io.ReaderAt, size int64, create bool) error {
	if err := driver.CheckPut(ctx, op, key, size); err != nil {
		return err
	}
	h := crc32.New(castagnoli)
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return driver.SourceError(ctx, op, key, err)
	}
	o := s.obj(key)
	if create {
		o = o.If(gcs.Conditions{DoesNotExist: true})
	}
	// Cancelling the writer's context is how an upload is abandoned: the
	// object is never finalized.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := o.NewWriter(wctx)
	w.CRC32C, w.SendCRC32C = h.Sum32(), true
	w.ContentType = "application/octet-stream"
	w.ChunkSize = 0 // one request
	if size >= s.opts.ResumableThreshold {
		w.ChunkSize = s.opts.ChunkSize
	}
	src := driver.NewSource(r, 0, size)
	if _, err := io.Copy(w, src); err != nil {
		cancel()
		w.Close()
		if f := src.Failure(); f != nil {
			return driver.SourceError(ctx, op, key, f)
		}
		return s.classify(ctx, op, key, err)
	}
	if err := w.Close(); err != nil {
		return s.classify(ctx, op, key, err)
	}
	return nil
}

// Get opens the whole object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	rd, err := s.obj(key).NewReader(ctx)
	if err != nil {
		return nil, s.classify(ctx, "get", key, err)
	}
	return s.body(ctx, key, rd, rd.Remain()), nil
}

// GetRange opens length bytes from off; a range past the end is ErrRange
// (the service would answer with what there is).
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	rangeErr := func(size string) error { return driver.RangeError(key, off, length, size) }
	if off < 0 || length < 0 {
		return nil, rangeErr("the object")
	}
	if length == 0 {
		info, err := s.Head(ctx, key)
		if err != nil {
			return nil, driver.RenameOp(err, "get")
		}
		if off > info.Size {
			return nil, rangeErr(fmt.Sprint(info.Size))
		}
		return s.body(ctx, key, io.NopCloser(bytes.NewReader(nil)), 0), nil
	}
	rd, err := s.obj(key).NewRangeReader(ctx, off, length)
	if err != nil {
		err = s.classify(ctx, "get", key, err)
		if errors.Is(err, storage.ErrRange) {
			return nil, rangeErr("the object")
		}
		return nil, err
	}
	if rd.Remain() != length || rd.Attrs.StartOffset != off {
		rd.Close()
		return nil, rangeErr(fmt.Sprint(rd.Attrs.Size))
	}
	return s.body(ctx, key, rd, length), nil
}

// Head returns the object's size and modification time.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("head", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	a, err := s.obj(key).Attrs(ctx)
	if err != nil {
		return storage.ObjectInfo{}, s.classify(ctx, "head", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: a.Size, ModTime: a.Updated}, nil
}

// List pages through the bucket's objects from startAfter on (StartOffset
// is inclusive, so it starts at the first key after it: startAfter+"\x00").
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		q := &gcs.Query{Prefix: s.prefix + prefix}
		if startAfter != "" {
			q.StartOffset = s.prefix + startAfter + "\x00"
		}
		if err := q.SetAttrSelection([]string{"Name", "Size", "Updated"}); err != nil {
			yield(storage.ObjectInfo{}, &storage.Error{Op: "list", Key: prefix, Err: err})
			return
		}
		it := s.bkt.Objects(ctx, q)
		if s.opts.ListPageSize > 0 {
			it.PageInfo().MaxSize = s.opts.ListPageSize
		}
		for {
			a, err := it.Next()
			if err == iterator.Done {
				return
			}
			if err != nil {
				yield(storage.ObjectInfo{}, s.classify(ctx, "list", prefix, err))
				return
			}
			key := strings.TrimPrefix(a.Name, s.prefix)
			if key <= startAfter {
				continue // a service that ignored StartOffset
			}
			if !yield(storage.ObjectInfo{Key: key, Size: a.Size, ModTime: a.Updated}, nil) {
				return
			}
		}
	}
}

// Delete removes the keys, several at a time.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for _, key := range keys {
		if err := checkKey("delete", key); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil && len(keys) > 0 {
		return &storage.Error{Op: "delete", Key: keys[0], Err: err}
	}
	return driver.ParallelEach(keys, deleteParallel, func(key string) error {
		err := s.classify(ctx, "delete", key, s.obj(key).Delete(ctx))
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		return nil
	})
}

// classify turns an SDK error into a *storage.Error.
func (s *Store) classify(ctx context.Context, op, key string, err error) error {
	return driver.Classify(ctx, op, key, err, func(err error) *driver.Cause { return s.describe(op, err) })
}

func (s *Store) describe(op string, err error) *driver.Cause {
	e := &driver.Cause{Err: err, Msg: err.Error()}
	if errors.Is(err, gcs.ErrObjectNotExist) {
		e.Msg, e.Sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
		return e
	}
	if errors.Is(err, gcs.ErrBucketNotExist) {
		e.Msg, e.Permanent = fmt.Sprintf("bucket %q does not exist: check the bucket name in the repository URL, or create the bucket", s.opts.Bucket), true
		return e
	}
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		var ue *url.Error
		if errors.As(err, &ue) {
			e.Msg = ue.Err.Error()
		}
		e.Permanent = !driver.NetTransient(err)
		return e
	}
	detail := fmt.Sprintf("HTTP %d", ge.Code)
	if ge.Message != "" {
		detail += ": " + ge.Message
	}
	switch c := ge.Code; {
	case c == http.StatusNotFound:
		if strings.Contains(strings.ToLower(ge.Message), "bucket") {
			e.Msg, e.Permanent = fmt.Sprintf("bucket %q does not exist: check the bucket name in the repository URL, or create the bucket (%s)", s.opts.Bucket, detail), true
		} else {
			e.Msg, e.Sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
		}
	case c == http.StatusRequestedRangeNotSatisfiable:
		e.Msg, e.Sentinel = "byte range outside the object ("+detail+")", storage.ErrRange
	case c == http.StatusPreconditionFailed && op == "create":
		e.Msg, e.Sentinel = storage.ErrExists.Error(), storage.ErrExists
	case c == http.StatusUnauthorized || c == http.StatusForbidden:
		e.Msg, e.Permanent = fmt.Sprintf("access to bucket %q denied: check the Application Default Credentials and the account's role on the bucket (%s)", s.opts.Bucket, detail), true
	case c == http.StatusBadRequest && strings.Contains(strings.ToLower(ge.Message), "checksum"):
		e.Msg = "the service received a body that does not match its checksum (" + detail + ")"
	case c >= 500 || c == http.StatusTooManyRequests || c == http.StatusRequestTimeout:
		e.Msg = detail
	default:
		e.Msg, e.Permanent = detail, true
	}
	return e
}

// body classifies the read errors of a response body.
func (s *Store) body(ctx context.Context, key string, rc io.ReadCloser, n int64) *driver.Body {
	return &driver.Body{RC: rc, N: n, Classify: func(err error) error { return s.classify(ctx, "get", key, err) }}
}
