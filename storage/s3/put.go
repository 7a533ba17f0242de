package s3

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/tidemarkdb/tidemark/storage"
)

// copyBufSize is the read size of the checksum pass.
const copyBufSize = 1 << 20

// digestAttempts is how often an upload is sent when the server says the
// body does not match its checksum. Damage in transit is cured by sending
// again; a source that changes while it is read is not, and after this
// many tries the failure is permanent.
const digestAttempts = 3

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Put uploads the object, in one request or, from MultipartThreshold on, in
// parts.
func (s *Store) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.put(ctx, "put", key, r, size, false, lockSpec{})
}

// Create uploads the object only if the key is free, atomically on servers
// that implement conditional writes.
func (s *Store) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	return s.put(ctx, "create", key, r, size, true, lockSpec{})
}

func (s *Store) put(ctx context.Context, op, key string, r io.ReaderAt, size int64, create bool, lk lockSpec) error {
	if err := checkKey(op, key); err != nil {
		return err
	}
	if size < 0 {
		return &storage.Error{Op: op, Key: key, Err: &s3Error{msg: fmt.Sprintf("invalid size %d", size), permanent: true}}
	}
	if err := ctx.Err(); err != nil {
		return &storage.Error{Op: op, Key: key, Err: err}
	}
	multipart := size >= s.opts.MultipartThreshold
	// A multipart Create looks first, to not upload many parts only to be
	// refused at completion; the conditional completion stays the
	// authority. Servers without conditional writes get only the look.
	if create && (multipart || s.noCondPut.Load()) {
		if err := s.checkFree(ctx, op, key); err != nil {
			return err
		}
		if !multipart || s.noCondComplete.Load() {
			create = false // checked, as well as this server allows
		}
	}
	if multipart {
		return s.putMultipart(ctx, op, key, r, size, create, lk)
	}
	return s.putSingle(ctx, op, key, r, size, create, lk)
}

// checkFree is the non-atomic stand-in for If-None-Match: * on servers
// without conditional writes.
func (s *Store) checkFree(ctx context.Context, op, key string) error {
	_, err := s.Head(ctx, key)
	switch {
	case err == nil:
		return &storage.Error{Op: op, Key: key, Err: &s3Error{msg: storage.ErrExists.Error(), sentinel: storage.ErrExists}}
	case errors.Is(err, storage.ErrNotFound):
		return nil
	}
	var se *storage.Error
	if errors.As(err, &se) {
		se.Op = op
	}
	return err
}

// warnNoConditional records, once, that the server lacks conditional writes.
func (s *Store) warnNoConditional(flag interface{ CompareAndSwap(old, new bool) bool }, what string) {
	if flag.CompareAndSwap(false, true) {
		s.log.Warn("S3 server does not support conditional writes (If-None-Match) on "+what+
			"; create-only writes fall back to check-then-write, which two concurrent writers can both pass",
			"store", s.name)
	}
}

func (s *Store) putSingle(ctx context.Context, op, key string, r io.ReaderAt, size int64, create bool, lk lockSpec) error {
	for attempt := 1; ; attempt++ {
		sum, err := s.crc32c(ctx, r, 0, size)
		if err != nil {
			return s.sourceError(ctx, op, key, err)
		}
		body := &sourceBody{SectionReader: io.NewSectionReader(r, 0, size)}
		in := &s3.PutObjectInput{
			Bucket:         aws.String(s.bucket),
			Key:            s.fullKey(key),
			Body:           body,
			ContentLength:  aws.Int64(size),
			ChecksumCRC32C: aws.String(sum),
		}
		if create {
			in.IfNoneMatch = aws.String("*")
		}
		st := s.settings(key, lk)
		in.StorageClass, in.ServerSideEncryption, in.SSEKMSKeyId = st.class, st.sse, st.kmsKey
		in.ObjectLockMode, in.ObjectLockRetainUntilDate = st.lockMode, st.lockUntil
		_, err = s.client.PutObject(ctx, in, s.putOpts...)
		switch {
		case err == nil:
			return nil
		case body.failure() != nil:
			return s.sourceError(ctx, op, key, body.failure())
		case create && isNotImplemented(err):
			s.warnNoConditional(&s.noCondPut, "PutObject")
			if err := s.checkFree(ctx, op, key); err != nil {
				return err
			}
			create = false
			continue
		case isBadDigest(err) && attempt < digestAttempts && ctx.Err() == nil:
			s.log.Warn("S3 server refused an upload whose body did not match its checksum; sending it again",
				"store", s.name, "key", key, "attempt", attempt)
			continue
		case isBadDigest(err):
			return s.digestError(ctx, op, key, err)
		}
		return s.classify(ctx, op, key, err)
	}
}

