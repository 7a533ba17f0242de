package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// testLogger sends log lines to the test log and counts warnings.
type testLogger struct {
	t     testing.TB
	mu    sync.Mutex
	warns []string
}

func (l *testLogger) Enabled(context.Context, slog.Level) bool { return true }
func (l *testLogger) Handle(_ context.Context, r slog.Record) error {
	l.t.Logf("%s %s", r.Level, r.Message)
	if r.Level >= slog.LevelWarn {
		l.mu.Lock()
		l.warns = append(l.warns, r.Message)
		l.mu.Unlock()
	}
	return nil
}
func (l *testLogger) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *testLogger) WithGroup(string) slog.Handler      { return l }
func (l *testLogger) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.warns...)
}

// options for a store on srv in a fresh bucket, with multipart uploads from
// 5 MiB so the conformance suite's large object goes up in three parts.
func options(t *testing.T, srv *testenv.S3Server) Options {
	return Options{
		Bucket:             srv.NewBucket(t),
		Prefix:             "repo/",
		Endpoint:           srv.Endpoint,
		Region:             srv.Region,
		PathStyle:          true,
		CAFile:             srv.CAFile,
		AccessKeyID:        srv.AccessKey,
		SecretAccessKey:    srv.SecretKey,
		MultipartThreshold: 5 << 20,
		PartSize:           5 << 20,
		Logger:             slog.New(&testLogger{t: t}),
	}
}

func newStore(t *testing.T, o Options) *Store {
	t.Helper()
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMinIO(t *testing.T) {
	t.Parallel()
	serverTests(t, testenv.MinIO(t))
}

func TestVersityGW(t *testing.T) {
	t.Parallel()
	serverTests(t, testenv.VersityGW(t))
}

// TestMinIOTLS runs the suite over https, where uploads use UNSIGNED-PAYLOAD,
// and checks that an untrusted certificate is refused with a hint.
func TestMinIOTLS(t *testing.T) {
	t.Parallel()
	srv := testenv.MinIOTLS(t)
	t.Run("Conformance", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t, options(t, srv)) })
	})
	t.Run("UntrustedCertificate", func(t *testing.T) {
		o := options(t, srv)
		o.CAFile = ""
		s := newStore(t, o)
		_, err := s.Head(context.Background(), "x")
		if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "ca-file=") {
			t.Fatalf("head without the CA: %v, want a permanent error that mentions ca-file=", err)
		}
		t.Log(err)
	})
	t.Run("ChecksumRejected", func(t *testing.T) { testChecksumRejected(t, srv) })
}

// TestCAFileIsTheTrustSet: with ca-file= the bundle AWS_CA_BUNDLE names is
// not loaded (not parsed either: a short command paid 6.5 ms of CPU for the
// system's), so that a missing one does not matter. Not parallel: it sets
// the environment.
func TestCAFileIsTheTrustSet(t *testing.T) {
	srv := testenv.MinIOTLS(t)
	t.Setenv("AWS_CA_BUNDLE", filepath.Join(t.TempDir(), "missing.pem"))
	s := newStore(t, options(t, srv))
	if _, err := s.Head(context.Background(), "x"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("head: %v, want not found", err)
	}
}

func serverTests(t *testing.T, srv *testenv.S3Server) {
	t.Run("group", func(t *testing.T) {
		t.Run("Conformance", func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t, options(t, srv)) })
		})
		for _, tc := range []struct {
			name string
			f    func(*testing.T, *testenv.S3Server)
		}{
			{"ChecksumRejected", testChecksumRejected},
			{"UnsignedPayload", testUnsignedPayload},
			{"Credentials", testCredentials},
			{"NoSuchBucket", testNoSuchBucket},
			{"ConditionalFallback", testConditionalFallback},
			{"DeleteFallback", testDeleteFallback},
			{"Throttled", testThrottled},
			{"DroppedBody", testDroppedBody},
			{"SmallListPages", testSmallListPages},
			{"Prefix", testPrefix},
			{"Multipart", testMultipart},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				tc.f(t, srv)
			})
		}
	})
	// The outage takes the whole server down, so it runs alone.
	t.Run("Outage", func(t *testing.T) { testOutage(t, srv) })
}

// changingReader returns different bytes on every pass over the data, as a
// file being rewritten during the upload would: the checksum computed in
// one pass never matches the body sent in the next.
type changingReader struct {
	data  []byte
	mu    sync.Mutex
	reads []byte // per byte, how often it was read
}

