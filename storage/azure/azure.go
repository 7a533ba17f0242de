// Package azure is the object store on Azure Blob Storage (and Azurite,
// its emulator), built on the azblob SDK: block blobs in one container,
// under a key prefix.
//
// What it guarantees beyond the plain API:
//   - Every upload carries the MD5 of its body (of each block for large
//     objects), which the service verifies: a body damaged on the way is
//     refused, never stored.
//   - Create is atomic through If-None-Match: * on Put Blob and on Put Block
//     List; blocks are staged under IDs unique to the upload, so two writers
//     racing for one name never mix their blocks.
//   - Every failure is a *storage.Error naming the object, classified as
//     not found, range, exists, permanent (with a hint) or transient.
//
// Credentials never come from the URL: a shared key
// (AZURE_STORAGE_KEY), a SAS token (AZURE_STORAGE_SAS_TOKEN), or else the
// SDK's default chain (environment service principal, workload identity,
// managed identity, Azure CLI).
//
// It does not retry: the SDK's retries are switched off so that
// storage/retry is the only retry policy. It does not know tidemark's
// format.
package azure

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// Defaults for Options fields left zero.
const (
	// DefaultBlockThreshold: objects at least this large go up as staged
	// blocks. Packs (about 32 MiB) and WAL segments (16 MiB) take one Put
	// Blob, one request.
	DefaultBlockThreshold = 64 << 20
	// DefaultBlockSize is the size of each staged block but the last.
	DefaultBlockSize = 16 << 20
	// DefaultBlockConcurrency is how many blocks of one object go up at once.
	DefaultBlockConcurrency = 4
	// deleteParallel is how many deletes run at once (Azure has no
	// multi-object delete outside the batch API, which Azurite lacks).
	deleteParallel = 16
)

// Options say where the store is and how to talk to it.
type Options struct {
	Account   string // storage account name
	Container string
	Prefix    string // key prefix inside the container; "" or "a/b"
	// Endpoint is the blob service URL; "" means
	// https://<account>.blob.core.windows.net. Azurite's is
	// http://127.0.0.1:10000/<account>.
	Endpoint string

	// Credentials: at most one of SharedKey and SASToken; neither means
	// the SDK's default credential chain.
	SharedKey string
	SASToken  string

	BlockThreshold   int64         // default DefaultBlockThreshold
	BlockSize        int64         // default DefaultBlockSize
	BlockConcurrency int           // default DefaultBlockConcurrency
	ListPageSize     int32         // blobs per list page; 0 is the service's (5000)
	StallTimeout     time.Duration // default driver.DefaultStallTimeout

	Logger *slog.Logger // nil discards
}

// Store is a container (and key prefix) as an object store. It is safe for
// concurrent use.
type Store struct {
	c      *container.Client
	prefix string // "" or ending in "/"
	opts   Options
	log    *slog.Logger
	name   string
}

var _ storage.Store = (*Store)(nil)

// Name is what String returns for a store opened with opts.
func Name(opts Options) string {
	name := "azure://" + opts.Container
	if p := strings.Trim(opts.Prefix, "/"); p != "" {
		name += "/" + p
	}
	name += "?account=" + opts.Account
	if opts.Endpoint != "" {
		name += "&endpoint=" + opts.Endpoint
	}
	return name
}