// digestError is the permanent end of repeated checksum refusals.
func (s *Store) digestError(ctx context.Context, op, key string, err error) error {
	se := s.classify(ctx, op, key, err)
	var e *s3Error
	if errors.As(se, &e) {
		e.msg = fmt.Sprintf("the server refused the body %d times as not matching its checksum: "+
			"the data changes while being read or is damaged on the way (%s)", digestAttempts, e.code)
		e.permanent = true
		se.(*storage.Error).Transient = false
	}
	return se
}

// sourceError reports that the caller's reader failed: retrying the upload
// cannot help, the source is the problem.
func (s *Store) sourceError(ctx context.Context, op, key string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &storage.Error{Op: op, Key: key, Err: ctxErr}
	}
	return &storage.Error{Op: op, Key: key, Err: fmt.Errorf("read the data to upload: %w", err)}
}

// sourceBody is a request body that remembers a failure of the caller's
// reader, which the SDK would otherwise report as a network error.
type sourceBody struct {
	*io.SectionReader
	mu  sync.Mutex
	err error
}

// failure returns the reader's error, if it had one. The transport may
// still be reading the body when the request has already failed.
func (b *sourceBody) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *sourceBody) Read(p []byte) (int, error) {
	n, err := b.SectionReader.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
	}
	return n, err
}

// crc32c reads n bytes of r from off and returns their CRC32C as S3 wants it
// (base64 of the big-endian value). Reading exactly n bytes also proves the
// source is as long as claimed before anything is sent.
func (s *Store) crc32c(ctx context.Context, r io.ReaderAt, off, n int64) (string, error) {
	r = storage.Unmetered(r) // read here, sent later: only the send counts against a rate limit
	bufp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bufp)
	buf := *bufp
	var crc uint32
	for done := int64(0); done < n; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		chunk := buf[:min(int64(len(buf)), n-done)]
		m, err := r.ReadAt(chunk, off+done)
		crc = crc32.Update(crc, castagnoli, chunk[:m])
		done += int64(m)
		if err == io.EOF && done < n {
			return "", fmt.Errorf("source ends after %d of %d bytes", done, n)
		}
		if err != nil && err != io.EOF {
			return "", err
		}
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], crc)
	return base64.StdEncoding.EncodeToString(b[:]), nil
}