func (c *changingReader) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reads == nil {
		c.reads = make([]byte, len(c.data))
	}
	n := copy(p, c.data[off:])
	// Each byte changes from one read of it to the next, whatever the
	// order and the sizes of the reads: with parts read in parallel, a
	// count over the whole source let a part's checksum and its body
	// fall in the same pass now and then, and the upload succeed.
	for i := range n {
		p[i] ^= c.reads[off+int64(i)]
		c.reads[off+int64(i)]++
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// testChecksumRejected shows that the server checks the CRC32C: a PUT and an
// upload part with a wrong checksum are refused and store nothing, and a
// source that changes while read ends in a permanent error.
func testChecksumRejected(t *testing.T, srv *testenv.S3Server) {
	ctx := context.Background()
	s := newStore(t, options(t, srv))
	data := []byte("the body the checksum does not belong to")
	wrong, err := s.crc32c(ctx, bytes.NewReader([]byte("something else")), 0, 14)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.bucket), Key: s.fullKey("bad"), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), ChecksumCRC32C: aws.String(wrong),
	}, s.putOpts...)
	if !isBadDigest(err) {
		t.Fatalf("PUT with a wrong CRC32C: got %v, want BadDigest", err)
	}
	if se := s.classify(ctx, "put", "bad", err); !storage.IsTransient(se) {
		t.Errorf("a refused checksum should be worth a retry: %v", se)
	}

	created, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(s.bucket), Key: s.fullKey("badpart"), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket: aws.String(s.bucket), Key: s.fullKey("badpart"), UploadId: created.UploadId, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c, ChecksumCRC32C: aws.String(wrong),
	}, s.putOpts...)
	if !isBadDigest(err) {
		t.Fatalf("upload part with a wrong CRC32C: got %v, want BadDigest", err)
	}
	s.abort(ctx, "badpart", created.UploadId)

	for _, size := range []int{1000, storagetest.LargeSize} {
		key := fmt.Sprintf("changing/%d", size)
		err := s.Put(ctx, key, &changingReader{data: storagetest.Data(5, size)}, int64(size))
		if !errors.Is(err, storage.ErrPermanent) || storage.IsTransient(err) ||
			!strings.Contains(err.Error(), "checksum") || !strings.Contains(err.Error(), key) {
			t.Errorf("put %s from a changing source: %v, want a permanent checksum error naming it", key, err)
		}
	}
	if keys := storagetest.ListKeys(t, s, "", ""); len(keys) != 0 {
		t.Errorf("refused uploads left objects: %q", keys)
	}
	// Nor uploads in progress: a failed multipart upload is aborted.
	mp, err := s.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(s.bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(mp.Uploads) != 0 {
		t.Errorf("%d multipart uploads left behind", len(mp.Uploads))
	}
}

// testUnsignedPayload checks that the server accepts the UNSIGNED-PAYLOAD
// form used over https, here over http, so that both servers are proven to
// verify the CRC32C alone.
func testUnsignedPayload(t *testing.T, srv *testenv.S3Server) {
	s := newStore(t, options(t, srv))
	s.putOpts = []func(*s3.Options){s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)}
	for _, size := range []int{0, 100, storagetest.LargeSize} {
		key := fmt.Sprintf("unsigned/%d", size)
		data := storagetest.Data(uint64(size), size)
		storagetest.PutBytes(t, s, key, data)
		if !bytes.Equal(storagetest.ReadAll(t, s, key), data) {
			t.Fatalf("%s: content differs", key)
		}
	}
	err := s.Put(context.Background(), "unsigned/changing", &changingReader{data: storagetest.Data(6, 1000)}, 1000)
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("unsigned put from a changing source: %v", err)
	}
}

func testCredentials(t *testing.T, srv *testenv.S3Server) {
	for _, tc := range []struct {
		name      string
		mod       func(*Options)
		wantHints []string
	}{
		{"secret", func(o *Options) { o.SecretAccessKey = "wrong-secret-key" }, []string{"AWS_SECRET_ACCESS_KEY"}},
		{"access key", func(o *Options) { o.AccessKeyID = "nobody-known" }, []string{"AWS_ACCESS_KEY_ID"}},
	} {
		o := options(t, srv)
		tc.mod(&o)
		s := newStore(t, o)
		rs := retry.New(s, retry.Options{MaxElapsed: time.Minute})
		err := rs.Put(context.Background(), "k", bytes.NewReader([]byte("x")), 1)
		if !errors.Is(err, storage.ErrPermanent) || storage.IsTransient(err) || !strings.Contains(err.Error(), "put k:") {
			t.Errorf("wrong %s: put = %v, want a permanent error naming the object", tc.name, err)
			continue
		}
		for _, h := range tc.wantHints {
			if !strings.Contains(err.Error(), h) {
				t.Errorf("wrong %s: %q does not mention %s", tc.name, err, h)
			}
		}
		t.Logf("wrong %s: %v", tc.name, err)
	}
}

