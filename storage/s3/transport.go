package s3

import (
	"crypto/tls"
	"net/http"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// newHTTPClient returns a client tuned for many parallel transfers to one
// endpoint: a deep idle pool (the default keeps 2 connections per host, so
// 16 parallel uploads would reconnect all the time), large buffers, no
// transparent gzip (it would hide the real Content-Length), and connections
// that give up when nothing moves for stall.
//
// It is the SDK's buildable client so that the SDK can still add the CAs of
// AWS_CA_BUNDLE, which users of AWS tools expect to work.
func newHTTPClient(tlsConf *tls.Config, stall time.Duration, maxConns int) *awshttp.BuildableClient {
	// No overall Timeout: a large body may take long; stalls are caught by
	// the connection instead, and the caller's context ends the rest.
	return awshttp.NewBuildableClient().WithTimeout(0).WithTransportOptions(func(tr *http.Transport) {
		driver.TuneTransport(tr, tlsConf, stall, maxConns)
	})
}
