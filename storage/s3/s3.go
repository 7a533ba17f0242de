// Package s3 is the object store on S3 and S3-compatible servers (MinIO,
// versitygw, Ceph RGW, ...), built on aws-sdk-go-v2.
//
// What it guarantees beyond the plain API:
//   - Every upload carries a CRC32C checksum computed before sending
//     (x-amz-checksum-crc32c, per part for multipart uploads), which the
//     server verifies: a body corrupted on the way is refused, never stored.
//   - Create is atomic through If-None-Match: * (also on
//     CompleteMultipartUpload); on servers that answer NotImplemented it
//     falls back, with a warning, to a check-then-put that is not atomic.
//   - Every failure is a *storage.Error naming the object, classified as
//     not found, range, exists, permanent (with a hint for the operator) or
//     transient.
//
// It does not retry. The SDK's own retries are switched off so that
// storage/retry is the only retry policy, with one time bound and one log;
// use the store through storage/retry (storage/location does).
package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/logging"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// Defaults for Options fields left zero.
const (
	// DefaultMultipartThreshold: objects at least this large go up in parts.
	// Repository packs are about 32 MiB and WAL segments at most 16 MiB, so
	// they take one PUT (one request, the cheapest on S3); only the rare
	// larger object pays for a multipart upload, and gains parallel parts.
	DefaultMultipartThreshold = 64 << 20
	// DefaultPartSize is the size of each part but the last.
	DefaultPartSize = 16 << 20
	// DefaultPartConcurrency is how many parts of one object are uploaded
	// at once. Callers upload many objects in parallel already.
	DefaultPartConcurrency = 4
	// DefaultStallTimeout: a connection on which nothing moves for this
	// long is dropped (a transient error).
	DefaultStallTimeout = driver.DefaultStallTimeout
	// DefaultRegion is used when neither the options nor the environment
	// name one; S3-compatible servers mostly ignore it but SigV4 needs one.
	DefaultRegion = "us-east-1"

	// minPartSize and maxParts are S3's limits.
	minPartSize = 5 << 20
	maxParts    = 10000
	// deleteBatch is the most keys DeleteObjects takes at once.
	deleteBatch = 1000
)

// Options say where the store is and how to talk to it.
type Options struct {
	Bucket    string
	Prefix    string // key prefix inside the bucket; "" or "a/b" (slashes trimmed)
	Endpoint  string // "https://host:port" of an S3-compatible server; "" for AWS
	Region    string // "" takes AWS_REGION / the shared config, then DefaultRegion
	PathStyle bool   // bucket in the path rather than the host name
	CAFile    string // PEM bundle of the CAs trusted instead of the system roots

	// Static credentials. When AccessKeyID is empty the SDK's default chain
	// is used (environment, shared files, SSO, web identity, and on EC2
	// the instance metadata service); when it has nowhere to look, every
	// request fails with one line naming the variables to set.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string

	MultipartThreshold int64         // default DefaultMultipartThreshold
	PartSize           int64         // default DefaultPartSize; at least 5 MiB
	PartConcurrency    int           // default DefaultPartConcurrency
	ListPageSize       int32         // keys per ListObjectsV2 page; default (0) is the server's, 1000
	StallTimeout       time.Duration // default DefaultStallTimeout
	MaxConnsPerHost    int           // cap on connections; default 0, no cap

	// StorageClasses set the storage class of new objects by key prefix:
	// the longest matching prefix wins, "" matches every key. None: the
	// bucket's default (STANDARD on AWS).
	StorageClasses []PrefixClass
	// SSE is the server-side encryption asked for on every upload:
	// "AES256", "aws:kms", "aws:kms:dsse" or "" (the bucket's default).
	// SSEKMSKeyID names the KMS key for aws:kms ("" for the account's
	// default key).
	SSE         string
	SSEKMSKeyID string

	Logger *slog.Logger // warnings (fallbacks for missing server features); nil discards
}

// PrefixClass is the storage class of the objects under a key prefix.
type PrefixClass struct {
	Prefix string // "" for every key
	Class  string // STANDARD, STANDARD_IA, INTELLIGENT_TIERING, ...
}

// Store is an S3 bucket (and key prefix) as an object store. It is safe for
// concurrent use.
type Store struct {
	client *s3.Client
	bucket string
	prefix string // "" or ending in "/"
	opts   Options
	log    *slog.Logger
	name   string
	https  bool
	// putOpts are the per-request options of uploads: UNSIGNED-PAYLOAD over
	// TLS, where TLS and the CRC32C already protect the body, to save a
	// SHA-256 pass over every byte; over plain http the payload is signed.
	putOpts []func(*s3.Options)

	// Server features found missing, detected once and remembered.
	noCondPut      atomic.Bool // If-None-Match on PutObject
	noCondComplete atomic.Bool // If-None-Match on CompleteMultipartUpload
	noMultiDelete  atomic.Bool // DeleteObjects

	bufs sync.Pool // *[]byte of copyBufSize, for checksum passes
}

var _ storage.Store = (*Store)(nil)