// New makes a store. It does not contact the service: a wrong container or
// credential shows in the first request, as a permanent error with a hint.
func New(ctx context.Context, opts Options) (*Store, error) {
	if opts.Account == "" || opts.Container == "" {
		return nil, errors.New("azure store: account and container are required")
	}
	if opts.SharedKey != "" && opts.SASToken != "" {
		return nil, errors.New("azure store: give a shared key or a SAS token, not both")
	}
	if opts.BlockThreshold <= 0 {
		opts.BlockThreshold = DefaultBlockThreshold
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.BlockConcurrency <= 0 {
		opts.BlockConcurrency = DefaultBlockConcurrency
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	endpoint := opts.Endpoint
	if endpoint == "" {
		endpoint = "https://" + opts.Account + ".blob.core.windows.net"
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("azure store: endpoint %q is not an http:// or https:// URL", endpoint)
	}
	cURL := strings.TrimSuffix(endpoint, "/") + "/" + url.PathEscape(opts.Container)
	copts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: driver.NewHTTPClient(nil, opts.StallTimeout, 0),
		// One retry policy, storage/retry's; the SDK's would multiply it.
		Retry:     policy.RetryOptions{MaxRetries: -1},
		Telemetry: policy.TelemetryOptions{Disabled: true},
		Logging:   policy.LogOptions{IncludeBody: false},
	}}
	var c *container.Client
	switch {
	case opts.SharedKey != "":
		cred, err := container.NewSharedKeyCredential(opts.Account, opts.SharedKey)
		if err != nil {
			return nil, fmt.Errorf("azure store: shared key: %w (check AZURE_STORAGE_KEY)", err)
		}
		c, err = container.NewClientWithSharedKeyCredential(cURL, cred, copts)
		if err != nil {
			return nil, fmt.Errorf("azure store: %w", err)
		}
	case opts.SASToken != "":
		c, err = container.NewClientWithNoCredential(cURL+"?"+strings.TrimPrefix(opts.SASToken, "?"), copts)
		if err != nil {
			return nil, fmt.Errorf("azure store: %w", err)
		}
	default:
		cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: azcore.ClientOptions{Transport: copts.Transport}})
		if err != nil {
			return nil, fmt.Errorf("azure store: no credentials: set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or configure the Azure default credential chain: %w", err)
		}
		c, err = container.NewClient(cURL, cred, copts)
		if err != nil {
			return nil, fmt.Errorf("azure store: %w", err)
		}
	}
	s := &Store{c: c, prefix: strings.Trim(opts.Prefix, "/"), opts: opts, log: log, name: Name(opts)}
	if s.prefix != "" {
		s.prefix += "/"
	}
	return s, nil
}

// String returns azure://container/prefix?account=...
func (s *Store) String() string { return s.name }

// Client returns the container client, for tests that look behind the store.
func (s *Store) Client() *container.Client { return s.c }

func (s *Store) blob(key string) *blockblob.Client { return s.c.NewBlockBlobClient(s.prefix + key) }

func checkKey(op, key string) error { return driver.CheckKey(op, key) }

// Put writes the object, replacing any existing one.
func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.put(ctx, "put", key, r, size, false)
}

// Create writes the object only if the key is free, atomically.
func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.put(ctx, "create", key, r, size, true)
}

func (s *Store) put(ctx context.Context, op, key string, r io.ReaderAt, size int64, create bool) error {
	if err := driver.CheckPut(ctx, op, key, size); err != nil {
		return err
	}
	var cond *blob.AccessConditions
	if create {
		cond = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: to.Ptr(azcore.ETagAny)}}
	}
	if size >= s.opts.BlockThreshold {
		if create {
			// Look first, so as not to stage many blocks only to be
			// refused at the commit, which stays the authority.
			if _, err := s.Head(ctx, key); err == nil {
				return s.exists(op, key)
			} else if !errors.Is(err, storage.ErrNotFound) {
				return driver.RenameOp(err, op)
			}
		}
		return s.putBlocks(ctx, op, key, r, size, cond)
	}
	sum, err := md5sum(r, 0, size)
	if err != nil {
		return driver.SourceError(ctx, op, key, err)
	}
	src := driver.NewSource(r, 0, size)
	_, err = s.blob(key).Upload(ctx, src, &blockblob.UploadOptions{
		TransactionalValidation: blob.TransferValidationTypeMD5(sum),
		AccessConditions:        cond,
	})
	if err != nil {
		if f := src.Failure(); f != nil {
			return driver.SourceError(ctx, op, key, f)
		}
		return s.classify(ctx, op, key, err)
	}
	return nil
}

