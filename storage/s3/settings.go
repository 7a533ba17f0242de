package s3

import (
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// lockSpec is the object lock an upload asks for; the zero value is none.
type lockSpec struct {
	mode  types.ObjectLockMode
	until time.Time
}

// objectSettings are the per-object request fields of an upload.
type objectSettings struct {
	class     types.StorageClass
	sse       types.ServerSideEncryption
	kmsKey    *string
	lockMode  types.ObjectLockMode
	lockUntil *time.Time
}

// settings returns what an upload of key carries: its storage class (by the
// longest matching prefix), the server-side encryption, and lk.
func (s *Store) settings(key string, lk lockSpec) objectSettings {
	var st objectSettings
	best := -1
	for _, pc := range s.opts.StorageClasses {
		if len(pc.Prefix) > best && len(key) >= len(pc.Prefix) && key[:len(pc.Prefix)] == pc.Prefix {
			best, st.class = len(pc.Prefix), types.StorageClass(pc.Class)
		}
	}
	st.sse = types.ServerSideEncryption(s.opts.SSE)
	if s.opts.SSEKMSKeyID != "" {
		st.kmsKey = aws.String(s.opts.SSEKMSKeyID)
	}
	if lk.mode != "" {
		st.lockMode, st.lockUntil = lk.mode, aws.Time(lk.until.UTC())
	}
	return st
}
