// Package gcs is the object store on Google Cloud Storage (and
// fake-gcs-server, its emulator): objects in one bucket, under a key
// prefix, through the JSON API.
//
// It speaks the JSON API over net/http itself rather than through
// cloud.google.com/go/storage: that SDK's dependencies (gRPC, OpenTelemetry,
// protobuf registrations) cost every process about 100 ms of start-up,
// measured on this project's machines, and wal-push and wal-fetch start a
// process per WAL segment. Five requests are all tidemark needs.
//
// What it guarantees beyond the plain API:
//   - Every upload carries the CRC32C of its body in the object's metadata,
//     which the service checks before it creates the object: a body damaged
//     on the way is refused, never stored.
//   - Create is atomic through the ifGenerationMatch=0 precondition.
//   - Every failure is a *storage.Error naming the object, classified as
//     not found, range, exists, permanent (with a hint) or transient.
//
// Credentials come from Application Default Credentials
// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default login, the
// metadata server), never from the URL. An http:// endpoint (an emulator on
// loopback) is used without credentials.
//
// It does not retry (storage/retry does) and does not know tidemark's
// format.
package gcs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"iter"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// DefaultEndpoint is Google's.
const DefaultEndpoint = "https://storage.googleapis.com"

// deleteParallel is how many deletes run at once (the JSON API deletes one
// object per request).
const deleteParallel = 16

// Options say where the store is and how to talk to it.
type Options struct {
	Bucket string
	Prefix string // key prefix inside the bucket; "" or "a/b"
	// Endpoint is the service's base URL, "" for Google's. An emulator's:
	// http://127.0.0.1:4443.
	Endpoint string

	ListPageSize int           // objects per list page; 0 is the service's (1000)
	StallTimeout time.Duration // default driver.DefaultStallTimeout

	Logger *slog.Logger // nil discards
}

// Store is a bucket (and key prefix) as an object store. It is safe for
// concurrent use.
type Store struct {
	hc       *http.Client
	base     string // endpoint without a trailing slash
	bucket   string
	prefix   string // "" or ending in "/"
	opts     Options
	log      *slog.Logger
	name     string
	noBucket string // the hint for a missing bucket
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

// New makes a store. It does not contact the service, but finds the
// credentials (Application Default Credentials) unless the endpoint is
// plain http.
func New(ctx context.Context, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		return nil, errors.New("gcs store: no bucket given")
	}
	base := strings.TrimSuffix(opts.Endpoint, "/")
	if base == "" {
		base = DefaultEndpoint
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("gcs store: endpoint %q is not an http:// or https:// URL", opts.Endpoint)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := driver.NewHTTPClient(nil, opts.StallTimeout, 0)
	if u.Scheme == "https" {
		// No token goes over plain http: an emulator takes none.
		creds, err := google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/devstorage.read_write")
		if err != nil {
			return nil, fmt.Errorf("gcs store: no Application Default Credentials (set GOOGLE_APPLICATION_CREDENTIALS, or run gcloud auth application-default login): %w", err)
		}
		hc = &http.Client{Transport: &oauth2.Transport{Source: creds.TokenSource, Base: hc.Transport}}
	}
	s := &Store{hc: hc, base: base, bucket: opts.Bucket, prefix: strings.Trim(opts.Prefix, "/"), opts: opts, log: log, name: Name(opts),
		noBucket: fmt.Sprintf("bucket %q does not exist: check the bucket name in the repository URL, or create the bucket", opts.Bucket)}
	if s.prefix != "" {
		s.prefix += "/"
	}
	return s, nil
}

// String returns gs://bucket/prefix.
func (s *Store) String() string { return s.name }

// objectURL is the JSON API URL of an object's metadata (alt=media: its
// contents).
func (s *Store) objectURL(key string, q url.Values) string {
	u := s.base + "/storage/v1/b/" + url.PathEscape(s.bucket) + "/o/" + url.PathEscape(s.prefix+key)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

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

// put uploads the object in one multipart request: its metadata (name and
// CRC32C, which the service checks) and its body, streamed from r.
func (s *Store) put(ctx context.Context, op, key string, r io.ReaderAt, size int64, create bool) error {
	if err := driver.CheckPut(ctx, op, key, size); err != nil {
		return err
	}
	h := crc32.New(castagnoli)
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return driver.SourceError(ctx, op, key, err)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], h.Sum32())
	meta, _ := json.Marshal(map[string]string{"name": s.prefix + key, "crc32c": base64.StdEncoding.EncodeToString(sum[:]),
		"contentType": "application/octet-stream"})

	// multipart/related, built around the body so that it streams.
	var head, tail bytes.Buffer
	mw := multipart.NewWriter(&head)
	pw, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json; charset=UTF-8"}})
	pw.Write(meta)
	mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/octet-stream"}})
	fmt.Fprintf(&tail, "\r\n--%s--\r\n", mw.Boundary())
	src := driver.NewSource(r, 0, size)
	body := io.MultiReader(bytes.NewReader(head.Bytes()), src, bytes.NewReader(tail.Bytes()))

	q := url.Values{"uploadType": {"multipart"}, "fields": {"name"}}
	if create {
		q.Set("ifGenerationMatch", "0")
	}
	u := s.base + "/upload/storage/v1/b/" + url.PathEscape(s.bucket) + "/o?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	req.ContentLength = int64(head.Len()) + size + int64(tail.Len())
	req.Header.Set("Content-Type", "multipart/related; boundary="+mw.Boundary())
	resp, err := s.hc.Do(req)
	if f := src.Failure(); f != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return driver.SourceError(ctx, op, key, f)
	}
	if err != nil {
		return s.classify(ctx, op, key, err)
	}
	return s.check(ctx, op, key, resp, true)
}

