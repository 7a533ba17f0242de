package repo

import (
	"context"
	"fmt"
	"strings"

	"github.com/tidemarkdb/tidemark/storage"
)

// Keys of the objects that the jobs write under the repository's layout but
// that no format package owns (the report of a drill, the rotation of
// verify --read-data-subset). They are spelled here, once, with the rest of
// the layout (docs/format.md §1).
const (
	// DrillsPrefix holds drill reports: drills/<cluster>/<id>.
	DrillsPrefix = "drills/"
	// VerifyStateKey remembers how far verify's rotating subset got.
	VerifyStateKey = "verify/state"
)

// Kinds are the top-level names of a repository's objects, the first
// segment of every key tidemark writes (docs/format.md §1 lists each).
var Kinds = []string{"config", "keys", "data", "meta", "index", "snapshots", "leases", "wal", "retention", "drills", "verify", "gc"}

// KindOf returns the top-level kind of key, or "other" for a key tidemark
// does not write.
func KindOf(key string) string {
	k, _, _ := strings.Cut(key, "/")
	for _, x := range Kinds {
		if x == k {
			return k
		}
	}
	return "other"
}

// KindUsage is what one kind of object takes.
type KindUsage struct {
	Bytes   int64
	Objects int64
}

// Usage lists the whole store once and adds up its objects by kind
// (KindOf). visit, when not nil, also sees every object, for callers that
// need more of the same listing (the newest WAL object, say).
func Usage(ctx context.Context, st storage.Store, visit func(storage.ObjectInfo)) (map[string]KindUsage, error) {
	out := map[string]KindUsage{}
	for oi, err := range st.List(ctx, "", "") {
		if err != nil {
			return nil, fmt.Errorf("list the repository: %w", err)
		}
		k := KindOf(oi.Key)
		u := out[k]
		u.Bytes += oi.Size
		u.Objects++
		out[k] = u
		if visit != nil {
			visit(oi)
		}
	}
	return out, nil
}
