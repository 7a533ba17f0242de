package gcs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// options for a store in a fresh bucket, with resumable uploads from 5 MiB
// so the suite's large object takes that path too.
func options(t *testing.T, srv *testenv.GCSServer) Options {
	return Options{
		Bucket:             srv.NewBucket(t),
		Prefix:             "repo/",
		Endpoint:           srv.Endpoint,
		ResumableThreshold: 5 << 20,
		ChunkSize:          4 << 20,
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

func TestFakeGCS(t *testing.T) {
	t.Parallel()
	srv := testenv.FakeGCS(t)
	t.Run("Conformance", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t, options(t, srv)) })
	})
	t.Run("NoBucket", func(t *testing.T) {
		o := options(t, srv)
		o.Bucket = "no-such-bucket"
		s := newStore(t, o)
		var err error
		for _, e := range s.List(context.Background(), "", "") {
			err = e
		}
		if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "no-such-bucket") {
			t.Fatalf("list of a missing bucket: %v", err)
		}
	})
	t.Run("SmallListPages", func(t *testing.T) {
		o := options(t, srv)
		o.ListPageSize = 3
		storagetest.PagedList(t, newStore(t, o))
	})
	t.Run("Outage", func(t *testing.T) {
		s := retry.New(newStore(t, options(t, srv)), retry.Options{MaxElapsed: time.Minute, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
		storagetest.Outage(t, s, srv.Stop, srv.Start)
	})
}

func TestUnreachable(t *testing.T) {
	port := testenv.FreePort(t)
	s, err := New(context.Background(), Options{Bucket: "b", Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Head(context.Background(), "wal/x")
	if !storage.IsTransient(err) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "wal/x") {
		t.Fatalf("head on a closed port: %v, want transient connection refused naming the object", err)
	}
}
