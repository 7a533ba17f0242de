package testenv

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestBucketName(t *testing.T) {
	for _, tc := range []struct {
		test string
		n    int64
		want string
	}{
		{"TestConformance/PutGet", 1, "testconformance-putget-1"},
		{"Test_Weird__Name#01", 12, "test-weird-name-01-12"},
		{"///", 3, "t-3"},
		{strings.Repeat("x", 100), 7, strings.Repeat("x", 61) + "-7"},
	} {
		if got := bucketName(tc.test, tc.n); got != tc.want || len(got) > 63 || len(got) < 3 {
			t.Errorf("bucketName(%q, %d) = %q, want %q", tc.test, tc.n, got, tc.want)
		}
	}
}

// TestS3Servers starts each server, stores an object, takes the server down
// and brings it back: the object must survive and the URL must say how to
// reach it.
func TestS3Servers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(testing.TB) *S3Server
	}{
		{"MinIO", MinIO},
		{"MinIOTLS", MinIOTLS},
		{"VersityGW", VersityGW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			srv := tc.start(t)
			bucket := srv.NewBucket(t)
			c := srv.Client()
			_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("k"),
				Body: bytes.NewReader([]byte("v")), ContentLength: aws.Int64(1)})
			if err != nil {
				t.Fatal(err)
			}
			srv.Stop()
			if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")}); err == nil {
				t.Fatal("server still answers after Stop")
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")})
			if err != nil {
				t.Fatalf("after restart: %v", err)
			}
			b, _ := io.ReadAll(out.Body)
			out.Body.Close()
			if string(b) != "v" {
				t.Fatalf("after restart the object holds %q", b)
			}
			u := srv.URL(bucket, "pre/fix")
			if !strings.HasPrefix(u, "s3://"+bucket+"/pre/fix?") || !strings.Contains(u, "path-style=true") ||
				(srv.CAFile != "") != strings.Contains(u, "ca-file=") {
				t.Errorf("URL = %s", u)
			}
			if strings.HasPrefix(srv.Endpoint, "https://") {
				// A client without the CA must not get in.
				if _, err := http.Get(srv.Endpoint); err == nil {
					t.Error("TLS server accepted a client that does not trust its certificate")
				}
			}
			if env := srv.Env(); len(env) < 3 || !strings.HasPrefix(env[0], "AWS_ACCESS_KEY_ID=") {
				t.Errorf("Env = %q", env)
			}
		})
	}
}
