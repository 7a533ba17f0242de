package testenv

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Install hints for the Azure and GCS emulators, what scripts/deps.sh runs.
const (
	azuriteInstall  = "npm install --prefix /opt/tidemark/azurite azurite@3.37.0"
	fakeGCSInstall  = "go install github.com/fsouza/fake-gcs-server@v1.56.1"
	azuriteAccount  = "devstoreaccount1"
	azuriteKey      = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	cloudReadyLimit = 30 * time.Second
)

// AzureServer is Azurite's blob service, for one test, on a loopback port
// with its data in a temporary directory.
type AzureServer struct {
	Endpoint  string // blob service URL: http://127.0.0.1:port/devstoreaccount1
	Account   string
	SharedKey string // Azurite's well-known development key

	process
	containers atomic.Int64
}

// Azurite starts Azurite's blob service (TIDEMARK_AZURITE_BIN, the
// scripts/deps.sh install, $PATH).
func Azurite(t testing.TB) *AzureServer {
	t.Helper()
	bin := FindBinary("azurite-blob", "TIDEMARK_AZURITE_BIN", filepath.Join(DepsDir(), "azurite", "node_modules", ".bin"))
	if bin == "" {
		Missing(t, "Azurite", azuriteInstall)
	}
	dir := t.TempDir()
	port := FreePort(t)
	s := &AzureServer{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d/%s", port, azuriteAccount),
		Account:   azuriteAccount,
		SharedKey: azuriteKey,
		process: process{t: t, name: "azurite", logPath: filepath.Join(dir, "server.log"), dir: dir,
			graceful: syscall.SIGINT},
	}
	// --skipApiVersionCheck: the SDK may speak a newer service version
	// than this Azurite knows. --loose: ignore headers Azurite does not
	// implement rather than fail the request.
	s.args = []string{bin, "--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port),
		"--location", filepath.Join(dir, "data"), "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl"}
	s.env = os.Environ()
	s.ready = func(ctx context.Context, c *http.Client) bool {
		return httpStatus(ctx, c, s.Endpoint+"?comp=list") != 0 // any answer: it is listening
	}
	s.launch(t)
	return s
}

// NewContainer creates a fresh, empty container and returns its name.
func (s *AzureServer) NewContainer(t testing.TB) string {
	t.Helper()
	name := bucketName(t.Name(), s.containers.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), cloudReadyLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.Endpoint+"/"+name+"?restype=container", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := signAzure(req, s.Account, s.SharedKey); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create container %s on azurite: %v", name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create container %s on azurite: %s", name, resp.Status)
	}
	return name
}

// URL returns the tidemark repository URL for a container and key prefix.
func (s *AzureServer) URL(container, prefix string) string {
	q := url.Values{}
	q.Set("account", s.Account)
	q.Set("endpoint", s.Endpoint)
	u := url.URL{Scheme: "azure", Host: container, RawQuery: q.Encode()}
	if p := strings.Trim(prefix, "/"); p != "" {
		u.Path = "/" + p
	}
	return u.String()
}

// Env returns the environment a child process (tidemark run by a test)
// needs to reach the server.
func (s *AzureServer) Env() []string {
	return []string{"AZURE_STORAGE_KEY=" + s.SharedKey}
}

// GCSServer is fake-gcs-server, for one test, on a loopback port with its
// data in a temporary directory.
type GCSServer struct {
	Endpoint string // http://127.0.0.1:port

	process
	buckets atomic.Int64
}

// FakeGCS starts fake-gcs-server (TIDEMARK_FAKE_GCS_BIN, $PATH or
// $GOPATH/bin) with its file-system backend.
func FakeGCS(t testing.TB) *GCSServer {
	t.Helper()
	bin := FindBinary("fake-gcs-server", "TIDEMARK_FAKE_GCS_BIN", filepath.Join(DepsDir(), "bin"))
	if bin == "" {
		Missing(t, "fake-gcs-server", fakeGCSInstall)
	}
	dir := t.TempDir()
	port := FreePort(t)
	s := &GCSServer{
		Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port),
		process:  process{t: t, name: "fake-gcs-server", logPath: filepath.Join(dir, "server.log")},
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	s.args = []string{bin, "-scheme", "http", "-host", "127.0.0.1", "-port", fmt.Sprint(port),
		"-public-host", fmt.Sprintf("127.0.0.1:%d", port), "-external-url", s.Endpoint,
		"-backend", "filesystem", "-filesystem-root", data, "-log-level", "warn"}
	s.env = os.Environ()
	s.ready = func(ctx context.Context, c *http.Client) bool {
		return httpStatus(ctx, c, s.Endpoint+"/storage/v1/b") == http.StatusOK
	}
	s.launch(t)
	return s
}

// NewBucket creates a fresh, empty bucket and returns its name.
func (s *GCSServer) NewBucket(t testing.TB) string {
	t.Helper()
	name := bucketName(t.Name(), s.buckets.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), cloudReadyLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.Endpoint+"/storage/v1/b",
		strings.NewReader(fmt.Sprintf(`{"name":%q}`, name)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create bucket %s on fake-gcs-server: %v", name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create bucket %s on fake-gcs-server: %s", name, resp.Status)
	}
	return name
}

// URL returns the tidemark repository URL for a bucket and key prefix.
func (s *GCSServer) URL(bucket, prefix string) string {
	u := url.URL{Scheme: "gs", Host: bucket, RawQuery: url.Values{"endpoint": {s.Endpoint}}.Encode()}
	if p := strings.Trim(prefix, "/"); p != "" {
		u.Path = "/" + p
	}
	return u.String()
}

// Env returns the environment a child process needs: none, the emulator
// takes no credentials.
func (s *GCSServer) Env() []string { return nil }
