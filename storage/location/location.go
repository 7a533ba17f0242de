// Package location turns a repository URL into a ready object store:
// file:///abs/path for a local directory (storage/fs),
// s3://bucket/prefix?endpoint=...&region=...&path-style=...&ca-file=... for
// S3 and compatible servers (storage/s3),
// azure://container/prefix?account=...&endpoint=... for Azure Blob Storage
// (storage/azure) and gs://bucket/prefix?endpoint=... for Google Cloud
// Storage (storage/gcs), wrapped in storage/retry.
//
// Credentials never come from the URL, which ends up in configs, logs and
// shell histories: a URL carrying them is refused. S3 credentials come
// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or the
// AWS SDK's default chain (profiles, SSO, web identity, instance roles);
// Azure ones from AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN or the Azure
// default chain; GCS from Application Default Credentials.
//
// It is not the repository format: it opens the store a repository lives
// in, nothing more.
package location

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/azure"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/gcs"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/s3"
)

// Options carry what Open needs besides the URL.
type Options struct {
	Logger *slog.Logger // for retries and backend warnings; nil discards
	// RetryFor bounds the retries of one storage operation; 0 means
	// retry.DefaultMaxElapsed.
	RetryFor time.Duration
	// Getenv reads the AWS_* and AZURE_STORAGE_* credential variables;
	// nil means os.Getenv.
	Getenv func(string) string
	// S3 adjusts the S3 options after they are taken from the URL, for
	// tuning (part size, concurrency) and tests.
	S3 func(*s3.Options)
}

// Location is a parsed repository URL. Exactly one of FS, S3, Azure and
// GCS is set.
type Location struct {
	FS    string         // absolute directory of a file:// URL
	S3    *s3.Options    // bucket, prefix and connection options, no credentials
	Azure *azure.Options // account, container, prefix, endpoint, no credentials
	GCS   *gcs.Options   // bucket, prefix, endpoint
}

// s3Params are the query parameters an s3:// URL may have.
var s3Params = []string{"endpoint", "region", "path-style", "ca-file",
	"storage-class", "data-storage-class", "wal-storage-class", "sse", "sse-kms-key-id"}

// azureParams and gcsParams are those of azure:// and gs:// URLs.
var (
	azureParams = []string{"account", "endpoint"}
	gcsParams   = []string{"endpoint"}
)

// The key prefixes that data-storage-class= and wal-storage-class= name:
// the repository's data packs and its WAL archive (docs/format.md), the
// bulk of its bytes, which operators put in cheaper classes.
const (
	dataPrefix = "data/"
	walPrefix  = "wal/"
)

const schemesHint = "use file:///absolute/path, s3://bucket/prefix, azure://container/prefix?account=NAME or gs://bucket/prefix"

// Parse checks a repository URL and says what it names. Errors are one
// line and say what to write instead.
func Parse(rawURL string) (Location, error) {
	if rawURL == "" {
		return Location{}, fmt.Errorf("no repository URL given: %s", schemesHint)
	}
	if strings.HasPrefix(rawURL, "/") {
		return Location{}, fmt.Errorf("repository %q is a path, not a URL: write file://%s", rawURL, rawURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return Location{}, fmt.Errorf("repository URL %q: %v", redact(rawURL), err)
	}
	if u.User != nil {
		return Location{}, fmt.Errorf("repository URL %s contains credentials, which are refused in URLs: "+
			"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment instead", redact(rawURL))
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Location{}, fmt.Errorf("repository URL %s: bad query: %v", redact(rawURL), err)
	}
	for name := range q {
		if looksLikeCredential(name) {
			return Location{}, fmt.Errorf("repository URL %s contains a credential (%s), which is refused in URLs: "+
				"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment instead",
				redact(rawURL), name)
		}
	}
	switch u.Scheme {
	case "file":
		return parseFile(rawURL, u, q)
	case "s3":
		return parseS3(rawURL, u, q)
	case "azure":
		return parseAzure(rawURL, u, q)
	case "gs":
		return parseGCS(rawURL, u, q)
	case "":
		return Location{}, fmt.Errorf("repository %q has no scheme: %s", rawURL, schemesHint)
	}
	return Location{}, fmt.Errorf("repository URL %s: unknown scheme %q: use file://, s3://, azure:// or gs://", redact(rawURL), u.Scheme)
}

// checkParams refuses unknown and repeated options.
func checkParams(raw string, q url.Values, known []string) error {
	for name := range q {
		if !slices.Contains(known, name) {
			return fmt.Errorf("repository URL %s: unknown option %q (known: %s)",
				redact(raw), name, strings.Join(known, ", "))
		}
		if len(q[name]) > 1 {
			return fmt.Errorf("repository URL %s: option %q given twice", raw, name)
		}
	}
	return nil
}

// bucketAndPrefix checks the host (bucket or container) and path (key
// prefix) parts of a cloud URL.
func bucketAndPrefix(raw string, u *url.URL, what string) (string, string, error) {
	if u.Host == "" {
		return "", "", fmt.Errorf("repository URL %s has no %s: write %s://%s/prefix", raw, what, u.Scheme, what)
	}
	if u.Port() != "" {
		return "", "", fmt.Errorf("repository URL %s: the host part is the %s; give a server as endpoint=https://host:port", raw, what)
	}
	prefix := strings.Trim(u.Path, "/")
	for _, seg := range strings.Split(prefix, "/") {
		if prefix != "" && (seg == "" || seg == "." || seg == "..") {
			return "", "", fmt.Errorf("repository URL %s: the prefix %q has an empty, \".\" or \"..\" segment", raw, prefix)
		}
	}
	return u.Host, prefix, nil
}

// endpointParam checks an endpoint= option.
func endpointParam(raw string, q url.Values) (string, error) {
	ep := q.Get("endpoint")
	if ep == "" {
		return "", nil
	}
	eu, err := url.Parse(ep)
	if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
		return "", fmt.Errorf("repository URL %s: endpoint %q is not an http:// or https:// URL", raw, ep)
	}
	if eu.User != nil || eu.RawQuery != "" {
		return "", fmt.Errorf("repository URL %s: the endpoint contains credentials or a query, which are refused in URLs: "+
			"put credentials in the environment instead", redact(raw))
	}
	return strings.TrimSuffix(ep, "/"), nil
}

