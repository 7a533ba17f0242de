package s3

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// TestMinIOObjectLock checks the locking view on a MinIO bucket with object
// lock: covered objects cannot be deleted or replaced before their
// retention date, by tidemark or by anyone holding the same credentials,
// and are deleted with all their versions after it; other objects keep no
// stale versions.
func TestMinIOObjectLock(t *testing.T) {
	t.Parallel()
	srv := testenv.MinIO(t)
	ctx := context.Background()

	t.Run("BucketWithoutLock", func(t *testing.T) {
		s := newStore(t, options(t, srv))
		err := s.CheckRetention(ctx)
		if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "object-lock-enabled-for-bucket") {
			t.Fatalf("check on a bucket without object lock: %v", err)
		}
	})
	for _, mode := range []string{storage.RetentionCompliance, storage.RetentionGovernance} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			o := options(t, srv)
			o.Bucket = srv.NewLockedBucket(t)
			s := newStore(t, o)
			if err := s.CheckRetention(ctx); err != nil {
				t.Fatal(err)
			}
			const period = 4 * time.Second
			v, err := s.WithRetention(storage.Retention{Mode: mode, Period: period,
				Covers: func(k string) bool { return strings.HasPrefix(k, "data/") }})
			if err != nil {
				t.Fatal(err)
			}
			written := time.Now()
			small, large := []byte("pack"), storagetest.Data(1, storagetest.LargeSize)
			storagetest.PutBytes(t, v, "data/small", small) // Put of a covered key: created locked
			if err := v.Create(ctx, "data/large", bytes.NewReader(large), int64(len(large))); err != nil {
				t.Fatal(err)
			}
			done := time.Now()
			// A second Put of a covered key leaves it alone.
			storagetest.PutBytes(t, v, "data/small", []byte("other"))
			if got := storagetest.ReadAll(t, v, "data/small"); string(got) != "pack" {
				t.Fatalf("covered key replaced: %q", got)
			}
			for _, k := range []string{"data/small", "data/large"} {
				out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey(k)})
				if err != nil {
					t.Fatal(err)
				}
				if string(out.ObjectLockMode) != strings.ToUpper(mode) || out.ObjectLockRetainUntilDate == nil ||
					out.ObjectLockRetainUntilDate.Before(written.Add(period)) {
					t.Fatalf("%s: lock mode %q until %v, want %s until after %v", k, out.ObjectLockMode, out.ObjectLockRetainUntilDate, mode, written.Add(period))
				}
			}
			err = v.Delete(ctx, "data/small", "data/large")
			if !errors.Is(err, storage.ErrLocked) || storage.IsTransient(err) {
				t.Fatalf("delete of locked objects: %v, want ErrLocked", err)
			}
			t.Log(err)
			if got := storagetest.ReadAll(t, v, "data/large"); !bytes.Equal(got, large) {
				t.Fatal("a refused delete changed the object")
			}

			// Objects outside the lock keep one version.
			for i := range 3 {
				storagetest.PutBytes(t, v, "leases/x", []byte{byte(i)})
			}
			if n := countVersions(t, s, "leases/x"); n != 1 {
				t.Errorf("leases/x has %d versions after three puts, want 1", n)
			}
			if err := v.Delete(ctx, "leases/x"); err != nil {
				t.Fatal(err)
			}
			if n := countVersions(t, s, "leases/x"); n != 0 {
				t.Errorf("leases/x has %d versions after delete, want 0", n)
			}

			time.Sleep(time.Until(done.Add(period + 2*time.Second)))
			if err := v.Delete(ctx, "data/small", "data/large"); err != nil {
				t.Fatalf("delete after the lock passed: %v", err)
			}
			for _, k := range []string{"data/small", "data/large"} {
				if n := countVersions(t, s, k); n != 0 {
					t.Errorf("%s has %d versions left after delete", k, n)
				}
			}
		})
	}
}

func countVersions(t *testing.T, s *Store, key string) int {
	t.Helper()
	out, err := s.client.ListObjectVersions(context.Background(), &s3.ListObjectVersionsInput{Bucket: aws.String(s.bucket), Prefix: s.fullKey(key)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range out.Versions {
		if aws.ToString(v.Key) == *s.fullKey(key) {
			n++
		}
	}
	for _, m := range out.DeleteMarkers {
		if aws.ToString(m.Key) == *s.fullKey(key) {
			n++
		}
	}
	return n
}
