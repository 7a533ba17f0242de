package wal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// compressor compresses the segment PostgreSQL is writing, a piece at a
// time as each piece is complete, so that when the segment is ready only
// its last piece or two are left to compress: that work, not the upload, is
// most of what archive_command waits for under load.
//
// A piece is taken as complete once PostgreSQL has written the page after
// it (WAL is written in order; only the last page written is rewritten as
// records are added to it). Nothing depends on that being right: the upload
// compares each piece of the finished file with the bytes its frame was
// made from (walarchive.PutFromAhead), and compresses it again if they
// differ, as after a crash of the server, which rewrites its last segment
// from the end of the valid WAL on.
type compressor struct {
	arch      *walarchive.Archive
	ci        walarchive.ClusterInfo
	walDir    string
	segSize   uint32
	blockSize int
	piece     int
	log       *slog.Logger

	mu   sync.Mutex
	cur  *aheadSeg // the segment being written
	prev *aheadSeg // the one before it, complete, until its upload takes it

	buf []byte // one piece, read from the segment
}

// aheadSeg is one segment being compressed ahead. Only run's goroutine
// touches f, done, last and stuck; frames and taken are shared with take,
// under compressor.mu.
type aheadSeg struct {
	name   string
	start  pg.LSN
	f      *os.File // nil until the file exists
	done   int      // pieces compressed
	last   *walarchive.Frame
	stuck  bool // a page that does not belong: no more pieces of it
	frames []*walarchive.Frame
	taken  bool // the upload has the frames
}

// aheadPiece is the piece size for segments of segSize bytes: a sixteenth of
// a segment, within the bounds the archive accepts (1 MiB for 16 MiB
// segments, where frames of 1 MiB compress as well as larger ones: the zstd
// window is 1 MiB).
func aheadPiece(segSize uint32) int {
	return min(max(int(segSize/16), 64<<10), 1<<20)
}

func newCompressor(arch *walarchive.Archive, ci walarchive.ClusterInfo, walDir string, log *slog.Logger) *compressor {
	bs := int(ci.BlockSize)
	if bs == 0 {
		bs = pg.DefaultWALBlockSize
	}
	piece := aheadPiece(ci.SegSize)
	return &compressor{arch: arch, ci: ci, walDir: walDir, segSize: ci.SegSize, blockSize: bs, piece: piece, log: log,
		buf: make([]byte, piece)}
}

// run compresses ahead until ctx ends. target says, each time it is asked,
// which segment PostgreSQL writes now; "" while that is not known or while
// uploads are behind (they come first; what was compressed is kept).
func (c *compressor) run(ctx context.Context, every time.Duration, target func() string) {
	t := time.NewTicker(every)
	defer t.Stop()
	defer c.reset()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		name := target()
		if name == "" {
			continue
		}
		if err := c.step(ctx, name); err != nil && ctx.Err() == nil {
			c.log.Debug("compressing ahead", "file", name, "err", err)
		}
	}
}

// reset forgets every frame. Only run's goroutine calls it.
func (c *compressor) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur.close()
	c.prev.close()
	c.cur, c.prev = nil, nil
}

func (s *aheadSeg) close() {
	if s != nil && s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// take hands the frames made of the segment called name to its upload and
// forgets them; nil if there are none.
func (c *compressor) take(name string) *walarchive.Ahead {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range []**aheadSeg{&c.cur, &c.prev} {
		s := *p
		if s == nil || s.name != name {
			continue
		}
		frames := s.frames
		s.frames, s.taken = nil, true
		if len(frames) == 0 {
			return nil
		}
		return &walarchive.Ahead{Piece: c.piece, Frames: frames}
	}
	return nil
}

// step compresses what is complete of the segment called name and not yet
// compressed.
func (c *compressor) step(ctx context.Context, name string) error {
	c.mu.Lock()
	if c.cur == nil || c.cur.name != name {
		// PostgreSQL moved on: the current segment is complete, and its
		// upload compresses its last pieces itself.
		start, err := segStart(name, c.segSize)
		if err != nil {
			c.mu.Unlock()
			return err
		}
		c.prev.close()
		c.prev = c.cur
		c.prev.close() // its frames stay until its upload takes them
		c.cur = &aheadSeg{name: name, start: start}
	}
	s := c.cur
	taken := s.taken
	c.mu.Unlock()
	if s.stuck || taken {
		return nil
	}
	if s.f == nil {
		f, err := os.Open(filepath.Join(c.walDir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil // not created yet
		}
		if err != nil {
			return err
		}
		s.f = f
	}
	// The last piece is complete only with the segment.
	for (s.done+2)*c.piece <= int(c.segSize) {
		k := s.done
		next := int64(k+1) * int64(c.piece)
		if ok, err := c.pageWritten(s, next); err != nil || !ok {
			return err
		}
		if _, err := s.f.ReadAt(c.buf, int64(k)*int64(c.piece)); err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		for off := 0; off < c.piece; off += c.blockSize {
			if !c.belongs(s, int64(k*c.piece+off), c.buf[off:]) {
				// Not WAL PostgreSQL wrote in order: leave the segment to
				// its upload.
				s.stuck = true
				return fmt.Errorf("%s: page at %d is not this segment's", name, k*c.piece+off)
			}
		}
		fr, err := c.arch.Precompress(ctx, c.ci, s.name, s.last, c.buf)
		if err != nil {
			return err
		}
		c.mu.Lock()
		taken := s.taken
		if !taken {
			s.frames = append(s.frames, fr)
			s.done++
			s.last = fr
		}
		c.mu.Unlock()
		if taken {
			return nil
		}
	}
	return nil
}

// pageWritten reports whether the page at off of s has been written since
// the segment file took its name: its header has this segment's address.
// A recycled file still holds the pages of the segment it was before.
func (c *compressor) pageWritten(s *aheadSeg, off int64) (bool, error) {
	var h [pg.WALShortPageHeaderSize]byte
	if _, err := s.f.ReadAt(h[:], off); err != nil {
		return false, fmt.Errorf("read %s: %w", s.name, err)
	}
	return c.belongs(s, off, h[:]), nil
}

func (c *compressor) belongs(s *aheadSeg, off int64, page []byte) bool {
	h, err := pg.ParseWALPageHeader(page)
	return err == nil && h.PageAddr == s.start+pg.LSN(off) && h.IsLong() == (off == 0)
}

func segStart(name string, segSize uint32) (pg.LSN, error) {
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return 0, err
	}
	n, err := f.SegNo(segSize)
	if err != nil {
		return 0, err
	}
	return n.Start(segSize), nil
}

// nextSegment is the name of the segment after name on its timeline.
func nextSegment(name string, segSize uint32) (string, error) {
	f, err := pg.ParseWALFileName(name)
	if err != nil {
		return "", err
	}
	n, err := f.SegNo(segSize)
	if err != nil {
		return "", err
	}
	return pg.SegmentName(f.Timeline, n+1, segSize), nil
}
