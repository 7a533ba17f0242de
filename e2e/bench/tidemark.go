package bench

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// Tidemark is a tidemark repository for a benchmark, with what a server
// (archive_command) and the CLI need to reach it.
type Tidemark struct {
	Bin      string
	URL      string
	Identity string   // age identity file the server user can read
	Env      []string // TIDEMARK_REPO, TIDEMARK_IDENTITY and S3 credentials
	Repo     *repo.Repo
}

// NewTidemark initialises a repository under "tidemark/" in bucket of srv.
// With TLS, the server's CA is copied where the server user can read it.
func NewTidemark(t testing.TB, srv *testenv.S3Server, bucket string) *Tidemark {
	t.Helper()
	dir := testenv.SharedDir(t)
	u, err := url.Parse(srv.URL(bucket, "tidemark"))
	if err != nil {
		t.Fatal(err)
	}
	if srv.CAFile != "" {
		ca, err := os.ReadFile(srv.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "ca.pem")
		if err := os.WriteFile(p, ca, 0o644); err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("ca-file", p)
		u.RawQuery = q.Encode()
	}
	tm := &Tidemark{Bin: testenv.Tidemark(t), URL: u.String()}
	env := map[string]string{}
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	st, err := location.Open(t.Context(), tm.URL, location.Options{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "bench")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(t.Context(), st, repo.InitOptions{Key: spec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	tm.Repo = r
	tm.Identity = filepath.Join(dir, "identity.txt")
	if err := os.WriteFile(tm.Identity, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, dir)
	tm.Env = append([]string{"TIDEMARK_REPO=" + tm.URL, "TIDEMARK_IDENTITY=" + tm.Identity}, srv.Env()...)
	// The processes PostgreSQL starts (wal-push, wal-fetch and its
	// prefetcher) profile too when the benchmark asks for profiles.
	if d := os.Getenv("TIDEMARK_PROFILE_DIR"); d != "" {
		tm.Env = append(tm.Env, "TIDEMARK_PROFILE_DIR="+d)
	}
	return tm
}

// ArchiveCommand is archive_command for this repository.
func (tm *Tidemark) ArchiveCommand() string { return tm.Bin + " wal-push %p" }