// putMultipart uploads the object in parts, several at a time, each with
// its CRC32C, and completes the upload (conditionally for Create). Any
// failure aborts the upload so no parts are left behind to be billed.
func (s *Store) putMultipart(ctx context.Context, op, key string, r io.ReaderAt, size int64, create bool, lk lockSpec) error {
	partSize := max(s.opts.PartSize, (size+maxParts-1)/maxParts)
	nparts := int((size + partSize - 1) / partSize)

	st := s.settings(key, lk)
	created, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(s.bucket),
		Key:    s.fullKey(key),
		// With an algorithm declared, every part carries its checksum and
		// so does the completion: the consistent form strict servers
		// (versitygw) insist on.
		ChecksumAlgorithm:         types.ChecksumAlgorithmCrc32c,
		StorageClass:              st.class,
		ServerSideEncryption:      st.sse,
		SSEKMSKeyId:               st.kmsKey,
		ObjectLockMode:            st.lockMode,
		ObjectLockRetainUntilDate: st.lockUntil,
	})
	if err != nil {
		return s.classify(ctx, op, key, err)
	}
	uploadID := created.UploadId
	completed := false
	defer func() {
		if !completed {
			s.abort(ctx, key, uploadID)
		}
	}()

	parts, err := s.uploadParts(ctx, op, key, uploadID, r, size, partSize, nparts)
	if err != nil {
		return err
	}
	for {
		in := &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(s.bucket),
			Key:             s.fullKey(key),
			UploadId:        uploadID,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		}
		if create {
			in.IfNoneMatch = aws.String("*")
		}
		_, err = s.client.CompleteMultipartUpload(ctx, in)
		if err != nil && create && isNotImplemented(err) {
			s.warnNoConditional(&s.noCondComplete, "CompleteMultipartUpload")
			if err := s.checkFree(ctx, op, key); err != nil {
				return err
			}
			create = false
			continue
		}
		if err != nil {
			return s.classify(ctx, op, key, err)
		}
		completed = true
		return nil
	}
}

// uploadParts uploads the parts with bounded concurrency. The first failure
// cancels the others and is the one reported.
func (s *Store) uploadParts(ctx context.Context, op, key string, uploadID *string, r io.ReaderAt,
	size, partSize int64, nparts int) ([]types.CompletedPart, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	parts := make([]types.CompletedPart, nparts)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
	}
	sem := make(chan struct{}, s.opts.PartConcurrency)
	for i := range nparts {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			off := int64(i) * partSize
			part, err := s.uploadPart(ctx, op, key, uploadID, int32(i+1), r, off, min(partSize, size-off))
			if err != nil {
				fail(err)
				return
			}
			parts[i] = part
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, &storage.Error{Op: op, Key: key, Err: err}
	}
	return parts, nil
}

func (s *Store) uploadPart(ctx context.Context, op, key string, uploadID *string, num int32,
	r io.ReaderAt, off, n int64) (types.CompletedPart, error) {
	for attempt := 1; ; attempt++ {
		sum, err := s.crc32c(ctx, r, off, n)
		if err != nil {
			return types.CompletedPart{}, s.sourceError(ctx, op, key, err)
		}
		body := &sourceBody{SectionReader: io.NewSectionReader(r, off, n)}
		out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket:            aws.String(s.bucket),
			Key:               s.fullKey(key),
			UploadId:          uploadID,
			PartNumber:        aws.Int32(num),
			Body:              body,
			ContentLength:     aws.Int64(n),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
			ChecksumCRC32C:    aws.String(sum),
		}, s.putOpts...)
		switch {
		case err == nil:
			return types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num), ChecksumCRC32C: aws.String(sum)}, nil
		case body.failure() != nil:
			return types.CompletedPart{}, s.sourceError(ctx, op, key, body.failure())
		case isBadDigest(err) && attempt < digestAttempts && ctx.Err() == nil:
			s.log.Warn("S3 server refused an upload part whose body did not match its checksum; sending it again",
				"store", s.name, "key", key, "part", num, "attempt", attempt)
			continue
		case isBadDigest(err):
			return types.CompletedPart{}, s.digestError(ctx, op, key, err)
		}
		return types.CompletedPart{}, s.classify(ctx, op, key, err)
	}
}

// abort removes an unfinished upload, also when ctx has ended (that is
// often why it is unfinished). Failing to abort only leaves parts for the
// bucket's lifecycle rule to collect, so it is logged, not returned.
func (s *Store) abort(ctx context.Context, key string, uploadID *string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, err := s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
		Bucket:   aws.String(s.bucket),
		Key:      s.fullKey(key),
		UploadId: uploadID,
	})
	if err != nil {
		s.log.Warn("could not abort an unfinished multipart upload; its parts stay until removed",
			"store", s.name, "key", key, "upload_id", aws.ToString(uploadID), "err", err)
	}
}