// putBlocks stages the object in blocks, several at once, and commits the
// list. Uncommitted blocks of a failed upload are invisible, and the
// service drops them after a week.
func (s *Store) putBlocks(ctx context.Context, op, key string, r io.ReaderAt, size int64, cond *blob.AccessConditions) error {
	// Block IDs unique to this upload: two uploads of one name (a Create
	// race) stage into the same blob's uncommitted list.
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	type block struct {
		id       string
		off, len int64
	}
	var blocks []block
	for off := int64(0); off < size; off += s.opts.BlockSize {
		var raw [20]byte
		copy(raw[:], nonce[:])
		binary.BigEndian.PutUint32(raw[16:], uint32(len(blocks)))
		blocks = append(blocks, block{id: base64.StdEncoding.EncodeToString(raw[:]), off: off, len: min(s.opts.BlockSize, size-off)})
	}
	bc := s.blob(key)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err := driver.ParallelEach(blocks, s.opts.BlockConcurrency, func(b block) error {
		sum, err := md5sum(r, b.off, b.len)
		if err != nil {
			cancel()
			return driver.SourceError(ctx, op, key, err)
		}
		src := driver.NewSource(r, b.off, b.len)
		_, err = bc.StageBlock(ctx, b.id, src, &blockblob.StageBlockOptions{TransactionalValidation: blob.TransferValidationTypeMD5(sum)})
		if err != nil {
			cancel()
			if f := src.Failure(); f != nil {
				return driver.SourceError(ctx, op, key, f)
			}
			return s.classify(ctx, op, key, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	ids := make([]string, len(blocks))
	for i, b := range blocks {
		ids[i] = b.id
	}
	if _, err := bc.CommitBlockList(ctx, ids, &blockblob.CommitBlockListOptions{AccessConditions: cond}); err != nil {
		return s.classify(ctx, op, key, err)
	}
	return nil
}

func md5sum(r io.ReaderAt, off, n int64) ([]byte, error) {
	h := md5.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, off, n)); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func (s *Store) exists(op, key string) error {
	return &storage.Error{Op: op, Key: key, Err: &driver.Cause{Msg: storage.ErrExists.Error(), Sentinel: storage.ErrExists}}
}

// Get opens the whole object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	resp, err := s.blob(key).DownloadStream(ctx, nil)
	if err != nil {
		return nil, s.classify(ctx, "get", key, err)
	}
	return s.body(ctx, key, resp.Body, deref(resp.ContentLength)), nil
}

// GetRange opens length bytes from off. The service answers a range that
// runs past the end with what there is; the contract wants ErrRange, so the
// length of the answer is checked.
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
	resp, err := s.blob(key).DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: length}})
	if err != nil {
		err = s.classify(ctx, "get", key, err)
		if errors.Is(err, storage.ErrRange) {
			return nil, rangeErr("the object")
		}
		return nil, err
	}
	if n := deref(resp.ContentLength); n != length {
		resp.Body.Close()
		total := "the object"
		if cr := deref(resp.ContentRange); cr != "" {
			total = cr[strings.LastIndexByte(cr, '/')+1:]
		}
		return nil, rangeErr(total)
	}
	return s.body(ctx, key, resp.Body, length), nil
}

// Head returns the object's size and modification time.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("head", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	p, err := s.blob(key).GetProperties(ctx, nil)
	if err != nil {
		return storage.ObjectInfo{}, s.classify(ctx, "head", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: deref(p.ContentLength), ModTime: deref(p.LastModified)}, nil
}

