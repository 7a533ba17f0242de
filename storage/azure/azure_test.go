package azure

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// options for a store in a fresh container, with staged blocks from 5 MiB
// so the suite's large object takes the block path too.
func options(t *testing.T, srv *testenv.AzureServer) Options {
	return Options{
		Account:        srv.Account,
		Container:      srv.NewContainer(t),
		Prefix:         "repo/",
		Endpoint:       srv.Endpoint,
		SharedKey:      srv.SharedKey,
		BlockThreshold: 5 << 20,
		BlockSize:      5 << 20,
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

func TestAzurite(t *testing.T) {
	t.Parallel()
	srv := testenv.Azurite(t)
	t.Run("Conformance", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t, options(t, srv)) })
	})
	t.Run("SAS", func(t *testing.T) {
		o := options(t, srv)
		cred, err := container.NewSharedKeyCredential(o.Account, o.SharedKey)
		if err != nil {
			t.Fatal(err)
		}
		perms := sas.ContainerPermissions{Read: true, Add: true, Create: true, Write: true, Delete: true, List: true}
		q, err := sas.BlobSignatureValues{
			Protocol: sas.ProtocolHTTPSandHTTP, ExpiryTime: time.Now().Add(time.Hour),
			ContainerName: o.Container, Permissions: perms.String(),
		}.SignWithSharedKey(cred)
		if err != nil {
			t.Fatal(err)
		}
		o.SharedKey, o.SASToken = "", q.Encode()
		s := newStore(t, o)
		storagetest.PutBytes(t, s, "k", []byte("v"))
		if err := s.Create(context.Background(), "k", bytes.NewReader([]byte("w")), 1); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("create over an existing key with a SAS: %v", err)
		}
		if got := storagetest.ListKeys(t, s, "", ""); len(got) != 1 {
			t.Fatalf("list with a SAS = %q", got)
		}
	})
	t.Run("WrongKey", func(t *testing.T) {
		o := options(t, srv)
		o.SharedKey = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
		rs := retry.New(newStore(t, o), retry.Options{MaxElapsed: time.Minute})
		err := rs.Put(context.Background(), "k", bytes.NewReader([]byte("x")), 1)
		if !errors.Is(err, storage.ErrPermanent) || storage.IsTransient(err) || !strings.Contains(err.Error(), "AZURE_STORAGE_KEY") {
			t.Fatalf("put with a wrong key: %v, want a permanent error naming AZURE_STORAGE_KEY", err)
		}
		t.Log(err)
	})
	t.Run("NoContainer", func(t *testing.T) {
		o := options(t, srv)
		o.Container = "no-such-container"
		s := newStore(t, o)
		_, err := s.Get(context.Background(), "k")
		if !errors.Is(err, storage.ErrPermanent) || errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), "create the container") {
			t.Fatalf("get from a missing container: %v, want permanent, not not-found", err)
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
	s, err := New(context.Background(), Options{Account: "a", Container: "c",
		Endpoint: fmt.Sprintf("http://127.0.0.1:%d/a", port), SharedKey: "a2V5"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Head(context.Background(), "wal/x")
	if !storage.IsTransient(err) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "wal/x") {
		t.Fatalf("head on a closed port: %v, want transient connection refused naming the object", err)
	}
}

func TestNewErrors(t *testing.T) {
	for _, o := range []Options{
		{},
		{Account: "a"},
		{Account: "a", Container: "c", SharedKey: "a2V5", SASToken: "sv=x"},
		{Account: "a", Container: "c", Endpoint: "ftp://x", SharedKey: "a2V5"},
		{Account: "a", Container: "c", SharedKey: "not base64!"},
	} {
		if _, err := New(context.Background(), o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}
