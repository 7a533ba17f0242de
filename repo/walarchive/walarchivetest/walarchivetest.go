// Package walarchivetest makes what tests of the WAL archive need without a
// PostgreSQL server: synthetic WAL segments with a valid first page header,
// and throwaway repositories. It is for tests only.
package walarchivetest

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
)

// Segment returns a segment of segSize bytes whose first page has the long
// header PostgreSQL 15 writes for segment seg of timeline tli of system
// sysid, followed by filler from seed that compresses, but not to nothing.
func Segment(sysid uint64, tli pg.TimelineID, seg pg.SegNo, segSize uint32, seed uint64) []byte {
	b := make([]byte, segSize)
	r := rand.New(rand.NewPCG(seed, uint64(seg)))
	for i := pg.WALLongPageHeaderSize; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64()&0x0F0F)
	}
	magic, _ := pg.WALMagic(15)
	le := binary.LittleEndian
	le.PutUint16(b[0:], magic)
	le.PutUint16(b[2:], pg.XLPLongHeader)
	le.PutUint32(b[4:], uint32(tli))
	le.PutUint64(b[8:], uint64(seg.Start(segSize)))
	le.PutUint64(b[24:], sysid)
	le.PutUint32(b[32:], segSize)
	le.PutUint32(b[36:], pg.DefaultWALBlockSize)
	return b
}

// Repo initialises a repository in store with a new X25519 key (and the
// escrow recipients) and returns it with the key. It is closed when the test
// ends.
func Repo(t testing.TB, store storage.Store, escrow ...string) (*repo.Repo, *age.X25519Identity) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := repo.ParseRecipient(id.Recipient().String(), "test")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(context.Background(), store, repo.InitOptions{Key: spec, EscrowRecipients: escrow})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, id
}
