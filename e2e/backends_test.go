package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// newBackendEnv makes a repository on backend ("file", "s3" on MinIO,
// "s3-locked" on a MinIO bucket with object lock, "azure" on Azurite, "gcs"
// on fake-gcs-server) with an identity the server user can read, through
// the Go API: init's own flags are not what these tests are about. opts
// adds to the key (pack size, lock).
func newBackendEnv(t *testing.T, backend string, opts repo.InitOptions) *restoreEnv {
	t.Helper()
	e := &restoreEnv{t: t, bin: testenv.Tidemark(t), shared: testenv.SharedDir(t)}
	switch backend {
	case "file":
		e.url = "file://" + filepath.Join(e.shared, "repo")
	case "s3", "s3-locked":
		srv := testenv.MinIO(t)
		// testenv reports MinIO ready a moment before it stops answering
		// 503 "server not initialized" on a loaded machine.
		waitFor(t, func() bool {
			_, err := srv.Client().ListBuckets(t.Context(), &awss3.ListBucketsInput{})
			return err == nil
		})
		bucket := ""
		if backend == "s3-locked" {
			bucket = srv.NewLockedBucket(t)
		} else {
			bucket = srv.NewBucket(t)
		}
		e.url, e.env, e.s3 = srv.URL(bucket, "tidemark"), srv.Env(), srv
	case "azure":
		srv := testenv.Azurite(t)
		e.url, e.env = srv.URL(srv.NewContainer(t), "tidemark"), srv.Env()
	case "gcs":
		srv := testenv.FakeGCS(t)
		e.url, e.env = srv.URL(srv.NewBucket(t), "tidemark"), srv.Env()
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	for _, kv := range e.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	e.identity = filepath.Join(e.shared, "identity.txt")
	if err := os.WriteFile(e.identity, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.ChownToServer(t, e.identity)
	st, err := location.Open(t.Context(), e.url, location.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Key, err = repo.ParseRecipient(id.Recipient().String(), "e2e"); err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(t.Context(), st, opts)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if backend == "file" {
		testenv.ChownToServer(t, filepath.Join(e.shared, "repo"))
	}
	return e
}
