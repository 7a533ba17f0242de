package gcs

import (
	"context"
	"net/http"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

// authTransport adds Application Default Credentials to base.
func authTransport(ctx context.Context, base http.RoundTripper) (http.RoundTripper, error) {
	creds, err := google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/devstorage.read_write")
	if err != nil {
		return nil, err
	}
	return &oauth2.Transport{Source: creds.TokenSource, Base: base}, nil
}