// New makes a store. It does not contact the server: a wrong bucket or
// credential shows in the first request, as a permanent error with a hint.
func New(ctx context.Context, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		return nil, errors.New("s3 store: no bucket given")
	}
	if opts.MultipartThreshold <= 0 {
		opts.MultipartThreshold = DefaultMultipartThreshold
	}
	if opts.PartSize <= 0 {
		opts.PartSize = DefaultPartSize
	}
	if opts.PartSize < minPartSize {
		return nil, fmt.Errorf("s3 store: part size %d is below S3's minimum of 5 MiB", opts.PartSize)
	}
	if opts.PartConcurrency <= 0 {
		opts.PartConcurrency = DefaultPartConcurrency
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		bucket: opts.Bucket,
		prefix: strings.Trim(opts.Prefix, "/"),
		opts:   opts,
		log:    log,
		https:  true,
	}
	if s.prefix != "" {
		s.prefix += "/"
	}
	s.name = Name(opts)
	if opts.Endpoint != "" {
		u, err := url.Parse(opts.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("s3 store: endpoint %q is not an http:// or https:// URL", opts.Endpoint)
		}
		s.https = u.Scheme == "https"
	}
	s.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }

	var tlsConf *tls.Config
	var caPEM []byte
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("s3 store: read CA file: %w", err)
		}
		// The CA file replaces the system roots rather than adding to
		// them, as curl's --cacert and libpq's sslrootcert do: it names
		// the CAs this one endpoint's certificate leads to, and loading
		// the system pool (some 150 PEM files parsed) cost every
		// short-lived command 10-15 ms of CPU, a sixth of a wal-fetch.
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("s3 store: CA file %s holds no PEM certificate", opts.CAFile)
		}
		tlsConf = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		caPEM = pem
	}
	hc := newHTTPClient(tlsConf, opts.StallTimeout, opts.MaxConnsPerHost)

	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(hc),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		config.WithLogger(sdkLogger{log}),
	}
	if caPEM != nil {
		// The CA file is the whole trust set: the SDK would otherwise add
		// the bundle AWS_CA_BUNDLE names (on the benchmark VM the system's,
		// 219 KB: 6.5 ms of CPU in every wal-fetch, a tenth of it).
		loadOpts = append(loadOpts, config.WithCustomCABundle(bytes.NewReader(caPEM)))
	}
	if opts.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(opts.Region))
	}
	switch {
	case opts.AccessKeyID != "":
		loadOpts = append(loadOpts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(opts.AccessKeyID, opts.SecretAccessKey, opts.SessionToken)))
	case !chainHasSource(os.Getenv) && !onEC2():
		loadOpts = append(loadOpts, config.WithCredentialsProvider(noCredentials))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("s3 store: load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	s.client = s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = opts.PathStyle
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		// Only what an operation requires (DeleteObjects): S3-compatible
		// servers disagree about the SDK's default trailing checksums, and
		// uploads set their own CRC32C header anyway.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		// One retry policy, storage/retry's; the SDK's would multiply it.
		o.Retryer = aws.NopRetryer{}
		// No "Expect: 100-continue" on large PUTs (packs, WAL objects): it
		// costs a round trip each, and up to the transport's one-second
		// ExpectContinueTimeout on a server that never answers it. Its only
		// gain, not sending a body the server refuses, matters little: a
		// refused upload is rare and retried anyway.
		o.ContinueHeaderThresholdBytes = -1
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	if s.https {
		s.putOpts = []func(*s3.Options){s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)}
	}
	return s, nil
}

// String returns s3://bucket/prefix, with the endpoint when there is one.
func (s *Store) String() string { return s.name }

// Name is what String returns for a store opened with opts, known without
// building a client: callers on a hot path (wal-fetch serving from its
// spool) compare it without paying for the CA pool and the SDK's config.
func Name(opts Options) string {
	name := "s3://" + opts.Bucket
	if prefix := strings.Trim(opts.Prefix, "/"); prefix != "" {
		name += "/" + prefix
	}
	if opts.Endpoint != "" {
		name += "?endpoint=" + opts.Endpoint
	}
	return name
}

// Client returns the SDK client, for tests that check what the server holds.
func (s *Store) Client() *s3.Client { return s.client }

// Bucket returns the bucket name.
func (s *Store) Bucket() string { return s.bucket }

// fullKey is the object key in the bucket.
func (s *Store) fullKey(key string) *string { return aws.String(s.prefix + key) }

// checkKey refuses the keys every backend refuses (storage.CheckKey).
func checkKey(op, key string) error {
	if err := storage.CheckKey(key); err != nil {
		return &storage.Error{Op: op, Key: key, Err: &s3Error{msg: err.Error(), permanent: true}}
	}
	return nil
}

// sdkLogger sends the SDK's few log lines (it logs warnings only, as
// client log mode is off) to the store's logger.
type sdkLogger struct{ log *slog.Logger }

func (l sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	level := slog.LevelDebug
	if c == logging.Warn {
		level = slog.LevelWarn
	}
	l.log.Log(context.Background(), level, "aws sdk: "+fmt.Sprintf(format, v...))
}
