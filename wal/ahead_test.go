package wal

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
)

// walSegment is a segment whose every page has a header with its address,
// as PostgreSQL writes them.
func walSegment(tli pg.TimelineID, seg pg.SegNo, seed uint64) []byte {
	b := segment(tli, seg, seed)
	magic := binary.LittleEndian.Uint16(b)
	for off := pg.DefaultWALBlockSize; off < len(b); off += pg.DefaultWALBlockSize {
		binary.LittleEndian.PutUint16(b[off:], magic)
		binary.LittleEndian.PutUint16(b[off+2:], 0)
		binary.LittleEndian.PutUint32(b[off+4:], uint32(tli))
		binary.LittleEndian.PutUint64(b[off+8:], uint64(seg.Start(segSize))+uint64(off))
	}
	return b
}

// The agent compresses the segment PostgreSQL is writing a piece at a time,
// as each piece is followed by a written page, and the upload of the ready
// segment takes those frames, except for a piece rewritten after it was
// compressed. A recycled file (the pages of another segment) is not taken
// for written WAL.
func TestAgentCompressesAhead(t *testing.T) {
	e := newEnv(t)
	// Segment 1 archived: PostgreSQL writes segment 2, in a recycled file.
	writeFile(t, filepath.Join(e.pgdata, "pg_wal", "archive_status", segName(1, 1)+".done"), nil)
	name := segName(1, 2)
	path := filepath.Join(e.pgdata, "pg_wal", name)
	writeFile(t, path, walSegment(1, 9, 9))
	a, stop := runAgent(t, e, AgentOptions{AheadPoll: 2 * time.Millisecond})
	defer stop()
	pieces := func() int {
		a.comp.mu.Lock()
		defer a.comp.mu.Unlock()
		if a.comp.cur == nil || a.comp.cur.name != name {
			return -1
		}
		return len(a.comp.cur.frames)
	}
	waitFor(t, "the compressor to look at "+name, func() bool { return pieces() == 0 })
	time.Sleep(50 * time.Millisecond)
	if n := pieces(); n != 0 {
		t.Fatalf("%d pieces of a recycled file compressed", n)
	}

	final := walSegment(1, 2, 2)
	piece := aheadPiece(segSize)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(from, to int) {
		t.Helper()
		if _, err := f.WriteAt(final[from:to], int64(from)); err != nil {
			t.Fatal(err)
		}
	}
	// Pieces are complete once the page after them is written.
	write(0, 3*piece)
	waitFor(t, "two pieces", func() bool { return pieces() == 2 })
	time.Sleep(20 * time.Millisecond)
	if n := pieces(); n != 2 {
		t.Fatalf("%d pieces compressed, want 2: the third has no page after it", n)
	}
	// Everything but the last piece, which is complete only with the
	// segment.
	last := segSize - piece
	write(3*piece, last+pg.DefaultWALBlockSize)
	waitFor(t, "all pieces but the last", func() bool { return pieces() == segSize/piece-1 })
	time.Sleep(20 * time.Millisecond)
	if n := pieces(); n != segSize/piece-1 {
		t.Fatalf("%d pieces compressed, want %d", n, segSize/piece-1)
	}
	// A piece changes after it was compressed (a server crash rewrites its
	// last segment from the end of the valid WAL).
	final[3*piece+100] ^= 0xFF
	write(3*piece, 4*piece)
	write(last, segSize)
	writeFile(t, filepath.Join(e.pgdata, "pg_wal", "archive_status", name+".ready"), nil)
	if resp, err := push(t, a, e, name); err != nil || !resp.OK {
		t.Fatalf("push: %+v %v", resp, err)
	}
	if !bytes.Equal(e.archived(t, name), final) {
		t.Fatal("the archived segment is not the file PostgreSQL finished")
	}
	a.mu.Lock()
	got := a.stats.ahead
	a.mu.Unlock()
	if want := int64(segSize/piece - 2); got != want {
		t.Errorf("%d pieces taken from ahead, want %d (all but the last and the rewritten one)", got, want)
	}
	// The compressor moved on to the next segment.
	waitFor(t, "the next segment", func() bool {
		a.comp.mu.Lock()
		defer a.comp.mu.Unlock()
		return a.comp.cur != nil && a.comp.cur.name == segName(1, 3)
	})
}