func testNoSuchBucket(t *testing.T, srv *testenv.S3Server) {
	o := options(t, srv)
	o.Bucket = "no-such-bucket-here"
	s := newStore(t, o)
	var err error
	for _, e := range s.List(context.Background(), "", "") {
		err = e
	}
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "no-such-bucket-here") ||
		!strings.Contains(err.Error(), "bucket name") {
		t.Fatalf("list of a missing bucket: %v", err)
	}
	_, err = s.Get(context.Background(), "k")
	if !errors.Is(err, storage.ErrPermanent) || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get from a missing bucket: %v, want permanent, not not-found", err)
	}
}

// proxy is a reverse proxy in front of a server that can misbehave. It keeps
// the Host header so the client's signatures stay valid.
type proxy struct {
	*httptest.Server
	intercept atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
}

func newProxy(t *testing.T, target string) *proxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host
	}}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := p.intercept.Load(); f != nil && (*f)(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) set(f func(http.ResponseWriter, *http.Request) bool) { p.intercept.Store(&f) }

func s3Fail(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected by the test proxy</Message></Error>`, code)
}

func testConditionalFallback(t *testing.T, srv *testenv.S3Server) {
	ctx := context.Background()
	p := newProxy(t, srv.Endpoint)
	var refused atomic.Int64
	p.set(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("If-None-Match") != "" {
			refused.Add(1)
			s3Fail(w, http.StatusNotImplemented, "NotImplemented")
			return true
		}
		return false
	})
	o := options(t, srv)
	log := &testLogger{t: t}
	o.Endpoint, o.Logger = p.URL, slog.New(log)
	s := newStore(t, o)
	for _, size := range []int{10, storagetest.LargeSize} {
		key := fmt.Sprintf("cond/%d", size)
		for i := range 3 {
			data := storagetest.Data(uint64(i), size)
			err := s.Create(ctx, key, bytes.NewReader(data), int64(size))
			if i == 0 && err != nil {
				t.Fatalf("create %s without server support: %v", key, err)
			}
			if i > 0 && !errors.Is(err, storage.ErrExists) {
				t.Fatalf("second create %s without server support: %v, want ErrExists", key, err)
			}
		}
	}
	// Detected once per kind of request, then remembered.
	if n := refused.Load(); n != 2 {
		t.Errorf("%d conditional requests sent to a server that refused the first, want 2 (put, complete)", n)
	}
	if w := log.warnings(); len(w) != 2 || !strings.Contains(w[0], "conditional writes") {
		t.Errorf("warnings = %q, want one per request kind", w)
	}
}

func testDeleteFallback(t *testing.T, srv *testenv.S3Server) {
	p := newProxy(t, srv.Endpoint)
	p.set(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.URL.Query().Has("delete") {
			s3Fail(w, http.StatusNotImplemented, "NotImplemented")
			return true
		}
		return false
	})
	o := options(t, srv)
	o.Endpoint = p.URL
	s := newStore(t, o)
	var keys []string
	for i := range 20 {
		k := fmt.Sprintf("d/%02d", i)
		keys = append(keys, k)
		storagetest.PutBytes(t, s, k, []byte(k))
	}
	if err := s.Delete(context.Background(), append(keys, "d/missing")...); err != nil {
		t.Fatal(err)
	}
	if left := storagetest.ListKeys(t, s, "", ""); len(left) != 0 {
		t.Fatalf("left after delete: %q", left)
	}
}

// testThrottled has the server answer 503 SlowDown and 500 for a while: the
// errors are transient, and through storage/retry the writes get through.
func testThrottled(t *testing.T, srv *testenv.S3Server) {
	ctx := context.Background()
	p := newProxy(t, srv.Endpoint)
	var n atomic.Int64
	p.set(func(w http.ResponseWriter, r *http.Request) bool {
		switch n.Add(1) {
		case 1, 2:
			s3Fail(w, http.StatusServiceUnavailable, "SlowDown")
			return true
		case 3:
			s3Fail(w, http.StatusInternalServerError, "InternalError")
			return true
		}
		return false
	})
	o := options(t, srv)
	o.Endpoint = p.URL
	s := newStore(t, o)
	err := s.Put(ctx, "k", bytes.NewReader([]byte("v")), 1)
	if !storage.IsTransient(err) || !strings.Contains(err.Error(), "SlowDown") {
		t.Fatalf("put while throttled: %v, want a transient SlowDown", err)
	}
	rs := retry.New(s, retry.Options{MaxElapsed: 30 * time.Second, InitialBackoff: 10 * time.Millisecond,
		Logger: slog.New(&testLogger{t: t})})
	if err := rs.Put(ctx, "k", bytes.NewReader([]byte("v")), 1); err != nil {
		t.Fatalf("put through retry: %v", err)
	}
	if got := storagetest.ReadAll(t, s, "k"); string(got) != "v" {
		t.Fatalf("got %q", got)
	}
}

// testDroppedBody cuts GET responses off in the middle: the body error is
// transient, and storage/retry resumes from where it broke.
func testDroppedBody(t *testing.T, srv *testenv.S3Server) {
	ctx := context.Background()
	o := options(t, srv)
	direct := newStore(t, o)
	data := storagetest.Data(8, 3<<20)
	storagetest.PutBytes(t, direct, "big", data)

	p := newProxy(t, srv.Endpoint)
	var cuts atomic.Int64
	p.set(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/big") || cuts.Add(1) > 3 {
			return false
		}
		// Forward, then break the connection after 100 KiB of the body.
		out, err := http.DefaultTransport.RoundTrip(func() *http.Request {
			u, _ := url.Parse(srv.Endpoint)
			r2 := r.Clone(r.Context())
			r2.URL.Scheme, r2.URL.Host, r2.RequestURI = u.Scheme, u.Host, ""
			return r2
		}())
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		defer out.Body.Close()
		for k, v := range out.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(out.StatusCode)
		io.CopyN(w, out.Body, 100<<10)
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	o.Endpoint = p.URL
	s := newStore(t, o)

	rc, err := s.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if !storage.IsTransient(err) || !strings.Contains(err.Error(), "big") {
		t.Fatalf("read of a cut body: %v, want a transient error naming the object", err)
	}

	rs := retry.New(s, retry.Options{InitialBackoff: 10 * time.Millisecond, Logger: slog.New(&testLogger{t: t})})
	rc, err = rs.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("read through retry: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("resumed read returned %d bytes, different from the %d stored", len(got), len(data))
	}
}

func testSmallListPages(t *testing.T, srv *testenv.S3Server) {
	o := options(t, srv)
	o.ListPageSize = 3
	s := newStore(t, o)
	var want []string
	for i := range 10 {
		k := fmt.Sprintf("k%02d", i)
		want = append(want, k)
		storagetest.PutBytes(t, s, k, nil)
	}
	if got := storagetest.ListKeys(t, s, "", "k01"); strings.Join(got, ",") != strings.Join(want[2:], ",") {
		t.Fatalf("paged list = %q", got)
	}
}

// testPrefix checks that the key prefix isolates stores in one bucket.
func testPrefix(t *testing.T, srv *testenv.S3Server) {
	o := options(t, srv)
	a := newStore(t, o)
	o.Prefix = "repo-b"
	b := newStore(t, o)
	storagetest.PutBytes(t, a, "x", []byte("a"))
	storagetest.PutBytes(t, b, "x", []byte("b"))
	if got := storagetest.ListKeys(t, a, "", ""); len(got) != 1 || got[0] != "x" {
		t.Fatalf("list of prefix repo/ = %q", got)
	}
	if string(storagetest.ReadAll(t, b, "x")) != "b" {
		t.Fatal("prefixes are not isolated")
	}
	if b.String() != "s3://"+o.Bucket+"/repo-b?endpoint="+srv.Endpoint {
		t.Errorf("String() = %s", b)
	}
}

// testMultipart checks that large objects really go up in parts, with
// part checksums the server kept.
func testMultipart(t *testing.T, srv *testenv.S3Server) {
	ctx := context.Background()
	s := newStore(t, options(t, srv))
	data := storagetest.Data(10, storagetest.LargeSize)
	storagetest.PutBytes(t, s, "large", data)
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey("large")})
	if err != nil {
		t.Fatal(err)
	}
	if etag := aws.ToString(out.ETag); !strings.HasSuffix(strings.Trim(etag, `"`), "-3") {
		t.Errorf("ETag %s of a %d-byte object with 5 MiB parts: want a 3-part multipart ETag", etag, len(data))
	}
	// Below the threshold: one PUT.
	storagetest.PutBytes(t, s, "small", data[:5<<20-1])
	out, err = s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey("small")})
	if err != nil {
		t.Fatal(err)
	}
	if etag := aws.ToString(out.ETag); strings.Contains(etag, "-") {
		t.Errorf("ETag %s of an object below the threshold looks multipart", etag)
	}
}