// check turns a non-2xx answer into a *storage.Error and closes the body
// when done is set (or on failure).
func (s *Store) check(ctx context.Context, op, key string, resp *http.Response, done bool) error {
	if resp.StatusCode/100 == 2 {
		if done {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return s.classify(ctx, op, key, &apiError{status: resp.StatusCode, body: b})
}

// Get opens the whole object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	resp, err := s.do(ctx, "get", key, http.MethodGet, s.objectURL(key, url.Values{"alt": {"media"}}), "")
	if err != nil {
		return nil, err
	}
	return s.body(ctx, key, resp.Body, resp.ContentLength), nil
}

// GetRange opens length bytes from off; a range past the end is ErrRange
// (the service answers with what there is).
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	rangeErr := func(size string) error { return driver.RangeError(key, off, length, size) }
	if empty, err := driver.CheckRange(ctx, key, off, length, s.Head); err != nil || empty {
		if err != nil {
			return nil, err
		}
		return s.body(ctx, key, io.NopCloser(bytes.NewReader(nil)), 0), nil
	}
	resp, err := s.do(ctx, "get", key, http.MethodGet, s.objectURL(key, url.Values{"alt": {"media"}}),
		fmt.Sprintf("bytes=%d-%d", off, off+length-1))
	if err != nil {
		if errors.Is(err, storage.ErrRange) {
			return nil, rangeErr("the object")
		}
		return nil, err
	}
	if resp.ContentLength != length || (resp.StatusCode != http.StatusPartialContent && off != 0) {
		resp.Body.Close()
		total := "the object"
		if cr := resp.Header.Get("Content-Range"); cr != "" {
			total = cr[strings.LastIndexByte(cr, '/')+1:]
		}
		return nil, rangeErr(total)
	}
	return s.body(ctx, key, resp.Body, length), nil
}

// do sends a body-less request and returns a 2xx response, whose body the
// caller closes.
func (s *Store) do(ctx context.Context, op, key, method, u, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, &storage.Error{Op: op, Key: key, Err: err}
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, s.classify(ctx, op, key, err)
	}
	if err := s.check(ctx, op, key, resp, false); err != nil {
		return nil, err
	}
	return resp, nil
}

// objectJSON is what the JSON API says of an object (size is a string).
type objectJSON struct {
	Name    string    `json:"name"`
	Size    string    `json:"size"`
	Updated time.Time `json:"updated"`
}

func (s *Store) info(o objectJSON) (storage.ObjectInfo, error) {
	n, err := strconv.ParseInt(o.Size, 10, 64)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("object %s: size %q", o.Name, o.Size)
	}
	return storage.ObjectInfo{Key: strings.TrimPrefix(o.Name, s.prefix), Size: n, ModTime: o.Updated}, nil
}

// Head returns the object's size and modification time.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("head", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	resp, err := s.do(ctx, "head", key, http.MethodGet, s.objectURL(key, url.Values{"fields": {"name,size,updated"}}), "")
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	defer resp.Body.Close()
	var o objectJSON
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
		return storage.ObjectInfo{}, s.classify(ctx, "head", key, err)
	}
	info, err := s.info(o)
	if err != nil {
		return info, &storage.Error{Op: "head", Key: key, Err: &driver.Cause{Msg: err.Error(), Permanent: true}}
	}
	return info, nil
}

