package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/tidemarkdb/tidemark/storage"
	"github.com/tidemarkdb/tidemark/storage/internal/driver"
)

// CheckRetention returns nil when the bucket has S3 Object Lock enabled
// (which also means versioning is on), and otherwise a permanent error
// saying how to set the bucket up. Object lock can only be turned on for
// a bucket that has versioning; on AWS it is usually chosen when the
// bucket is created.
func (s *Store) CheckRetention(ctx context.Context) error {
	out, err := s.client.GetObjectLockConfiguration(ctx, &s3.GetObjectLockConfigurationInput{Bucket: aws.String(s.bucket)})
	if err == nil && out.ObjectLockConfiguration != nil && out.ObjectLockConfiguration.ObjectLockEnabled == types.ObjectLockEnabledEnabled {
		return nil
	}
	code, _ := codeOf(err)
	if err != nil && code != "ObjectLockConfigurationNotFoundError" && code != "InvalidRequest" {
		return s.classify(ctx, "check object lock", s.bucket, err)
	}
	return &storage.Error{Op: "check object lock", Key: s.bucket, Err: &s3Error{permanent: true,
		msg: fmt.Sprintf("bucket %q does not have S3 Object Lock enabled: create a bucket with object lock "+
			"(aws s3api create-bucket --object-lock-enabled-for-bucket, which turns versioning on) for a locked repository", s.bucket)}}
}

// WithRetention returns a view of the store for a locked repository: keys
// r.Covers are written with r.Mode and a retain-until date Period ahead;
// every Delete removes all versions of a key (in a versioned bucket a
// plain delete only hides the object and keeps paying for it) and reports
// a version still locked as storage.ErrLocked; a Put of a key not covered
// removes the versions it replaced.
func (s *Store) WithRetention(r storage.Retention) (storage.Store, error) {
	var mode types.ObjectLockMode
	switch r.Mode {
	case storage.RetentionCompliance:
		mode = types.ObjectLockModeCompliance
	case storage.RetentionGovernance:
		mode = types.ObjectLockModeGovernance
	default:
		return nil, fmt.Errorf("s3 store: retention mode %q is neither compliance nor governance", r.Mode)
	}
	if r.Period <= 0 || r.Covers == nil {
		return nil, errors.New("s3 store: retention needs a period and the keys it covers")
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	return &Locked{Store: s, ret: r, mode: mode}, nil
}

// Locked is a Store whose covered objects are written under S3 Object
// Lock. See Store.WithRetention.
type Locked struct {
	*Store
	ret  storage.Retention
	mode types.ObjectLockMode
}

func (l *Locked) lock() lockSpec {
	// Whole seconds: S3 keeps the date at that precision, and rounding up
	// never shortens the lock.
	until := l.ret.Now().Add(l.ret.Period).Truncate(time.Second).Add(time.Second)
	return lockSpec{mode: l.mode, until: until}
}

// Create writes a covered key under the lock.
func (l *Locked) Create(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	if !l.ret.Covers(key) {
		return l.Store.Create(ctx, key, r, size)
	}
	return l.put(ctx, "create", key, r, size, true, l.lock())
}

// Put writes a covered key under the lock if it is absent (it is
// content-addressed: an object there already holds the same bytes). Any
// other key is replaced, and the versions it replaced are removed.
func (l *Locked) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	if l.ret.Covers(key) {
		err := l.put(ctx, "create", key, r, size, true, l.lock())
		if errors.Is(err, storage.ErrExists) {
			return nil
		}
		var se *storage.Error
		if errors.As(err, &se) {
			se.Op = "put"
		}
		return err
	}
	if err := l.Store.Put(ctx, key, r, size); err != nil {
		return err
	}
	// The previous versions of a rewritten record (a renewed lease) are
	// garbage; a failure to remove them only costs storage until the key
	// is deleted, which removes every version.
	vs, err := l.versions(ctx, []string{key})
	if err != nil {
		l.log.Debug("s3: list versions after put", "key", key, "err", err)
		return nil
	}
	if old := vs[key]; len(old) > 1 {
		// Newest first: keep the one just written.
		if err := l.deleteVersions(ctx, map[string][]version{key: old[1:]}); err != nil {
			l.log.Debug("s3: remove replaced versions", "key", key, "err", err)
		}
	}
	return nil
}