// List pages through List Blobs. Azure has no "start after" but a
// StartFrom (inclusive) that newer service versions honour; keys up to
// startAfter are also skipped here, for services that ignore it.
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		o := &container.ListBlobsFlatOptions{Prefix: to.Ptr(s.prefix + prefix)}
		if s.opts.ListPageSize > 0 {
			o.MaxResults = to.Ptr(s.opts.ListPageSize)
		}
		if startAfter != "" {
			o.StartFrom = to.Ptr(s.prefix + startAfter)
		}
		pager := s.c.NewListBlobsFlatPager(o)
		for pager.More() {
			page, err := pager.NextPage(ctx)
			if err != nil {
				yield(storage.ObjectInfo{}, s.classify(ctx, "list", prefix, err))
				return
			}
			for _, it := range page.Segment.BlobItems {
				key := strings.TrimPrefix(deref(it.Name), s.prefix)
				if key <= startAfter {
					continue
				}
				info := storage.ObjectInfo{Key: key}
				if p := it.Properties; p != nil {
					info.Size, info.ModTime = deref(p.ContentLength), deref(p.LastModified)
				}
				if !yield(info, nil) {
					return
				}
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
		_, err := s.blob(key).Delete(ctx, nil)
		if err = s.classify(ctx, "delete", key, err); err != nil && !errors.Is(err, storage.ErrNotFound) {
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
	e := &driver.Cause{Err: err}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		e.Msg = err.Error()
		var ue *url.Error
		if errors.As(err, &ue) {
			e.Msg = ue.Err.Error()
		}
		if !driver.NetTransient(err) {
			e.Permanent = true
			var ae *azidentity.AuthenticationFailedError
			if errors.As(err, &ae) || strings.Contains(e.Msg, "DefaultAzureCredential") {
				e.Msg = "no usable Azure credential: set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or configure the Azure default credential chain (" + e.Msg + ")"
			}
		}
		return e
	}
	code, status := re.ErrorCode, re.StatusCode
	detail := code
	if detail == "" {
		detail = fmt.Sprintf("HTTP %d", status)
	}
	hint := func(h string) *driver.Cause {
		e.Msg, e.Permanent = h+" ("+detail+")", true
		return e
	}
	switch {
	case bloberror.HasCode(err, bloberror.BlobNotFound):
		e.Msg, e.Sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
	case bloberror.HasCode(err, bloberror.InvalidRange) || status == 416:
		e.Msg, e.Sentinel = "byte range outside the object ("+detail+")", storage.ErrRange
	case (op == "create") && (bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) || status == 412 || status == 409):
		e.Msg, e.Sentinel = storage.ErrExists.Error(), storage.ErrExists
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return hint(fmt.Sprintf("container %q does not exist in account %q: check the repository URL, or create the container", s.opts.Container, s.opts.Account))
	case bloberror.HasCode(err, bloberror.AuthenticationFailed, bloberror.AuthorizationFailure, bloberror.AuthorizationPermissionMismatch,
		bloberror.InsufficientAccountPermissions, bloberror.AuthorizationResourceTypeMismatch) || status == 403:
		return hint(fmt.Sprintf("access to container %q of account %q denied: check AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or the identity's role on the container", s.opts.Container, s.opts.Account))
	case bloberror.HasCode(err, bloberror.MD5Mismatch, bloberror.CRC64Mismatch):
		// Damaged in transit: sending it again may well work.
		e.Msg = "the service received a body that does not match its checksum (" + detail + ")"
	case status == 404 && code == "":
		e.Msg, e.Sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
	case status >= 500 || status == 429 || status == 408 || bloberror.HasCode(err, bloberror.ServerBusy, bloberror.OperationTimedOut, bloberror.InternalError):
		e.Msg = detail
	default:
		e.Msg, e.Permanent = detail, true
	}
	return e
}

// deref is the value p points to, or the zero value.
func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// body classifies the read errors of a response body.
func (s *Store) body(ctx context.Context, key string, rc io.ReadCloser, n int64) *driver.Body {
	return &driver.Body{Ctx: ctx, RC: rc, N: n, Classify: func(err error) error { return s.classify(ctx, "get", key, err) }}
}
