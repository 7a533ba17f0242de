package testenv

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Install hints for the S3 servers, the exact commands scripts/deps.sh runs.
const (
	minioInstall     = "go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"
	versitygwInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"
)

// S3Server is an S3-compatible server running for one test on a loopback
// port, with its data in a temporary directory.
type S3Server struct {
	Endpoint  string // http(s)://127.0.0.1:port
	AccessKey string
	SecretKey string
	Region    string
	CAFile    string // PEM of the server's self-signed certificate; "" without TLS

	process
	client  *s3.Client
	buckets atomic.Int64
}

// MinIO starts a MinIO server (TIDEMARK_MINIO_BIN, $PATH or $GOPATH/bin).
func MinIO(t testing.TB) *S3Server { return startMinIO(t, false) }

// MinIOTLS starts a MinIO server on https with a self-signed certificate for
// 127.0.0.1; CAFile holds the certificate.
func MinIOTLS(t testing.TB) *S3Server { return startMinIO(t, true) }

// MinIOKMSKey is the one KMS key of MinIOWithKMS, for SSE-KMS.
const MinIOKMSKey = "tidemark-test-key"

// MinIOWithKMS starts a MinIO server with a built-in KMS holding one key,
// MinIOKMSKey, so that SSE-KMS uploads naming it are encrypted and others
// refused.
func MinIOWithKMS(t testing.TB) *S3Server {
	key := make([]byte, 32)
	rand.Read(key)
	return startMinIO(t, false, "MINIO_KMS_SECRET_KEY="+MinIOKMSKey+":"+base64.StdEncoding.EncodeToString(key))
}

func startMinIO(t testing.TB, useTLS bool, env ...string) *S3Server {
	t.Helper()
	bin := FindBinary("minio", "TIDEMARK_MINIO_BIN", filepath.Join(DepsDir(), "bin"))
	if bin == "" {
		Missing(t, "MinIO", minioInstall)
	}
	dir := t.TempDir()
	port, console := FreePort(t), FreePort(t)
	certs := filepath.Join(dir, "certs") // always set: MinIO would otherwise use ~/.minio/certs
	if err := os.MkdirAll(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &S3Server{
		AccessKey: "tidemark-access",
		SecretKey: "tidemark-secret-key",
		Region:    "us-east-1",
		process:   process{t: t, name: "minio", logPath: filepath.Join(dir, "server.log")},
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
		s.CAFile = filepath.Join(certs, "public.crt")
		writeSelfSigned(t, s.CAFile, filepath.Join(certs, "private.key"))
	}
	s.Endpoint = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
	s.args = []string{bin, "server", filepath.Join(dir, "data"),
		"--address", fmt.Sprintf("127.0.0.1:%d", port),
		"--console-address", fmt.Sprintf("127.0.0.1:%d", console),
		"--certs-dir", certs}
	s.env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	s.env = append(s.env, env...)
	s.ready = func(ctx context.Context, c *http.Client) bool {
		return httpStatus(ctx, c, s.Endpoint+"/minio/health/ready") == http.StatusOK
	}
	s.client0 = s.httpClient
	s.launch(t)
	return s
}

// VersityGW starts versitygw with its posix backend (TIDEMARK_VERSITYGW_BIN,
// $PATH or $GOPATH/bin).
func VersityGW(t testing.TB) *S3Server {
	t.Helper()
	bin := FindBinary("versitygw", "TIDEMARK_VERSITYGW_BIN", filepath.Join(DepsDir(), "bin"))
	if bin == "" {
		Missing(t, "versitygw", versitygwInstall)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	s := &S3Server{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		AccessKey: "tidemark-access",
		SecretKey: "tidemark-secret-key",
		Region:    "us-east-1",
		process:   process{t: t, name: "versitygw", logPath: filepath.Join(dir, "server.log")},
	}
	s.args = []string{bin, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", s.Region, "--port", fmt.Sprintf("127.0.0.1:%d", port), "posix", data}
	s.env = os.Environ()
	s.ready = func(ctx context.Context, c *http.Client) bool {
		return httpStatus(ctx, c, s.Endpoint+"/") != 0 // any answer: it is listening
	}
	s.client0 = s.httpClient
	s.launch(t)
	return s
}

// httpClient trusts the server's certificate, if any.
func (s *S3Server) httpClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// Client returns an SDK client for the server, for test set-up and for
// checks that go around tidemark's own code.
func (s *S3Server) Client() *s3.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = s3.New(s3.Options{
			BaseEndpoint:               aws.String(s.Endpoint),
			Region:                     s.Region,
			UsePathStyle:               true,
			Credentials:                credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
			HTTPClient:                 s.httpClient(),
			RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		})
	}
	return s.client
}

// NewBucket creates a fresh, empty bucket and returns its name.
func (s *S3Server) NewBucket(t testing.TB) string {
	t.Helper()
	return s.newBucket(t, false)
}

// NewLockedBucket creates a fresh bucket with S3 Object Lock enabled (and
// so versioning), as a locked repository needs, and returns its name.
func (s *S3Server) NewLockedBucket(t testing.TB) string {
	t.Helper()
	return s.newBucket(t, true)
}

func (s *S3Server) newBucket(t testing.TB, locked bool) string {
	t.Helper()
	name := bucketName(t.Name(), s.buckets.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		in := &s3.CreateBucketInput{Bucket: aws.String(name)}
		if locked {
			in.ObjectLockEnabledForBucket = aws.Bool(true)
		}
		_, err := s.Client().CreateBucket(ctx, in)
		if err == nil {
			return name
		}
		// MinIO reports ready before its object layer takes requests and
		// answers 503 meanwhile (seen in CI); wait that out, up to ctx.
		var re *awshttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusServiceUnavailable || ctx.Err() != nil {
			t.Fatalf("create bucket %s on %s: %v", name, s.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bucketName makes a valid bucket name (3-63 of [a-z0-9-]) that says which
// test it belongs to.
func bucketName(test string, n int64) string {
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
			b.WriteByte('-')
		}
	}
	suffix := "-" + strconv.FormatInt(n, 10)
	name := strings.Trim(b.String(), "-")
	if len(name) > 63-len(suffix) {
		name = strings.Trim(name[len(name)-(63-len(suffix)):], "-")
	}
	if name == "" {
		name = "t"
	}
	return name + suffix
}

// URL returns the tidemark repository URL for a bucket and key prefix.
func (s *S3Server) URL(bucket, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", s.Endpoint)
	q.Set("region", s.Region)
	q.Set("path-style", "true")
	if s.CAFile != "" {
		q.Set("ca-file", s.CAFile)
	}
	u := url.URL{Scheme: "s3", Host: bucket, Path: "/" + strings.Trim(prefix, "/"), RawQuery: q.Encode()}
	if prefix == "" {
		u.Path = ""
	}
	return u.String()
}

// Env returns the environment a child process (tidemark itself, run by a
// test) needs to reach the server.
func (s *S3Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// writeSelfSigned writes a certificate valid for 127.0.0.1, ::1 and
// localhost, and its key, in PEM.
func writeSelfSigned(t testing.TB, certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "tidemark test S3"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var certPEM, keyPEM bytes.Buffer
	pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	pem.Encode(&keyPEM, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(certPath, certPEM.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}