// Delete removes every version of each key. Versions still locked stay,
// and the first of them is reported as storage.ErrLocked after everything
// else was deleted.
func (l *Locked) Delete(ctx context.Context, keys ...string) error {
	for _, key := range keys {
		if err := checkKey("delete", key); err != nil {
			return err
		}
	}
	if len(keys) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return &storage.Error{Op: "delete", Key: keys[0], Err: err}
	}
	vs, err := l.versions(ctx, keys)
	if err != nil {
		return err
	}
	return l.deleteVersions(ctx, vs)
}

// version is one stored version of a key, or a delete marker.
type version struct {
	id     string
	marker bool
	mod    time.Time
}

// manyKeys: from this many keys on, the versions are listed under their
// common prefix in one paged listing rather than one listing per key.
const manyKeys = 32

// versions lists the versions of keys, newest first per key.
func (l *Locked) versions(ctx context.Context, keys []string) (map[string][]version, error) {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	out := make(map[string][]version, len(keys))
	var mu sync.Mutex
	list := func(prefix string) error {
		in := &s3.ListObjectVersionsInput{Bucket: aws.String(l.bucket), Prefix: aws.String(l.prefix + prefix)}
		for {
			page, err := l.client.ListObjectVersions(ctx, in)
			if err != nil {
				return l.classify(ctx, "list versions", prefix, err)
			}
			mu.Lock()
			for _, v := range page.Versions {
				if k := strings.TrimPrefix(aws.ToString(v.Key), l.prefix); want[k] {
					out[k] = append(out[k], version{id: aws.ToString(v.VersionId), mod: aws.ToTime(v.LastModified)})
				}
			}
			for _, m := range page.DeleteMarkers {
				if k := strings.TrimPrefix(aws.ToString(m.Key), l.prefix); want[k] {
					out[k] = append(out[k], version{id: aws.ToString(m.VersionId), marker: true, mod: aws.ToTime(m.LastModified)})
				}
			}
			mu.Unlock()
			if !aws.ToBool(page.IsTruncated) {
				return nil
			}
			in.KeyMarker, in.VersionIdMarker = page.NextKeyMarker, page.NextVersionIdMarker
		}
	}
	var err error
	if len(keys) >= manyKeys {
		err = list(commonPrefix(keys))
	} else {
		err = driver.ParallelEach(keys, 8, list)
	}
	if err != nil {
		return nil, err
	}
	for k, vs := range out {
		slices.SortStableFunc(vs, func(a, b version) int { return b.mod.Compare(a.mod) })
		out[k] = vs
	}
	return out, nil
}

func commonPrefix(keys []string) string {
	p := keys[0]
	for _, k := range keys[1:] {
		n := 0
		for n < len(p) && n < len(k) && p[n] == k[n] {
			n++
		}
		p = p[:n]
	}
	return p
}

