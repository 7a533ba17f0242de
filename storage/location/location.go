// Package location turns a repository URL into a ready object store:
// file:///abs/path for a local directory (storage/fs) and
// s3://bucket/prefix?endpoint=...&region=...&path-style=...&ca-file=... for
// S3 and compatible servers (storage/s3), wrapped in storage/retry.
//
// Credentials never come from the URL, which ends up in configs, logs and
// shell histories: a URL carrying them is refused, and S3 credentials come
// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or the
// AWS SDK's default chain (profiles, SSO, web identity, instance roles).
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
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/s3"
)

// Options carry what Open needs besides the URL.
type Options struct {
	Logger *slog.Logger // for retries and backend warnings; nil discards
	// RetryFor bounds the retries of one storage operation; 0 means
	// retry.DefaultMaxElapsed.
	RetryFor time.Duration
	// Getenv reads the AWS_* credential variables; nil means os.Getenv.
	Getenv func(string) string
	// S3 adjusts the S3 options after they are taken from the URL, for
	// tuning (part size, concurrency) and tests.
	S3 func(*s3.Options)
}

// Location is a parsed repository URL. Exactly one of FS and S3 is set.
type Location struct {
	FS string      // absolute directory of a file:// URL
	S3 *s3.Options // bucket, prefix and connection options, no credentials
}

// s3Params are the query parameters an s3:// URL may have.
var s3Params = []string{"endpoint", "region", "path-style", "ca-file"}

// Parse checks a repository URL and says what it names. Errors are one
// line and say what to write instead.
func Parse(rawURL string) (Location, error) {
	if rawURL == "" {
		return Location{}, fmt.Errorf("no repository URL given: use file:///absolute/path or s3://bucket/prefix")
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
	case "":
		return Location{}, fmt.Errorf("repository %q has no scheme: use file:///absolute/path or s3://bucket/prefix", rawURL)
	}
	return Location{}, fmt.Errorf("repository URL %s: unknown scheme %q: use file:// or s3://", redact(rawURL), u.Scheme)
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
	for name := range q {
		if !slices.Contains(s3Params, name) {
			return Location{}, fmt.Errorf("repository URL %s: unknown option %q (known: %s)",
				redact(raw), name, strings.Join(s3Params, ", "))
		}
		if len(q[name]) > 1 {
			return Location{}, fmt.Errorf("repository URL %s: option %q given twice", raw, name)
		}
	}
	if u.Host == "" {
		return Location{}, fmt.Errorf("repository URL %s has no bucket: write s3://bucket/prefix", raw)
	}
	if u.Port() != "" {
		return Location{}, fmt.Errorf("repository URL %s: the host part is the bucket; give a server as endpoint=https://host:port", raw)
	}
	prefix := strings.Trim(u.Path, "/")
	for _, seg := range strings.Split(prefix, "/") {
		if prefix != "" && (seg == "" || seg == "." || seg == "..") {
			return Location{}, fmt.Errorf("repository URL %s: the prefix %q has an empty, \".\" or \"..\" segment", raw, prefix)
		}
	}
	o := &s3.Options{Bucket: u.Host, Prefix: prefix, Region: q.Get("region")}
	if ep := q.Get("endpoint"); ep != "" {
		eu, err := url.Parse(ep)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return Location{}, fmt.Errorf("repository URL %s: endpoint %q is not an http:// or https:// URL", raw, ep)
		}
		if eu.User != nil {
			return Location{}, fmt.Errorf("repository URL %s: the endpoint contains credentials, which are refused in URLs: "+
				"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment instead", redact(raw))
		}
		o.Endpoint = strings.TrimSuffix(ep, "/")
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
	return Location{S3: o}, nil
}

// looksLikeCredential catches the spellings of keys and secrets that other
// tools accept in URLs.
func looksLikeCredential(param string) bool {
	p := strings.NewReplacer("-", "", "_", "", ".", "").Replace(strings.ToLower(param))
	for _, w := range []string{"secret", "accesskey", "keyid", "password", "passwd", "token", "credential", "signature"} {
		if strings.Contains(p, w) {
			return true
		}
	}
	return p == "key" || p == "pass"
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
	if loc.FS != "" {
		return fs.Name(loc.FS)
	}
	return s3.Name(*loc.S3), nil
}

// Open parses the URL and opens the store it names, behind storage/retry.
func Open(ctx context.Context, rawURL string, opts Options) (storage.Store, error) {
	loc, err := Parse(rawURL)
	if err != nil {
		return nil, err
	}
	var backend storage.Store
	switch {
	case loc.FS != "":
		st, err := fs.New(loc.FS)
		if err != nil {
			return nil, fmt.Errorf("open repository %s: %w", rawURL, err)
		}
		backend = st
	default:
		o := *loc.S3
		getenv := opts.Getenv
		if getenv == nil {
			getenv = os.Getenv
		}
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