// testOutage takes the server down in the middle of a retried write and
// brings it back: the write completes, and was logged as retried.
func testOutage(t *testing.T, srv *testenv.S3Server) {
	ctx := context.Background()
	o := options(t, srv)
	log := &testLogger{t: t}
	s := retry.New(newStore(t, o), retry.Options{MaxElapsed: time.Minute, InitialBackoff: 50 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond, Logger: slog.New(log)})
	srv.Stop()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		restarted <- srv.Start()
	}()
	data := storagetest.Data(9, 1<<20)
	if err := s.Put(ctx, "during-outage", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("put across an outage: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(storagetest.ReadAll(t, s, "during-outage"), data) {
		t.Fatal("content differs")
	}
	if len(log.warnings()) == 0 {
		t.Error("no retry was logged")
	}
}

// TestUnreachable points at a port nobody listens on: connection refused
// is transient, and the retry bound ends it with a clear message.
func TestUnreachable(t *testing.T) {
	port := testenv.FreePort(t)
	s, err := New(context.Background(), Options{
		Bucket: "b", Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), PathStyle: true,
		AccessKeyID: "a", SecretAccessKey: "b",
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Head(context.Background(), "wal/x")
	if !storage.IsTransient(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("head on a closed port: %v, want transient connection refused", err)
	}
	rs := retry.New(s, retry.Options{MaxElapsed: 500 * time.Millisecond, InitialBackoff: 20 * time.Millisecond})
	err = rs.Put(context.Background(), "wal/000000010000000000000001", bytes.NewReader([]byte("x")), 1)
	var gu *retry.GiveUpError
	if !errors.As(err, &gu) || gu.Attempts < 2 || storage.IsTransient(err) {
		t.Fatalf("put to an unreachable store: %v, want a give-up after several attempts", err)
	}
	for _, want := range []string{"put wal/000000010000000000000001", "gave up after", "connection refused", fmt.Sprint(port)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not contain %q", err, want)
		}
	}
	t.Log(err)
}

