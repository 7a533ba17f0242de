// Package driver holds what the network object-store drivers (storage/s3,
// storage/azure, storage/gcs) share: the key rules of the storage
// contract, an HTTP transport tuned for many parallel transfers that turns a
// silent connection into an error, and the classification of network
// failures as transient or permanent.
//
// It knows nothing of any one service's API or of tidemark's format.
package driver

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultStallTimeout: a connection on which nothing moves for this long is
// dropped (a transient error). Longer than the idle time of a pooled
// connection, so pooled connections are never cut by it.
const DefaultStallTimeout = 2 * time.Minute

// KeyProblem says why key is not a valid object key ("" when it is): keys
// are relative slash-separated paths without empty, "." or ".." segments,
// the ones storage/fs accepts, so a repository can move between backends.
func KeyProblem(key string) string {
	switch {
	case key == "":
		return "empty"
	case strings.ContainsRune(key, 0):
		return "contains a NUL byte"
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" {
			return "empty path segment"
		} else if seg == "." || seg == ".." {
			return `"." or ".." segment`
		}
	}
	return ""
}

// TuneTransport sets tr up for many parallel transfers to one endpoint: a
// deep idle pool (the default keeps 2 connections per host, so 16 parallel
// uploads would reconnect all the time), large buffers, no transparent gzip
// (it would hide the real Content-Length), and connections that give up
// when nothing moves for stall. maxConns 0 means no cap.
func TuneTransport(tr *http.Transport, tlsConf *tls.Config, stall time.Duration, maxConns int) {
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
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
}

// NewHTTPClient is an http.Client on a tuned transport, with no overall
// timeout: a large body may take long; stalls are caught by the connection
// instead, and the caller's context ends the rest.
func NewHTTPClient(tlsConf *tls.Config, stall time.Duration, maxConns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	TuneTransport(tr, tlsConf, stall, maxConns)
	return &http.Client{Transport: tr}
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

// NetTransient reports whether a failure without a server answer is
// connection trouble that a retry may cure: a timeout, a refused or reset
// connection, a body cut short. TLS and name-resolution failures are not.
func NetTransient(err error) bool {
	var (
		netErr     net.Error
		errno      syscall.Errno
		dnsErr     *net.DNSError
		connFailed interface{ ConnectionError() bool }
	)
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return false
	case errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout(),
		errors.As(err, &errno) && transientErrno(errno),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.As(err, &connFailed) && connFailed.ConnectionError():
		return true
	}
	return false
}

func transientErrno(errno syscall.Errno) bool {
	switch errno {
	case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EAGAIN:
		return true
	}
	return false
}

// Source is an upload body read from an io.ReaderAt that remembers a
// failure of the source itself, so that a driver can tell "the local file
// broke" (permanent, the caller's problem) from "the network broke"
// (transient) when the SDK hands back one error for both.
type Source struct {
	*io.SectionReader
	mu  sync.Mutex
	err error
}

// NewSource reads size bytes of r from offset off.
func NewSource(r io.ReaderAt, off, size int64) *Source {
	return &Source{SectionReader: io.NewSectionReader(r, off, size)}
}

func (s *Source) Read(p []byte) (int, error) {
	n, err := s.SectionReader.Read(p)
	if err != nil && err != io.EOF {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}
	return n, err
}

// Close does nothing: the caller owns the source.
func (s *Source) Close() error { return nil }

// Failure is the first read error of the source, or nil.
func (s *Source) Failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// ParallelEach runs f for each item, at most parallel at once, and returns
// the first error.
func ParallelEach[T any](items []T, parallel int, f func(T) error) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		sem      = make(chan struct{}, parallel)
	)
	for _, it := range items {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(it); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return firstErr
}
