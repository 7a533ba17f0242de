package backup

import (
	"context"
	"reflect"
	"testing"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
)

// sizedStore answers Lookup with the raw length of each map blob.
type sizedStore struct {
	blobStore
	raw map[blob.ID]uint32
}

func (s sizedStore) Lookup(_ context.Context, id blob.ID) (index.Location, error) {
	var loc index.Location
	loc.RawLength = s.raw[id]
	return loc, nil
}

// TestMapGroups: a batch's reference maps are read in groups of at most
// batchMapBytes of encoded maps (a bigger one alone), so the maps waiting
// for their files to be dispatched are bounded however many segments of
// big relations a directory batch holds.
func TestMapGroups(t *testing.T) {
	const mib = 1 << 20
	sizes := []uint32{1 * mib, 0, 2 * mib, 1 * mib, 9 * mib, 3 * mib, 0, 0, 1 * mib, 4 * mib}
	st := sizedStore{raw: map[blob.ID]uint32{}}
	var files []*file
	for i, n := range sizes {
		f := &file{}
		if n > 0 {
			f.prevMapID = blob.ID{byte(i + 1)}
			st.raw[f.prevMapID] = n
		}
		files = append(files, f)
	}
	b := &fileBatch{c: &capture{ctx: t.Context(), store: st}}
	var groups [][]uint32
	for rest := files; len(rest) > 0; {
		n, err := b.mapGroup(rest)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("an empty group")
		}
		var g []uint32
		var sum int64
		for _, f := range rest[:n] {
			g = append(g, st.raw[f.prevMapID]/mib)
			sum += int64(st.raw[f.prevMapID])
		}
		if sum > batchMapBytes && n > 1 {
			t.Fatalf("group %v holds %d bytes of maps, over %d", g, sum, batchMapBytes)
		}
		groups = append(groups, g)
		rest = rest[n:]
	}
	want := [][]uint32{{1, 0, 2, 1}, {9}, {3, 0, 0, 1}, {4}}
	if !reflect.DeepEqual(groups, want) {
		t.Fatalf("groups (MiB of maps) %v, want %v", groups, want)
	}
}
