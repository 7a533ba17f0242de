package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

// TestObjectSettingsHeaders checks, with a server that records requests,
// what uploads ask for: the storage class by key prefix (longest wins),
// SSE-KMS with the key, on single PUTs and on multipart uploads, and the
// object lock of the locking view. MinIO offers none of STANDARD_IA or
// GLACIER_IR, so these classes can only be checked as headers sent.
func TestObjectSettingsHeaders(t *testing.T) {
	var mu sync.Mutex
	got := map[string]http.Header{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodHead {
			w.WriteHeader(http.StatusNotFound) // a multipart Create looks first
			return
		}
		key := strings.TrimPrefix(r.URL.Path, "/bucket1/")
		if r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
			w.Header().Set("ETag", `"p"`)
			return
		}
		mu.Lock()
		if r.Method == http.MethodPut || r.URL.Query().Has("uploads") {
			got[key] = r.Header.Clone()
		}
		mu.Unlock()
		switch {
		case r.URL.Query().Has("uploads"):
			io.WriteString(w, `<InitiateMultipartUploadResult><Bucket>bucket1</Bucket><Key>`+key+`</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>`)
		case r.URL.Query().Has("uploadId"):
			io.WriteString(w, `<CompleteMultipartUploadResult><Bucket>bucket1</Bucket><Key>`+key+`</Key><ETag>"x-2"</ETag></CompleteMultipartUploadResult>`)
		default:
			w.Header().Set("ETag", `"x"`)
		}
	}))
	defer srv.Close()
	s, err := New(context.Background(), Options{Bucket: "bucket1", Endpoint: srv.URL, PathStyle: true, AccessKeyID: "a", SecretAccessKey: "b",
		MultipartThreshold: 5 << 20, PartSize: 5 << 20,
		StorageClasses: []PrefixClass{{Prefix: "", Class: "STANDARD"}, {Prefix: "data/", Class: "STANDARD_IA"}, {Prefix: "wal/", Class: "GLACIER_IR"}},
		SSE:            "aws:kms", SSEKMSKeyID: "arn:aws:kms:eu-west-1:111122223333:key/abcd"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	storagetest.PutBytes(t, s, "data/ab/pack", []byte("x"))
	storagetest.PutBytes(t, s, "wal/1/seg", []byte("x"))
	storagetest.PutBytes(t, s, "snapshots/1/s", []byte("x"))
	big := make([]byte, 6<<20)
	storagetest.PutBytes(t, s, "data/cd/big", big)
	v, err := s.WithRetention(storage.Retention{Mode: storage.RetentionCompliance, Period: 24 * time.Hour,
		Covers: func(k string) bool { return strings.HasPrefix(k, "data/") }})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Create(ctx, "data/ef/locked", bytes.NewReader([]byte("x")), 1); err != nil {
		t.Fatal(err)
	}
	if err := v.Create(ctx, "data/ef/lockedbig", bytes.NewReader(big), int64(len(big))); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"data/ab/pack": "STANDARD_IA", "wal/1/seg": "GLACIER_IR", "snapshots/1/s": "STANDARD",
		"data/cd/big": "STANDARD_IA", "data/ef/locked": "STANDARD_IA", "data/ef/lockedbig": "STANDARD_IA"} {
		h := got[key]
		if h == nil {
			t.Errorf("%s: no upload seen", key)
			continue
		}
		if c := h.Get("X-Amz-Storage-Class"); c != want {
			t.Errorf("%s: storage class %q, want %s", key, c, want)
		}
		if h.Get("X-Amz-Server-Side-Encryption") != "aws:kms" || h.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id") != "arn:aws:kms:eu-west-1:111122223333:key/abcd" {
			t.Errorf("%s: SSE headers %q %q", key, h.Get("X-Amz-Server-Side-Encryption"), h.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"))
		}
		locked := strings.HasPrefix(key, "data/ef/")
		until, _ := time.Parse(time.RFC3339, h.Get("X-Amz-Object-Lock-Retain-Until-Date"))
		if locked != (h.Get("X-Amz-Object-Lock-Mode") == "COMPLIANCE") || locked != until.After(time.Now().Add(23*time.Hour)) {
			t.Errorf("%s: lock headers %q %q", key, h.Get("X-Amz-Object-Lock-Mode"), h.Get("X-Amz-Object-Lock-Retain-Until-Date"))
		}
	}
}

// TestMinIOSSEKMS uploads with SSE-KMS to a MinIO with a KMS: what MinIO
// stores is encrypted with the named key (and a storage class it offers is
// kept); a key the KMS does not have is a permanent error with a hint.
func TestMinIOSSEKMS(t *testing.T) {
	t.Parallel()
	srv := testenv.MinIOWithKMS(t)
	o := options(t, srv)
	o.SSE, o.SSEKMSKeyID = "aws:kms", testenv.MinIOKMSKey
	o.StorageClasses = []PrefixClass{{Prefix: "data/", Class: "REDUCED_REDUNDANCY"}}
	s := newStore(t, o)
	ctx := context.Background()
	for _, size := range []int{100, storagetest.LargeSize} {
		data := storagetest.Data(uint64(size), size)
		storagetest.PutBytes(t, s, "data/k", data)
		if !bytes.Equal(storagetest.ReadAll(t, s, "data/k"), data) {
			t.Fatal("read back differs")
		}
		h, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey("data/k")})
		if err != nil {
			t.Fatal(err)
		}
		if h.ServerSideEncryption != "aws:kms" || !strings.HasSuffix(aws.ToString(h.SSEKMSKeyId), testenv.MinIOKMSKey) || h.StorageClass != "REDUCED_REDUNDANCY" {
			t.Fatalf("%d-byte object: SSE %q key %q class %q", size, h.ServerSideEncryption, aws.ToString(h.SSEKMSKeyId), h.StorageClass)
		}
	}
	o.SSEKMSKeyID = "no-such-key"
	err := newStore(t, o).Put(ctx, "data/x", bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "sse-kms-key-id") {
		t.Fatalf("put with an unknown KMS key: %v", err)
	}
	o.SSEKMSKeyID, o.StorageClasses = testenv.MinIOKMSKey, []PrefixClass{{Class: "STANDARD_IA"}}
	err = newStore(t, o).Put(ctx, "data/x", bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "storage-class=") {
		t.Fatalf("put with a class MinIO lacks: %v", err)
	}
}
