package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/tidemarkdb/tidemark/storage"
)

// s3Error is the cause inside the *storage.Error this package returns: a
// one-line message for the operator, the SDK's error for errors.As, and the
// storage sentinel it matches.
type s3Error struct {
	msg       string
	code      string // S3 error code, "" for network failures
	status    int    // HTTP status, 0 if there was no response
	cause     error
	sentinel  error // storage.ErrNotFound, ErrRange, ErrExists or nil
	permanent bool
}

func (e *s3Error) Error() string { return e.msg }

func (e *s3Error) Unwrap() []error {
	errs := make([]error, 0, 3)
	if e.sentinel != nil {
		errs = append(errs, e.sentinel)
	}
	if e.permanent {
		errs = append(errs, storage.ErrPermanent)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// codeOf returns the S3 error code and HTTP status of err, if it has them.
func codeOf(err error) (string, int) {
	code, status := "", 0
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return code, status
}

// isNotImplemented reports a server that lacks a feature.
func isNotImplemented(err error) bool {
	code, status := codeOf(err)
	return code == "NotImplemented" || status == 501
}

// isBadDigest reports a body that did not match the checksum sent with it.
func isBadDigest(err error) bool {
	code, _ := codeOf(err)
	switch code {
	case "BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch":
		return true
	}
	return false
}

// classify turns an SDK error into a *storage.Error. The caller's context
// ending wins over whatever the SDK made of it, and is never transient.
func (s *Store) classify(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &storage.Error{Op: op, Key: key, Err: ctxErr}
	}
	return storageError(op, key, s.describe(op, err))
}

// storageError wraps a described failure: transient is whatever is neither
// permanent nor an answer (not found, exists, range).
func storageError(op, key string, e *s3Error) *storage.Error {
	return &storage.Error{Op: op, Key: key, Err: e, Transient: !e.permanent && e.sentinel == nil}
}

func (s *Store) describe(op string, err error) *s3Error {
	if errors.Is(err, errNoCredentials) {
		return &s3Error{msg: errNoCredentials.Error(), cause: err, permanent: true}
	}
	code, status := codeOf(err)
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return s.describeAPI(op, code, ae.ErrorMessage(), status, err)
	}
	if status != 0 {
		return s.describeAPI(op, "", "", status, err)
	}
	return s.describeNet(err)
}

func (s *Store) describeAPI(op, code, message string, status int, err error) *s3Error {
	e := &s3Error{code: code, status: status, cause: err}
	detail := code
	if message != "" {
		detail += ": " + message
	}
	if detail == "" {
		detail = fmt.Sprintf("HTTP %d", status)
	}
	hint := func(h string) *s3Error {
		e.msg, e.permanent = h+" ("+detail+")", true
		return e
	}
	switch code {
	case "NoSuchKey", "NotFound":
		e.msg, e.sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
		return e
	case "InvalidRange":
		e.msg, e.sentinel = "byte range outside the object ("+detail+")", storage.ErrRange
		return e
	case "PreconditionFailed":
		if op == "create" {
			e.msg, e.sentinel = storage.ErrExists.Error(), storage.ErrExists
			return e
		}
	case "NoSuchBucket":
		return hint(fmt.Sprintf("bucket %q does not exist on %s: check the bucket name in the repository URL, or create the bucket",
			s.bucket, s.endpoint()))
	case "AccessDenied", "Forbidden", "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken", "TokenRefreshRequired":
		return hint(fmt.Sprintf("access to bucket %q denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and that they may use this bucket",
			s.bucket))
	case "InvalidAccessKeyId", "XAdminUserNotFound":
		return hint("the server does not know this access key: check AWS_ACCESS_KEY_ID")
	case "SignatureDoesNotMatch":
		return hint("the server rejected the request signature: check AWS_SECRET_ACCESS_KEY")
	case "AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException", "InvalidRegion":
		return hint(fmt.Sprintf("bucket %q is not in region %q: set region= in the repository URL", s.bucket, s.region()))
	case "InvalidStorageClass":
		return hint("the server does not offer this storage class: change storage-class=, data-storage-class= or wal-storage-class= in the repository URL")
	case "RequestTimeTooSkewed":
		return hint("the server refused this machine's clock: synchronise the clock (NTP)")
	case "NotImplemented":
		return hint("the server does not implement this request")
	case "BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch":
		// Data damaged in transit: sending it again may well work.
		e.msg = "the server received a body that does not match its checksum (" + detail + ")"
		return e
	case "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
		"RequestTimeout", "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
		"XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum":
		e.msg = detail
		return e
	}
	if strings.HasPrefix(code, "KMS.") || strings.HasPrefix(code, "kms:") {
		return hint("the server-side encryption key was refused: check sse-kms-key-id= in the repository URL and that these credentials may use the key")
	}
	switch {
	case status == 404 && code == "":
		e.msg, e.sentinel = storage.ErrNotFound.Error(), storage.ErrNotFound
	case status == 416:
		e.msg, e.sentinel = "byte range outside the object ("+detail+")", storage.ErrRange
	case status == 403:
		return hint(fmt.Sprintf("access to bucket %q denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket policy", s.bucket))
	case status >= 500 || status == 429 || status == 408:
		e.msg = detail
	default:
		e.msg, e.permanent = detail, true
	}
	return e
}

func (s *Store) describeNet(err error) *s3Error {
	e := &s3Error{cause: err, msg: netMessage(err)}
	var (
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		invalid    x509.CertificateInvalidError
		verifyErr  *tls.CertificateVerificationError
		recordErr  tls.RecordHeaderError
		dnsErr     *net.DNSError
		netErr     net.Error
		errno      syscall.Errno
		connFailed interface{ ConnectionError() bool }
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verifyErr):
		e.msg = fmt.Sprintf("the TLS certificate of %s is not trusted: give its CA with ca-file= in the repository URL (%s)",
			s.endpoint(), e.msg)
		e.permanent = true
	case errors.As(err, &recordErr):
		e.msg = fmt.Sprintf("%s does not speak TLS: use an http:// endpoint (%s)", s.endpoint(), e.msg)
		e.permanent = true
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		e.msg = fmt.Sprintf("cannot resolve %s: check the endpoint in the repository URL (%s)", dnsErr.Name, e.msg)
		e.permanent = true
	case errors.Is(err, os.ErrDeadlineExceeded):
		e.msg = fmt.Sprintf("connection to %s stalled: nothing moved for %s (%s)", s.endpoint(), s.opts.StallTimeout, e.msg)
	case errors.As(err, &netErr) && netErr.Timeout(),
		errors.As(err, &errno) && transientErrno(errno),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.As(err, &connFailed) && connFailed.ConnectionError():
		// Connection trouble: a server restarting, a network blip.
	default:
		e.permanent = true
	}
	return e
}

func transientErrno(errno syscall.Errno) bool {
	switch errno {
	case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EAGAIN:
		return true
	}
	return false
}

// netMessage digs the useful part out of the SDK's layers ("operation
// error S3: PutObject, request send failed, Put "http://...": dial tcp
// 127.0.0.1:9: connect: connection refused" becomes the part after the
// last colon-separated layer that still names the address).
func netMessage(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Error()
	}
	var uErr *url.Error
	if errors.As(err, &uErr) {
		return uErr.Err.Error()
	}
	return err.Error()
}

func (s *Store) endpoint() string {
	if s.opts.Endpoint != "" {
		return s.opts.Endpoint
	}
	return "AWS S3"
}

func (s *Store) region() string {
	if r := s.client.Options().Region; r != "" {
		return r
	}
	return DefaultRegion
}
