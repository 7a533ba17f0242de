package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/fs"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/s3"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// counter is a waiter that never waits and counts what it was charged:
// the tests check the accounting, never the clock.
type counter struct {
	burst   int
	charged atomic.Int64
	calls   atomic.Int64
}

func (c *counter) WaitN(_ context.Context, n int) error {
	if n > c.burst {
		panic("asked for more than the burst")
	}
	c.charged.Add(int64(n))
	c.calls.Add(1)
	return nil
}

func (c *counter) Burst() int { return c.burst }

// TestConformance: a limited store is a store (the conformance suite on
// the fs backend), at a rate high enough not to slow the suite down.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		st, err := fs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return New(st, 1<<40, 1<<40)
	})
}

// TestNotLimited: no limit, no wrapper.
func TestNotLimited(t *testing.T) {
	st, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if New(st, 0, 0) != storage.Store(st) {
		t.Fatal("New without limits wrapped the store")
	}
}

// TestChargesWhatGoesOverTheWire: against MinIO through the S3 driver
// (which reads an upload's body twice, once for its CRC32C), an upload is
// charged its size once, a download its bytes, a ranged download its range;
// HEAD, LIST and DELETE nothing; and no wait asks for more than the burst.
func TestChargesWhatGoesOverTheWire(t *testing.T) {
	srv := testenv.MinIO(t)
	inner, err := s3.New(t.Context(), s3.Options{Bucket: srv.NewBucket(t), Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, PartSize: 5 << 20, MultipartThreshold: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	up, down := &counter{burst: 64 << 10}, &counter{burst: 64 << 10}
	st := &Store{inner: retry.New(inner, retry.Options{}), up: up, down: down}
	ctx := t.Context()
	for _, size := range []int{1000, 3 << 20, 12 << 20} { // single PUT and multipart
		data := storagetest.Data(uint64(size), size)
		up.charged.Store(0)
		if err := st.Create(ctx, "obj", bytes.NewReader(data), int64(size)); err != nil {
			t.Fatal(err)
		}
		if got := up.charged.Load(); got != int64(size) {
			t.Errorf("upload of %d bytes charged %d", size, got)
		}
		down.charged.Store(0)
		rc, err := st.Get(ctx, "obj")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("get: %d bytes, %v", len(got), err)
		}
		if n := down.charged.Load(); n != int64(size) {
			t.Errorf("download of %d bytes charged %d", size, n)
		}
		if _, err := st.Head(ctx, "obj"); err != nil {
			t.Fatal(err)
		}
		for _, err := range st.List(ctx, "", "") {
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Delete(ctx, "obj"); err != nil {
			t.Fatal(err)
		}
	}
	down.charged.Store(0)
	if err := st.Put(ctx, "r", bytes.NewReader(make([]byte, 1<<20)), 1<<20); err != nil {
		t.Fatal(err)
	}
	down.charged.Store(0)
	rc, err := st.GetRange(ctx, "r", 1000, 300<<10)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, rc)
	rc.Close()
	if c := down.charged.Load(); n != 300<<10 || c != n {
		t.Errorf("ranged get of %d bytes charged %d", n, c)
	}
}

// TestUncharged: each byte of an upload's body is charged once, however
// its reads overlap.
func TestUncharged(t *testing.T) {
	b := &upBody{}
	for _, tc := range []struct{ off, n, want int64 }{
		{0, 100, 100}, {0, 100, 0}, {50, 100, 50}, {200, 50, 50}, {100, 150, 50}, {0, 300, 50}, {1000, 10, 10}, {0, 1010, 700},
	} {
		if got := b.uncharged(tc.off, tc.n); got != tc.want {
			t.Errorf("uncharged(%d, %d) = %d, want %d (charged %v)", tc.off, tc.n, got, tc.want, b.charged)
		}
	}
	if len(b.charged) != 1 || b.charged[0] != (span{0, 1010}) {
		t.Errorf("charged spans %v, want one [0, 1010)", b.charged)
	}
}

// TestLockedBucket: a limited store keeps the object lock capability of the
// store beneath it (a locked repository opens through it as through any
// other): on a MinIO bucket with S3 Object Lock, an object written through
// the limited locking view is locked, and its upload charged.
func TestLockedBucket(t *testing.T) {
	srv := testenv.MinIO(t)
	inner, err := s3.New(t.Context(), s3.Options{Bucket: srv.NewLockedBucket(t), Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	up := &counter{burst: 64 << 10}
	st := &Store{inner: retry.New(inner, retry.Options{}), up: up}
	if err := st.CheckRetention(t.Context()); err != nil {
		t.Fatalf("CheckRetention through the limited store: %v", err)
	}
	locked, err := st.WithRetention(storage.Retention{Mode: storage.RetentionGovernance, Period: time.Hour, Covers: func(string) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	if err := locked.Create(t.Context(), "data/x", bytes.NewReader(make([]byte, 1000)), 1000); err != nil {
		t.Fatal(err)
	}
	if up.charged.Load() != 1000 {
		t.Errorf("the locking view charged %d bytes, want 1000", up.charged.Load())
	}
	out, err := inner.Client().HeadObject(t.Context(), &awss3.HeadObjectInput{Bucket: aws.String(inner.Bucket()), Key: aws.String("data/x")})
	if err != nil || out.ObjectLockRetainUntilDate == nil {
		t.Fatalf("the object is not locked: %v %+v", err, out)
	}
	// A store without the capability says so, as retry does.
	plain, _ := fs.New(t.TempDir())
	if err := (&Store{inner: plain}).CheckRetention(t.Context()); !errors.Is(err, storage.ErrPermanent) {
		t.Errorf("CheckRetention on fs: %v", err)
	}
}