func parseAzure(raw string, u *url.URL, q url.Values) (Location, error) {
	if err := checkParams(raw, q, azureParams); err != nil {
		return Location{}, err
	}
	container, prefix, err := bucketAndPrefix(raw, u, "container")
	if err != nil {
		return Location{}, err
	}
	o := &azure.Options{Container: container, Prefix: prefix, Account: q.Get("account")}
	if o.Account == "" {
		return Location{}, fmt.Errorf("repository URL %s has no storage account: add ?account=NAME", raw)
	}
	if o.Endpoint, err = endpointParam(raw, q); err != nil {
		return Location{}, err
	}
	return Location{Azure: o}, nil
}

func parseGCS(raw string, u *url.URL, q url.Values) (Location, error) {
	if err := checkParams(raw, q, gcsParams); err != nil {
		return Location{}, err
	}
	bucket, prefix, err := bucketAndPrefix(raw, u, "bucket")
	if err != nil {
		return Location{}, err
	}
	o := &gcs.Options{Bucket: bucket, Prefix: prefix}
	if o.Endpoint, err = endpointParam(raw, q); err != nil {
		return Location{}, err
	}
	return Location{GCS: o}, nil
}

func parseFile(raw string, u *url.URL, q url.Values) (Location, error) {
	if len(q) > 0 {
		return Location{}, fmt.Errorf("repository URL %s: file:// URLs take no options", redact(raw))
	}
	if u.Opaque != "" || (u.Host != "" && u.Host != "localhost") {
		rel := u.Opaque
		if rel == "" {
			rel = u.Host + u.Path
		}
		return Location{}, fmt.Errorf("repository URL %s names a relative path (%s): "+
			"file URLs need an absolute path, with three slashes: file:///absolute/path", raw, rel)
	}
	if u.Path == "" || !path.IsAbs(u.Path) {
		return Location{}, fmt.Errorf("repository URL %s has no absolute path: write file:///absolute/path", raw)
	}
	return Location{FS: filepath.Clean(filepath.FromSlash(u.Path))}, nil
}

func parseS3(raw string, u *url.URL, q url.Values) (Location, error) {
	if err := checkParams(raw, q, s3Params); err != nil {
		return Location{}, err
	}
	bucket, prefix, err := bucketAndPrefix(raw, u, "bucket")
	if err != nil {
		return Location{}, err
	}
	o := &s3.Options{Bucket: bucket, Prefix: prefix, Region: q.Get("region")}
	if o.Endpoint, err = endpointParam(raw, q); err != nil {
		return Location{}, err
	}
	if o.Endpoint != "" {
		// S3-compatible servers are usually reached by address, where
		// virtual-host style (bucket.host) cannot resolve.
		o.PathStyle = true
	}
	if ps, ok := q["path-style"]; ok {
		b, err := strconv.ParseBool(ps[0])
		if err != nil {
			return Location{}, fmt.Errorf("repository URL %s: path-style=%q is not true or false", raw, ps[0])
		}
		o.PathStyle = b
	}
	if ca := q.Get("ca-file"); ca != "" {
		if !filepath.IsAbs(ca) {
			return Location{}, fmt.Errorf("repository URL %s: ca-file=%s must be an absolute path", raw, ca)
		}
		o.CAFile = ca
	} else if _, ok := q["ca-file"]; ok {
		return Location{}, fmt.Errorf("repository URL %s: ca-file is empty", raw)
	}
	for _, c := range []struct{ param, prefix string }{
		{"storage-class", ""}, {"data-storage-class", dataPrefix}, {"wal-storage-class", walPrefix},
	} {
		v, ok := q[c.param]
		if !ok {
			continue
		}
		if !validClass(v[0]) {
			return Location{}, fmt.Errorf("repository URL %s: %s=%q is not a storage class (for example STANDARD, STANDARD_IA, INTELLIGENT_TIERING)", raw, c.param, v[0])
		}
		o.StorageClasses = append(o.StorageClasses, s3.PrefixClass{Prefix: c.prefix, Class: v[0]})
	}
	switch sse := q.Get("sse"); sse {
	case "", "AES256", "aws:kms", "aws:kms:dsse":
		o.SSE = sse
	default:
		return Location{}, fmt.Errorf("repository URL %s: sse=%q: use sse=AES256, sse=aws:kms or sse=aws:kms:dsse", raw, sse)
	}
	if kid, ok := q["sse-kms-key-id"]; ok {
		if !strings.HasPrefix(o.SSE, "aws:kms") || kid[0] == "" {
			return Location{}, fmt.Errorf("repository URL %s: sse-kms-key-id needs sse=aws:kms and a key ID or ARN", raw)
		}
		o.SSEKMSKeyID = kid[0]
	}
	return Location{S3: o}, nil
}

