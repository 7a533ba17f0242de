package repo

import (
	"context"
	"slices"

	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/repo/index"
)

// BlobRun holds the stored bytes of a run of blobs that lie close together
// in one pack, read with one ranged GET and decrypted, to be decoded one at
// a time. An incremental backup reads the base slots of a file's next
// windows this way: the full backup wrote them one after another, and one
// request per window cost MinIO about 4 ms of CPU each (a ranged GET makes
// it read and check whole erasure blocks), more than the backup's own work
// on a base.
type BlobRun struct {
	r     *Repo
	key   string
	plain []byte // decrypted chunks
	first int64  // plaintext offset of plain[0]
	locs  []index.Location
	read  int64 // bytes the GET returned
}

// ReadBlobRun reads ids[0] and, with the same GET, those of ids[1:] that
// lie after it in the same pack, each at most CoalesceGap bytes past the
// one before and the whole run at most maxBytes (ids[0] is read even when
// larger). ids[1:] are a guess at what will be wanted: those the index does
// not know or that lie elsewhere are left out, not errors.
func (r *Repo) ReadBlobRun(ctx context.Context, ids []blob.ID, maxBytes int64) (*BlobRun, error) {
	if len(ids) == 0 {
		return &BlobRun{r: r}, nil
	}
	first, err := r.Lookup(ctx, ids[0])
	if err != nil {
		return nil, err
	}
	locs := []index.Location{first}
	for _, id := range ids[1:] {
		if id.IsZero() || id == ids[0] {
			continue
		}
		l, err := r.Lookup(ctx, id)
		if err != nil || l.Pack.ID != first.Pack.ID || l.Offset < first.Offset {
			continue
		}
		locs = append(locs, l)
	}
	slices.SortFunc(locs[1:], func(a, b index.Location) int { return int(int64(a.Offset) - int64(b.Offset)) })
	start, end := int64(first.Offset), int64(first.Offset)+int64(first.Length)
	n := 1
	for _, l := range locs[1:] {
		o, e := int64(l.Offset), int64(l.Offset)+int64(l.Length)
		if o < end {
			continue // a guess repeated (windows sharing a base), or an entry overlapping one in the run
		}
		if o-end > r.opts.CoalesceGap || e-start > maxBytes {
			break
		}
		locs[n] = l
		n++
		end = e
	}
	locs = locs[:n]
	plain, off, err := r.readPlain(ctx, &first.Pack, start, end-start)
	if err != nil {
		return nil, err
	}
	return &BlobRun{r: r, key: first.Pack.Key(), plain: plain, first: off, locs: locs, read: int64(len(plain))}, nil
}

// Decode appends the plaintext of blob id to buf, checking its keyed ID.
// ok is false when the run does not hold id.
func (b *BlobRun) Decode(id blob.ID, buf []byte) (data []byte, ok bool, err error) {
	for _, l := range b.locs {
		if l.ID != id {
			continue
		}
		rel := int64(l.Offset) - b.first
		data, err := b.r.decodeBlob(b.key, l.Entry, b.plain[rel:rel+int64(l.Length)], buf)
		return data, true, err
	}
	return buf, false, nil
}

// Len is the number of blobs the run holds; Read the bytes its GET read
// (decrypted).
func (b *BlobRun) Len() int    { return len(b.locs) }
func (b *BlobRun) Read() int64 { return b.read }

// Release gives the run's buffer back; the run holds nothing after it.
func (b *BlobRun) Release() {
	if b.plain != nil {
		b.r.readBufs.put(b.plain)
	}
	*b = BlobRun{r: b.r}
}
