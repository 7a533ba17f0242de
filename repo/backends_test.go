package repo

import (
	"context"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// extraBackends are real S3 servers: a MinIO per test (started by testenv,
// stopped by its cleanup), a fresh bucket each, opened through the same
// repository URL and credentials the CLI uses.
func extraBackends() []backend {
	return []backend{{"minio", func(t *testing.T) storage.Store {
		srv := testenv.MinIO(t)
		bucket := srv.NewBucket(t)
		env := srv.Env()
		st, err := location.Open(context.Background(), srv.URL(bucket, "repo"), location.Options{
			Logger: testLogger(t),
			Getenv: func(name string) string {
				for _, kv := range env {
					if k, v, _ := strings.Cut(kv, "="); k == name {
						return v
					}
				}
				return ""
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}}}
}
