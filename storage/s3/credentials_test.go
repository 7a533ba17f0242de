package s3

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/retry"
)

// TestNoCredentials: with no credentials anywhere (off EC2), a request
// fails at once, permanently, with one line naming the variables to set,
// and no word about the instance metadata service.
func TestNoCredentials(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"} {
		t.Setenv(v, "")
	}
	s := newStore(t, Options{Bucket: "b", Endpoint: "http://127.0.0.1:9", PathStyle: true})
	if onEC2() {
		t.Skip("this machine is an EC2 instance: the metadata service is a credential source here")
	}
	_, err := retry.New(s, retry.Options{MaxElapsed: time.Minute}).Head(context.Background(), "config")
	if !errors.Is(err, storage.ErrPermanent) || storage.IsTransient(err) {
		t.Fatalf("head without credentials: %v, want a permanent error", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "AWS_ACCESS_KEY_ID") || !strings.Contains(msg, "AWS_SECRET_ACCESS_KEY") ||
		strings.Contains(msg, "IMDS") || strings.Contains(msg, "\n") {
		t.Fatalf("head without credentials: %q", msg)
	}
	t.Log(msg)
	// A shared credentials file is a source: the SDK's chain is used.
	os.MkdirAll(filepath.Join(home, ".aws"), 0o700)
	os.WriteFile(filepath.Join(home, ".aws", "credentials"), []byte("[default]\n"), 0o600)
	if !chainHasSource(os.Getenv) {
		t.Fatal("~/.aws/credentials is not taken for a credential source")
	}
}
