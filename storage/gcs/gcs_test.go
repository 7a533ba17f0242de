package gcs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// options for a store in a fresh bucket.
func options(t *testing.T, srv *testenv.GCSServer) Options {
	return Options{Bucket: srv.NewBucket(t), Prefix: "repo/", Endpoint: srv.Endpoint}
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
	t.Run("DamagedUpload", func(t *testing.T) {
		// A proxy flips the last byte of every upload body on the way:
		// the service refuses it by its CRC32C, and the store says the
		// failure is transient (sending again cures damage in transit).
		target, _ := url.Parse(srv.Endpoint)
		p := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			if r.In.Method == http.MethodPost {
				b, _ := io.ReadAll(r.In.Body)
				i := bytes.LastIndex(b, []byte("\r\n--"))
				b[i-1] ^= 0xff
				r.Out.Body = io.NopCloser(bytes.NewReader(b))
			}
		}})
		defer p.Close()
		o := options(t, srv)
		o.Endpoint = p.URL
		err := newStore(t, o).Put(context.Background(), "k", bytes.NewReader([]byte("payload")), 7)
		if !storage.IsTransient(err) || !strings.Contains(err.Error(), "checksum") {
			t.Fatalf("upload damaged on the way: %v, want a transient checksum failure", err)
		}
		o.Endpoint = srv.Endpoint
		if _, err := newStore(t, o).Head(context.Background(), "k"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the damaged object was stored: %v", err)
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