// List pages through the bucket's objects from startAfter on (startOffset
// is inclusive, so it starts at the first key after it: startAfter+"\x00").
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		q := url.Values{"prefix": {s.prefix + prefix}, "fields": {"items(name,size,updated),nextPageToken"}}
		if startAfter != "" {
			q.Set("startOffset", s.prefix+startAfter+"\x00")
		}
		if s.opts.ListPageSize > 0 {
			q.Set("maxResults", strconv.Itoa(s.opts.ListPageSize))
		}
		for {
			resp, err := s.do(ctx, "list", prefix, http.MethodGet, s.base+"/storage/v1/b/"+url.PathEscape(s.bucket)+"/o?"+q.Encode(), "")
			if err != nil {
				if errors.Is(err, storage.ErrNotFound) {
					err = &storage.Error{Op: "list", Key: prefix, Err: &driver.Cause{Msg: s.noBucket, Permanent: true}}
				}
				yield(storage.ObjectInfo{}, err)
				return
			}
			var page struct {
				Items         []objectJSON `json:"items"`
				NextPageToken string       `json:"nextPageToken"`
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err != nil {
				yield(storage.ObjectInfo{}, s.classify(ctx, "list", prefix, err))
				return
			}
			for _, o := range page.Items {
				info, err := s.info(o)
				if err != nil {
					yield(info, &storage.Error{Op: "list", Key: prefix, Err: &driver.Cause{Msg: err.Error(), Permanent: true}})
					return
				}
				if info.Key <= startAfter {
					continue // a service that ignored startOffset
				}
				if !yield(info, nil) {
					return
				}
			}
			if page.NextPageToken == "" {
				return
			}
			q.Set("pageToken", page.NextPageToken)
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
		resp, err := s.do(ctx, "delete", key, http.MethodDelete, s.objectURL(key, nil), "")
		if err == nil {
			resp.Body.Close()
		}
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		return nil
	})
}

// body classifies the read errors of a response body.
func (s *Store) body(ctx context.Context, key string, rc io.ReadCloser, n int64) *driver.Body {
	return &driver.Body{Ctx: ctx, RC: rc, N: n, Classify: func(err error) error { return s.classify(ctx, "get", key, err) }}
}

// apiError is an answer of the JSON API other than 2xx.
type apiError struct {
	status int
	body   []byte
}

func (e *apiError) Error() string {
	var v struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	msg := strings.TrimSpace(string(e.body))
	if json.Unmarshal(e.body, &v) == nil && v.Error.Message != "" {
		msg = v.Error.Message
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		return fmt.Sprintf("HTTP %d", e.status)
	}
	return fmt.Sprintf("HTTP %d: %s", e.status, msg)
}

// classify turns a failure into a *storage.Error.
func (s *Store) classify(ctx context.Context, op, key string, err error) error {
	return driver.Classify(ctx, op, key, err, func(err error) *driver.Cause { return s.describe(op, err) })
}

func (s *Store) describe(op string, err error) *driver.Cause {
	e := &driver.Cause{Err: err, Msg: err.Error()}
	var ae *apiError
	if !errors.As(err, &ae) {
		var ue *url.Error
		if errors.As(err, &ue) {
			e.Msg = ue.Err.Error()
		}
		var re *oauth2.RetrieveError
		switch {
		case errors.As(err, &re):
			e.Msg, e.Permanent = "Google refused the credentials: check Application Default Credentials ("+e.Msg+")", true
		case !driver.NetTransient(err):
			e.Permanent = true
		}
		return e
	}
	lower := strings.ToLower(string(ae.body))
	switch c := ae.status; {
	case c == http.StatusNotFound && strings.Contains(lower, "bucket") && !strings.Contains(lower, "object"):
		e.Msg, e.Permanent = s.noBucket+" ("+e.Msg+")", true
	case c == http.StatusNotFound:
		e.Msg, e.Sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
	case c == http.StatusRequestedRangeNotSatisfiable:
		e.Msg, e.Sentinel = "byte range outside the object ("+e.Msg+")", storage.ErrRange
	case c == http.StatusPreconditionFailed && op == "create":
		e.Msg, e.Sentinel = storage.ErrExists.Error(), storage.ErrExists
	case c == http.StatusUnauthorized || c == http.StatusForbidden:
		e.Msg, e.Permanent = fmt.Sprintf("access to bucket %q denied: check the Application Default Credentials and the account's role on the bucket (%s)", s.bucket, e.Msg), true
	case c == http.StatusBadRequest && strings.Contains(lower, "crc32c"):
		// Damaged in transit: sending it again may well work.
		e.Msg = "the service received a body that does not match its checksum (" + e.Msg + ")"
	case c >= 500 || c == http.StatusTooManyRequests || c == http.StatusRequestTimeout:
	default:
		e.Permanent = true
	}
	return e
}