// validClass accepts the spellings of S3 storage classes: upper-case
// letters, digits and underscores.
func validClass(c string) bool {
	if c == "" || len(c) > 64 {
		return false
	}
	for _, r := range c {
		if !(r >= 'A' && r <= 'Z') && !(r >= '0' && r <= '9') && r != '_' {
			return false
		}
	}
	return true
}

// looksLikeCredential catches the spellings of keys and secrets that other
// tools accept in URLs.
func looksLikeCredential(param string) bool {
	if param == "sse-kms-key-id" {
		return false // names a KMS key, grants nothing
	}
	p := strings.NewReplacer("-", "", "_", "", ".", "").Replace(strings.ToLower(param))
	for _, w := range []string{"secret", "accesskey", "keyid", "password", "passwd", "token", "credential", "signature"} {
		if strings.Contains(p, w) {
			return true
		}
	}
	// sig, sv, se: the signature, version and expiry of an Azure SAS token.
	return p == "key" || p == "pass" || p == "sig" || p == "sv" || p == "se"
}

// redact removes userinfo and query values from a URL for messages, since
// they may hold secrets.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.IndexAny(raw, "@?"); i >= 0 {
			return raw[:i] + "…"
		}
		return raw
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	if u.RawQuery != "" {
		q, _ := url.ParseQuery(u.RawQuery)
		for k := range q {
			q[k] = []string{"REDACTED"}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// Name is the String of the store that Open(rawURL) returns, without
// opening it: no directory is created or swept, no S3 client is built.
func Name(rawURL string) (string, error) {
	loc, err := Parse(rawURL)
	if err != nil {
		return "", err
	}
	switch {
	case loc.FS != "":
		return fs.Name(loc.FS)
	case loc.Azure != nil:
		return azure.Name(*loc.Azure), nil
	case loc.GCS != nil:
		return gcs.Name(*loc.GCS), nil
	}
	return s3.Name(*loc.S3), nil
}

// Open parses the URL and opens the store it names, behind storage/retry.
func Open(ctx context.Context, rawURL string, opts Options) (storage.Store, error) {
	loc, err := Parse(rawURL)
	if err != nil {
		return nil, err
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	var backend storage.Store
	switch {
	case loc.Azure != nil:
		o := *loc.Azure
		o.SharedKey, o.SASToken = getenv("AZURE_STORAGE_KEY"), getenv("AZURE_STORAGE_SAS_TOKEN")
		if o.SharedKey != "" && o.SASToken != "" {
			return nil, fmt.Errorf("open repository %s: both AZURE_STORAGE_KEY and AZURE_STORAGE_SAS_TOKEN are set: unset one", redact(rawURL))
		}
		o.Logger = opts.Logger
		st, err := azure.New(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("open repository %s: %w", redact(rawURL), err)
		}
		backend = st
	case loc.GCS != nil:
		o := *loc.GCS
		o.Logger = opts.Logger
		st, err := gcs.New(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("open repository %s: %w", redact(rawURL), err)
		}
		backend = st
	case loc.FS != "":
		st, err := fs.New(loc.FS)
		if err != nil {
			return nil, fmt.Errorf("open repository %s: %w", rawURL, err)
		}
		backend = st
	default:
		o := *loc.S3
		o.AccessKeyID = getenv("AWS_ACCESS_KEY_ID")
		o.SecretAccessKey = getenv("AWS_SECRET_ACCESS_KEY")
		o.SessionToken = getenv("AWS_SESSION_TOKEN")
		if (o.AccessKeyID == "") != (o.SecretAccessKey == "") {
			return nil, fmt.Errorf("open repository %s: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither to use the AWS default credential chain", rawURL)
		}
		o.Logger = opts.Logger
		if opts.S3 != nil {
			opts.S3(&o)
		}
		st, err := s3.New(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("open repository %s: %w", rawURL, err)
		}
		backend = st
	}
	return retry.New(backend, retry.Options{Logger: opts.Logger, MaxElapsed: opts.RetryFor}), nil
}
