package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// Get opens the whole object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey(key)})
	if err != nil {
		return nil, s.classify(ctx, "get", key, err)
	}
	return s.body(ctx, key, out.Body, aws.ToInt64(out.ContentLength)), nil
}

// GetRange opens length bytes from off. S3 answers a range that runs past
// the end with what there is; the contract wants ErrRange, so the length
// of the answer is checked.
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	rangeErr := func(size string) error {
		return &storage.Error{Op: "get", Key: key, Err: &s3Error{sentinel: storage.ErrRange,
			msg: fmt.Sprintf("bytes %d-%d of %s: %v", off, off+length, size, storage.ErrRange)}}
	}
	if off < 0 || length < 0 {
		return nil, rangeErr("the object")
	}
	if length == 0 {
		// An empty range has no Range header; ask for the size instead.
		info, err := s.Head(ctx, key)
		if err != nil {
			var se *storage.Error
			if errors.As(err, &se) {
				se.Op = "get"
			}
			return nil, err
		}
		if off > info.Size {
			return nil, rangeErr(fmt.Sprint(info.Size))
		}
		return s.body(ctx, key, io.NopCloser(strings.NewReader("")), 0), nil
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    s.fullKey(key),
		Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+length-1)),
	})
	if err != nil {
		if errors.Is(s.classify(ctx, "get", key, err), storage.ErrRange) {
			return nil, rangeErr("the object")
		}
		return nil, s.classify(ctx, "get", key, err)
	}
	if n := aws.ToInt64(out.ContentLength); n != length || (out.ContentRange == nil && off != 0) {
		out.Body.Close()
		total := "the object"
		if cr := aws.ToString(out.ContentRange); cr != "" {
			total = cr[strings.LastIndexByte(cr, '/')+1:]
		}
		return nil, rangeErr(total)
	}
	return s.body(ctx, key, out.Body, length), nil
}

// body classifies the read errors of a response body, so a connection
// reset mid-body is a transient *storage.Error that storage/retry can
// resume from.
func (s *Store) body(ctx context.Context, key string, rc io.ReadCloser, n int64) *driver.Body {
	return &driver.Body{Ctx: ctx, RC: rc, N: n, Classify: func(err error) error { return s.classify(ctx, "get", key, err) }}
}

// Head returns the object's size and modification time.
func (s *Store) Head(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("head", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey(key)})
	if err != nil {
		return storage.ObjectInfo{}, s.classify(ctx, "head", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// List pages through ListObjectsV2, each page starting after the last key
// of the one before: one page in memory at a time, and no continuation
// tokens, whose support varies among S3-compatible servers.
func (s *Store) List(ctx context.Context, prefix, startAfter string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		in := &s3.ListObjectsV2Input{
			Bucket: aws.String(s.bucket),
			Prefix: aws.String(s.prefix + prefix),
		}
		if s.opts.ListPageSize > 0 {
			in.MaxKeys = aws.Int32(s.opts.ListPageSize)
		}
		if startAfter != "" {
			in.StartAfter = aws.String(s.prefix + startAfter)
		}
		for {
			out, err := s.client.ListObjectsV2(ctx, in)
			if err != nil {
				yield(storage.ObjectInfo{}, s.classify(ctx, "list", prefix, err))
				return
			}
			for _, obj := range out.Contents {
				info := storage.ObjectInfo{
					Key:     strings.TrimPrefix(aws.ToString(obj.Key), s.prefix),
					Size:    aws.ToInt64(obj.Size),
					ModTime: aws.ToTime(obj.LastModified),
				}
				if !yield(info, nil) {
					return
				}
			}
			if !aws.ToBool(out.IsTruncated) {
				return
			}
			if len(out.Contents) == 0 {
				// Nothing to start after: the token is the only way on.
				in.ContinuationToken = out.NextContinuationToken
				continue
			}
			in.ContinuationToken = nil
			in.StartAfter = out.Contents[len(out.Contents)-1].Key
		}
	}
}

// Delete removes the keys with DeleteObjects, 1000 at a time, or one by one
// on servers without it.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for _, key := range keys {
		if err := checkKey("delete", key); err != nil {
			return err
		}
	}
	for len(keys) > 0 {
		n := min(len(keys), deleteBatch)
		if err := s.deleteBatch(ctx, keys[:n]); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

func (s *Store) deleteBatch(ctx context.Context, keys []string) error {
	if len(keys) == 1 || s.noMultiDelete.Load() {
		return s.deleteEach(ctx, keys)
	}
	objs := make([]types.ObjectIdentifier, len(keys))
	for i, k := range keys {
		objs[i] = types.ObjectIdentifier{Key: s.fullKey(k)}
	}
	out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
		Bucket: aws.String(s.bucket),
		Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)},
	})
	if err != nil {
		if isNotImplemented(err) {
			if s.noMultiDelete.CompareAndSwap(false, true) {
				s.log.Warn("S3 server does not support DeleteObjects; deleting one object per request", "store", s.name)
			}
			return s.deleteEach(ctx, keys)
		}
		return s.classify(ctx, "delete", keys[0], err)
	}
	for _, e := range out.Errors {
		if aws.ToString(e.Code) == "NoSuchKey" {
			continue
		}
		key := strings.TrimPrefix(aws.ToString(e.Key), s.prefix)
		apiErr := fmt.Errorf("%s: %s", aws.ToString(e.Code), aws.ToString(e.Message))
		return storageError("delete", key, s.describeAPI("delete", aws.ToString(e.Code), aws.ToString(e.Message), 0, apiErr))
	}
	return nil
}

// deleteEach deletes with one DeleteObject per key, a few at a time.
func (s *Store) deleteEach(ctx context.Context, keys []string) error {
	return driver.ParallelEach(keys, 8, func(key string) error {
		_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey(key)})
		if err = s.classify(ctx, "delete", key, err); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		return nil
	})
}
