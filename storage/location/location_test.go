package location

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/azure"
	"github.com/tidemarkdb/tidemark/storage/gcs"
	"github.com/tidemarkdb/tidemark/storage/retry"
	"github.com/tidemarkdb/tidemark/storage/s3"
	"github.com/tidemarkdb/tidemark/storage/storagetest"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		url  string
		fs   string
		s3   *s3.Options
		az   *azure.Options
		gs   *gcs.Options
		err  string // substring of the error; "" for success
		leak string // must not appear in the error
	}{
		{url: "file:///var/lib/tidemark", fs: "/var/lib/tidemark"},
		{url: "file:///var/lib/tidemark/", fs: "/var/lib/tidemark"},
		{url: "file:///var/lib/../lib/x", fs: "/var/lib/x"},
		{url: "file://localhost/srv/backup", fs: "/srv/backup"},
		{url: "file:///with%20space", fs: "/with space"},
		{url: "file://rel/path", err: "three slashes: file:///absolute/path"},
		{url: "file:rel", err: "relative path"},
		{url: "file://", err: "no absolute path"},
		{url: "file:///x?region=y", err: "take no options"},
		{url: "/var/lib/tidemark", err: "write file:///var/lib/tidemark"},
		{url: "relative/dir", err: "no scheme"},
		{url: "", err: "no repository URL"},
		{url: "ftp://bucket/x", err: `unknown scheme "ftp"`},

		{url: "azure://c/p/q?account=acct", az: &azure.Options{Container: "c", Prefix: "p/q", Account: "acct"}},
		{url: "azure://c?account=devstoreaccount1&endpoint=http://127.0.0.1:10000/devstoreaccount1/",
			az: &azure.Options{Container: "c", Account: "devstoreaccount1", Endpoint: "http://127.0.0.1:10000/devstoreaccount1"}},
		{url: "azure://c/p", err: "add ?account=NAME"},
		{url: "azure:///p?account=a", err: "no container"},
		{url: "azure://c?account=a&sv=2024&sig=s3cr3t", err: "refused in URLs", leak: "s3cr3t"},
		{url: "azure://c?account=a&endpoint=https://x/?sig=s3cr3t", err: "refused in URLs", leak: "s3cr3t"},
		{url: "azure://c?account=a&region=x", err: "unknown option"},
		{url: "gs://bucket/x", gs: &gcs.Options{Bucket: "bucket", Prefix: "x"}},
		{url: "gs://b?endpoint=http://127.0.0.1:4443", gs: &gcs.Options{Bucket: "b", Endpoint: "http://127.0.0.1:4443"}},
		{url: "gs://b/a//c", err: "segment"},
		{url: "gs://b?account=x", err: "unknown option"},

		{url: "s3://b?data-storage-class=STANDARD_IA&storage-class=STANDARD&sse=aws:kms&sse-kms-key-id=arn:aws:kms:eu-west-1:1:key/abc",
			s3: &s3.Options{Bucket: "b", StorageClasses: []s3.PrefixClass{{Prefix: "", Class: "STANDARD"}, {Prefix: "data/", Class: "STANDARD_IA"}},
				SSE: "aws:kms", SSEKMSKeyID: "arn:aws:kms:eu-west-1:1:key/abc"}},
		{url: "s3://b?wal-storage-class=GLACIER_IR&sse=AES256",
			s3: &s3.Options{Bucket: "b", StorageClasses: []s3.PrefixClass{{Prefix: "wal/", Class: "GLACIER_IR"}}, SSE: "AES256"}},
		{url: "s3://b?storage-class=standard_ia", err: "not a storage class"},
		{url: "s3://b?sse=kms", err: "use sse=AES256"},
		{url: "s3://b?sse-kms-key-id=abc", err: "needs sse=aws:kms"},

		{url: "s3://bucket", s3: &s3.Options{Bucket: "bucket"}},
		{url: "s3://bucket/", s3: &s3.Options{Bucket: "bucket"}},
		{url: "s3://bucket/pre/fix/", s3: &s3.Options{Bucket: "bucket", Prefix: "pre/fix"}},
		{url: "s3://bucket/p?region=eu-west-1", s3: &s3.Options{Bucket: "bucket", Prefix: "p", Region: "eu-west-1"}},
		{url: "s3://b/p?endpoint=https://127.0.0.1:9000&region=r&ca-file=/etc/ca.pem",
			s3: &s3.Options{Bucket: "b", Prefix: "p", Endpoint: "https://127.0.0.1:9000", Region: "r", PathStyle: true, CAFile: "/etc/ca.pem"}},
		{url: "s3://b?endpoint=http://minio:9000/&path-style=false",
			s3: &s3.Options{Bucket: "b", Endpoint: "http://minio:9000"}},
		{url: "s3://b?path-style=true", s3: &s3.Options{Bucket: "b", PathStyle: true}},
		{url: "s3://b?endpoint=https%3A%2F%2Fs3.example.com", s3: &s3.Options{Bucket: "b", Endpoint: "https://s3.example.com", PathStyle: true}},
		{url: "s3:///prefix", err: "no bucket"},
		{url: "s3://bucket:9000/p", err: "endpoint=https://host:port"},
		{url: "s3://b/a//c", err: "segment"},
		{url: "s3://b/a/../c", err: "segment"},
		{url: "s3://b?path-style=maybe", err: "not true or false"},
		{url: "s3://b?endpoint=minio:9000", err: "not an http:// or https:// URL"},
		{url: "s3://b?endpoint=ftp://x", err: "not an http:// or https:// URL"},
		{url: "s3://b?ca-file=relative.pem", err: "absolute path"},
		{url: "s3://b?ca-file=", err: "ca-file is empty"},
		{url: "s3://b?region=a&region=b", err: "given twice"},
		{url: "s3://b?regoin=x", err: `unknown option "regoin" (known: endpoint, region, path-style, ca-file, storage-class,`},
		{url: "s3://b?sk=hunter22", err: "unknown option", leak: "hunter22"},
		// Credentials are refused, and never echoed.
		{url: "s3://AKIAEXAMPLE:s3cr3t@bucket/p", err: "AWS_ACCESS_KEY_ID", leak: "s3cr3t"},
		{url: "s3://bucket/p?access_key=AKIAEXAMPLE&secret_key=s3cr3t", err: "AWS_SECRET_ACCESS_KEY", leak: "s3cr3t"},
		{url: "s3://bucket/p?aws_secret_access_key=s3cr3t", err: "refused in URLs", leak: "s3cr3t"},
		{url: "s3://bucket/p?accessKeyId=AKIAEXAMPLE", err: "refused in URLs", leak: "AKIAEXAMPLE"},
		{url: "s3://bucket/p?session-token=tok3n", err: "refused in URLs", leak: "tok3n"},
		{url: "s3://bucket/p?password=s3cr3t", err: "refused in URLs", leak: "s3cr3t"},
		{url: "s3://b?endpoint=https://user:s3cr3t@host", err: "refused in URLs", leak: "s3cr3t"},
		{url: "file://user:s3cr3t@/x", err: "refused in URLs", leak: "s3cr3t"},
	} {
		loc, err := Parse(tc.url)
		if tc.err != "" {
			if err == nil {
				t.Errorf("Parse(%q) = %+v, want an error containing %q", tc.url, loc, tc.err)
				continue
			}
			if msg := err.Error(); !strings.Contains(msg, tc.err) || strings.Contains(msg, "\n") ||
				(tc.leak != "" && strings.Contains(msg, tc.leak)) {
				t.Errorf("Parse(%q) error:\n  %s\nwant one line containing %q and not %q", tc.url, msg, tc.err, tc.leak)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.url, err)
			continue
		}
		if loc.FS != tc.fs {
			t.Errorf("Parse(%q).FS = %q, want %q", tc.url, loc.FS, tc.fs)
		}
		switch {
		case (loc.S3 == nil) != (tc.s3 == nil):
			t.Errorf("Parse(%q).S3 = %+v, want %+v", tc.url, loc.S3, tc.s3)
		case tc.s3 != nil && !reflect.DeepEqual(*loc.S3, *tc.s3):
			t.Errorf("Parse(%q).S3 =\n  %+v\nwant\n  %+v", tc.url, *loc.S3, *tc.s3)
		case (loc.Azure == nil) != (tc.az == nil) || (tc.az != nil && *loc.Azure != *tc.az):
			t.Errorf("Parse(%q).Azure = %+v, want %+v", tc.url, loc.Azure, tc.az)
		case (loc.GCS == nil) != (tc.gs == nil) || (tc.gs != nil && *loc.GCS != *tc.gs):
			t.Errorf("Parse(%q).GCS = %+v, want %+v", tc.url, loc.GCS, tc.gs)
		}
	}
}

func TestOpenFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "repo")
	st, err := Open(context.Background(), "file://"+dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.(*retry.Store); !ok {
		t.Errorf("Open returned %T, want a *retry.Store", st)
	}
	if st.String() != "file://"+dir {
		t.Errorf("String() = %s", st)
	}
	for _, u := range []string{"file://" + dir, "file://" + dir + "/", "file://" + dir + "/../repo"} {
		if name, err := Name(u); err != nil || name != st.String() {
			t.Errorf("Name(%s) = %q, %v; want %q", u, name, err, st)
		}
	}
	storagetest.PutBytes(t, st, "config", []byte("v1"))
	if got := storagetest.ReadAll(t, st, "config"); string(got) != "v1" {
		t.Fatalf("got %q", got)
	}
}

func env(vars []string) func(string) string {
	return func(name string) string {
		for _, v := range vars {
			if k, val, _ := strings.Cut(v, "="); k == name {
				return val
			}
		}
		return ""
	}
}

// TestOpenS3 opens MinIO over TLS with the URL testenv hands out and the
// credentials from its environment.
func TestOpenS3(t *testing.T) {
	srv := testenv.MinIOTLS(t)
	ctx := context.Background()
	bucket := srv.NewBucket(t)
	st, err := Open(ctx, srv.URL(bucket, "team/db1"), Options{Getenv: env(srv.Env())})
	if err != nil {
		t.Fatal(err)
	}
	// wal-fetch compares Name with the String its spool recorded.
	for _, prefix := range []string{"team/db1", "", "/team/db1/"} {
		opened, err := Open(ctx, srv.URL(bucket, prefix), Options{Getenv: env(srv.Env())})
		if err != nil {
			t.Fatal(err)
		}
		if name, err := Name(srv.URL(bucket, prefix)); err != nil || name != opened.String() {
			t.Errorf("Name = %q, %v; Open(...).String() = %q", name, err, opened)
		}
	}
	storagetest.PutBytes(t, st, "config", []byte("v1"))
	err = st.Create(ctx, "config", bytes.NewReader([]byte("v2")), 2)
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("create over config: %v", err)
	}
	if got := storagetest.ListKeys(t, st, "", ""); len(got) != 1 || got[0] != "config" {
		t.Fatalf("list = %q", got)
	}

	// Half the credentials is a mistake worth a clear word.
	_, err = Open(ctx, srv.URL(bucket, ""), Options{Getenv: env([]string{"AWS_ACCESS_KEY_ID=x"})})
	if err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("open with only an access key: %v", err)
	}

	// Wrong credentials: permanent at once, not after the retry bound.
	bad, err := Open(ctx, srv.URL(bucket, ""), Options{RetryFor: time.Hour,
		Getenv: env([]string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=wrong-secret"})})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.Head(ctx, "config")
	if !errors.Is(err, storage.ErrPermanent) || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("head with a wrong secret: %v", err)
	}
}
