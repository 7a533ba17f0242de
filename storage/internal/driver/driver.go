// Package driver holds what the network object-store drivers (storage/s3,
// storage/azure, storage/gcs) share: an HTTP transport tuned for many parallel transfers that turns a
// silent connection into an error, and the classification of network
// failures as transient or permanent.
//
// It knows nothing of any one service's API or of tidemark's format.
package driver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/tidemarkdb/tidemark/storage"
)

// DefaultStallTimeout: a connection on which nothing moves for this long is
// dropped (a transient error). Longer than the idle time of a pooled
// connection, so pooled connections are never cut by it.
const DefaultStallTimeout = 2 * time.Minute

// TuneTransport sets tr up for many parallel transfers to one endpoint: a
// deep idle pool (the default keeps 2 connections per host, so 16 parallel
// uploads would reconnect all the time), 64 KiB buffers, no transparent gzip
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
	// Each connection holds both buffers for as long as it stays open,
	// idle ones included: 256 KiB each cost an incremental backup, with a
	// dozen connections for its base fetches and pack uploads, 6 MiB of
	// its heap (a heap profile at pgbench scale 200). 64 KiB still moves
	// a TLS connection's records (16 KiB) several at a time.
	tr.WriteBufferSize = 64 << 10
	tr.ReadBufferSize = 64 << 10
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

// Cause is the cause inside the *storage.Error a driver returns: a
// one-line message for the operator, the SDK's error for errors.As, and
// the storage sentinel it matches.
type Cause struct {
	Msg       string
	Err       error // the SDK's error, or nil
	Sentinel  error // storage.ErrNotFound, ErrRange, ErrExists, ErrLocked or nil
	Permanent bool
}

func (e *Cause) Error() string { return e.Msg }

func (e *Cause) Unwrap() []error {
	errs := make([]error, 0, 3)
	if e.Sentinel != nil {
		errs = append(errs, e.Sentinel)
	}
	if e.Permanent {
		errs = append(errs, storage.ErrPermanent)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Fail wraps a described failure: transient is whatever is neither
// permanent nor an answer (not found, exists, range).
func Fail(op, key string, c *Cause) *storage.Error {
	return &storage.Error{Op: op, Key: key, Err: c, Transient: !c.Permanent && c.Sentinel == nil}
}

// Classify turns an SDK error into a *storage.Error with describe. The
// caller's context ending wins over whatever the SDK made of it, and is
// never transient.
func Classify(ctx context.Context, op, key string, err error, describe func(error) *Cause) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &storage.Error{Op: op, Key: key, Err: ctxErr}
	}
	return Fail(op, key, describe(err))
}

// SourceError reports a failure to read the caller's data to upload.
func SourceError(ctx context.Context, op, key string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &storage.Error{Op: op, Key: key, Err: ctxErr}
	}
	return &storage.Error{Op: op, Key: key, Err: fmt.Errorf("read the data to upload: %w", err)}
}

// RenameOp makes a *storage.Error from one operation (a Head done for a
// Get) name the operation the caller asked for.
func RenameOp(err error, op string) error {
	var se *storage.Error
	if errors.As(err, &se) {
		se.Op = op
	}
	return err
}

// RangeError is the ErrRange of a read of length bytes at off of an object
// of size (a number, or a phrase when unknown).
func RangeError(key string, off, length int64, size string) error {
	return &storage.Error{Op: "get", Key: key, Err: &Cause{Sentinel: storage.ErrRange,
		Msg: fmt.Sprintf("bytes %d-%d of %s: %v", off, off+length, size, storage.ErrRange)}}
}

// Body is a response body whose read errors are classified like request
// errors, so a connection reset mid-body is a transient *storage.Error
// that storage/retry resumes from. A canceled context ends the body at
// the next read: the HTTP transport notices a cancel only when its
// connection goroutine runs, and until then a read is served from what
// the socket already buffered, which on loopback can be the whole object.
type Body struct {
	Ctx      context.Context
	RC       io.ReadCloser
	N        int64             // bytes it delivers in total
	Classify func(error) error // turns a read error into a *storage.Error
}

func (b *Body) Read(p []byte) (int, error) {
	if err := b.Ctx.Err(); err != nil {
		return 0, b.Classify(err)
	}
	n, err := b.RC.Read(p)
	if err != nil && err != io.EOF {
		err = b.Classify(err)
	}
	return n, err
}

// Close closes the response body.
func (b *Body) Close() error { return b.RC.Close() }

// Size is the number of bytes the body delivers in total.
func (b *Body) Size() int64 { return b.N }

// CheckKey refuses a key every backend refuses (storage.CheckKey).
func CheckKey(op, key string) error {
	if err := storage.CheckKey(key); err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	return nil
}

// CheckPut refuses an upload before anything is sent: an invalid key or
// size, or a context already ended.
func CheckPut(ctx context.Context, op, key string, size int64) error {
	if err := CheckKey(op, key); err != nil {
		return err
	}
	if size < 0 {
		return &storage.Error{Op: op, Key: key, Err: &Cause{Msg: fmt.Sprintf("invalid size %d", size), Permanent: true}}
	}
	if err := ctx.Err(); err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	return nil
}

// CheckRange settles the ranged reads a driver need not send: a negative
// offset or length is ErrRange, and a zero length (which SDKs and Range
// headers cannot express) is answered with a Head. empty reports a valid
// empty range; the caller returns an empty body.
func CheckRange(ctx context.Context, key string, off, length int64,
	head func(context.Context, string) (storage.ObjectInfo, error)) (empty bool, err error) {
	if off < 0 || length < 0 {
		return false, RangeError(key, off, length, "the object")
	}
	if length != 0 {
		return false, nil
	}
	info, err := head(ctx, key)
	if err != nil {
		return false, RenameOp(err, "get")
	}
	if off > info.Size {
		return false, RangeError(key, off, length, fmt.Sprint(info.Size))
	}
	return true, nil
}