func TestUnresolvableHost(t *testing.T) {
	s, err := New(context.Background(), Options{Bucket: "b", Endpoint: "http://no-such-host.invalid:9000",
		PathStyle: true, AccessKeyID: "a", SecretAccessKey: "b"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Head(context.Background(), "x")
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "endpoint") {
		t.Fatalf("head on an unresolvable host: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	for _, o := range []Options{
		{},
		{Bucket: "b", Endpoint: "ftp://x"},
		{Bucket: "b", Endpoint: "http://"},
		{Bucket: "b", PartSize: 1 << 20},
		{Bucket: "b", CAFile: "/nonexistent/ca.pem"},
	} {
		if _, err := New(context.Background(), o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// TestStalledConnection talks to a server that accepts connections and
// then says nothing: the stall timeout turns that into a transient error
// instead of a hang.
func TestStalledConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c) // read the request, never answer
		}
	}()
	s, err := New(context.Background(), Options{Bucket: "b", Endpoint: "http://" + l.Addr().String(),
		PathStyle: true, AccessKeyID: "a", SecretAccessKey: "b", StallTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Head(context.Background(), "wal/x")
	if !storage.IsTransient(err) || !strings.Contains(err.Error(), "timeout") || !strings.Contains(err.Error(), "wal/x") {
		t.Fatalf("head on a silent server: %v, want a transient timeout", err)
	}
	t.Log(err)
}

// TestNoExpectContinue: large uploads (packs, WAL objects) go out without
// "Expect: 100-continue", which would cost a round trip each, or the
// transport's one-second wait on a server that never answers it.
func TestNoExpectContinue(t *testing.T) {
	var expect atomic.Value
	expect.Store("unset")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			expect.Store(r.Header.Get("Expect"))
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("ETag", `"x"`)
	}))
	defer srv.Close()
	s, err := New(context.Background(), Options{Bucket: "b", Endpoint: srv.URL, PathStyle: true, AccessKeyID: "a", SecretAccessKey: "b"})
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte{1}, 3<<20)
	if err := s.Put(context.Background(), "wal/x", bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
	if got := expect.Load().(string); got != "" {
		t.Fatalf("a %d-byte PUT carried Expect: %q", len(body), got)
	}
}
