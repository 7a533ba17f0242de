package s3

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
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
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	// No overall Timeout: a large body may take long; stalls are caught by
	// the connection instead, and the caller's context ends the rest.
	return awshttp.NewBuildableClient().WithTimeout(0).WithTransportOptions(func(tr *http.Transport) {
		tr.Proxy = http.ProxyFromEnvironment
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &stallConn{Conn: c, timeout: stall}, nil
		}
		if tlsConf != nil {
			tr.TLSClientConfig = tlsConf.Clone()
		}
		tr.TLSHandshakeTimeout = 10 * time.Second
		tr.MaxIdleConns = 256
		tr.MaxIdleConnsPerHost = 128
		tr.MaxConnsPerHost = maxConns
		tr.IdleConnTimeout = min(90*time.Second, stall/2)
		tr.ExpectContinueTimeout = time.Second
		tr.DisableCompression = true
		tr.WriteBufferSize = 256 << 10
		tr.ReadBufferSize = 256 << 10
		tr.ForceAttemptHTTP2 = false
	})
}

// stallConn fails a read or write when the connection has been silent for
// timeout. A write also pushes the read deadline out: after sending a
// request the client is waiting for its answer, not idle.
//
// This is what turns a half-dead TCP connection (a server that vanished, a
// NAT that dropped its mapping) into a timely transient error instead of a
// wal-fetch that hangs forever.
type stallConn struct {
	net.Conn
	timeout time.Duration
}

func (c *stallConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(p)
}

func (c *stallConn) Write(p []byte) (int, error) {
	d := time.Now().Add(c.timeout)
	_ = c.Conn.SetWriteDeadline(d)
	_ = c.Conn.SetReadDeadline(d)
	return c.Conn.Write(p)
}