// deleteVersions deletes the given versions with DeleteObjects, 1000 at a
// time. A version refused because of its lock is storage.ErrLocked.
func (l *Locked) deleteVersions(ctx context.Context, vs map[string][]version) error {
	var objs []types.ObjectIdentifier
	for _, k := range slices.Sorted(maps.Keys(vs)) {
		for _, v := range vs[k] {
			objs = append(objs, types.ObjectIdentifier{Key: l.fullKey(k), VersionId: aws.String(v.id)})
		}
	}
	var locked []string
	for len(objs) > 0 {
		n := min(len(objs), deleteBatch)
		out, err := l.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(l.bucket),
			Delete: &types.Delete{Objects: objs[:n], Quiet: aws.Bool(true)},
		})
		if err != nil {
			return l.classify(ctx, "delete", strings.TrimPrefix(aws.ToString(objs[0].Key), l.prefix), err)
		}
		for _, e := range out.Errors {
			code := aws.ToString(e.Code)
			key := strings.TrimPrefix(aws.ToString(e.Key), l.prefix)
			switch {
			case code == "NoSuchKey" || code == "NoSuchVersion":
			case code == "AccessDenied" || code == "ObjectLocked" || code == "InvalidRequest":
				locked = append(locked, key)
			default:
				apiErr := fmt.Errorf("%s: %s", code, aws.ToString(e.Message))
				return storageError("delete", key, l.describeAPI("delete", code, aws.ToString(e.Message), 0, apiErr))
			}
		}
		objs = objs[n:]
	}
	if len(locked) > 0 {
		slices.Sort(locked)
		locked = slices.Compact(locked)
		return &storage.Error{Op: "delete", Key: locked[0], Err: &s3Error{sentinel: storage.ErrLocked, permanent: true,
			msg: fmt.Sprintf("%v (%d objects still locked; they can be deleted once their retention date has passed)", storage.ErrLocked, len(locked))}}
	}
	return nil
}

// RestoreOriginals undoes deletes and overwrites of the objects covers
// names, in a bucket with object lock: a covered object is written once,
// so its oldest version is the original, and any newer version or delete
// marker (an attacker's, with the same credentials) hides it. The newer
// versions are deleted, or, when they cannot be (locked themselves), the
// original is copied over them. restored lists the keys brought back;
// lost those whose every version is gone (possible only once the lock
// has passed). It needs no repository: the config itself may be hidden.
func (s *Store) RestoreOriginals(ctx context.Context, covers func(key string) bool) (restored, lost []string, err error) {
	byKey := map[string][]version{}
	in := &s3.ListObjectVersionsInput{Bucket: aws.String(s.bucket), Prefix: aws.String(s.prefix)}
	for {
		page, err := s.client.ListObjectVersions(ctx, in)
		if err != nil {
			return nil, nil, s.classify(ctx, "list versions", "", err)
		}
		for _, v := range page.Versions {
			if k := strings.TrimPrefix(aws.ToString(v.Key), s.prefix); covers(k) {
				byKey[k] = append(byKey[k], version{id: aws.ToString(v.VersionId), mod: aws.ToTime(v.LastModified)})
			}
		}
		for _, m := range page.DeleteMarkers {
			if k := strings.TrimPrefix(aws.ToString(m.Key), s.prefix); covers(k) {
				byKey[k] = append(byKey[k], version{id: aws.ToString(m.VersionId), marker: true, mod: aws.ToTime(m.LastModified)})
			}
		}
		if !aws.ToBool(page.IsTruncated) {
			break
		}
		in.KeyMarker, in.VersionIdMarker = page.NextKeyMarker, page.NextVersionIdMarker
	}
	l := &Locked{Store: s}
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		vs := byKey[k]
		// Oldest first; the original is the oldest real version.
		slices.SortStableFunc(vs, func(a, b version) int { return a.mod.Compare(b.mod) })
		orig := slices.IndexFunc(vs, func(v version) bool { return !v.marker })
		if orig < 0 {
			lost = append(lost, k)
			continue
		}
		newer := vs[orig+1:]
		if len(newer) == 0 {
			continue
		}
		err := l.deleteVersions(ctx, map[string][]version{k: newer})
		if errors.Is(err, storage.ErrLocked) {
			// The hiding versions are locked too: put the original on top.
			src := s.bucket + "/" + s.prefix + k + "?versionId=" + vs[orig].id
			_, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{Bucket: aws.String(s.bucket), Key: s.fullKey(k),
				CopySource: aws.String(escapeCopySource(src))})
			err = s.classify(ctx, "restore", k, err)
		}
		if err != nil {
			return restored, lost, err
		}
		restored = append(restored, k)
	}
	return restored, lost, nil
}

// escapeCopySource URL-escapes the key part of an x-amz-copy-source.
func escapeCopySource(src string) string {
	path, query, _ := strings.Cut(src, "?")
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return strings.Join(segs, "/") + "?" + query
}
