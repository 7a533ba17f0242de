package storage_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/tidemarkdb/tidemark/storage"
)

// TestIsUnavailable: what a second repository may be tried on, and what
// it may not.
func TestIsUnavailable(t *testing.T) {
	dns := &net.DNSError{Err: "no such host", Name: "s3.example", IsNotFound: true}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&storage.Error{Op: "get", Key: "k", Err: errors.New("connection refused"), Transient: true}, true},
		{&storage.Error{Op: "get", Key: "k", Err: fmt.Errorf("gave up: %w", storage.ErrUnavailable)}, true},
		{&storage.Error{Op: "get", Key: "k", Err: fmt.Errorf("cannot resolve: %w (%w)", dns, storage.ErrPermanent)}, true},
		{fmt.Errorf("open repository: %w", &storage.Error{Op: "get", Key: "config", Err: errors.New("i/o timeout"), Transient: true}), true},
		{&storage.Error{Op: "get", Key: "k", Err: storage.ErrNotFound}, false},
		{&storage.Error{Op: "get", Key: "k", Err: fmt.Errorf("access denied: %w", storage.ErrPermanent)}, false},
		{&storage.Error{Op: "get", Key: "k", Err: context.Canceled}, false},
		{errors.New("corrupt"), false},
		{nil, false},
	} {
		if got := storage.IsUnavailable(tc.err); got != tc.want {
			t.Errorf("IsUnavailable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
