package main

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/backup"
	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/internal/progress"
)

// Progress of long commands (backup, restore, verify --read-data, drill,
// gc), rendered here and only here: on a terminal one status line at the
// bottom of stderr, redrawn every second, with log lines written above it;
// otherwise a log line every logProgressEvery. The jobs count (backup's
// Progress, internal/progress.Counter for the others); this file shows.
//
// Hand-written rather than vbauerster/mpb or schollz/progressbar: one line
// of text with log lines interleaved above it is all tidemark shows, and
// this is some forty lines; mpb would need its own refresh goroutine and
// the logger routed through its container, progressbar does not keep log
// lines above the bar.

// logProgressEvery is how often a command without a terminal logs progress.
const logProgressEvery = 30 * time.Second

// progressLogger builds the command's logger and, on a terminal, the
// status line it writes above.
func progressLogger(c *cli.Context) (*slog.Logger, *statusLine, error) {
	var status *statusLine
	logTo := c.App.ErrWriter
	if isTerminal(c.App.ErrWriter) {
		status = &statusLine{w: c.App.ErrWriter}
		logTo = status
	}
	log, err := newLogger(c, logTo)
	return log, status, err
}

// watchProgress shows ctr's progress under the job's name until the
// returned stop runs.
func watchProgress(job string, status *statusLine, log *slog.Logger, ctr *progress.Counter) (stop func()) {
	return watchProgressEvery(job, status, log, ctr, time.Second, logProgressEvery)
}

func watchProgressEvery(job string, status *statusLine, log *slog.Logger, ctr *progress.Counter, redraw, logEvery time.Duration) (stop func()) {
	if status != nil {
		return progress.Watch(ctr, redraw, func(r progress.Report) { status.show(job+": "+r.String(), r.Final) })
	}
	return progress.Watch(ctr, logEvery, func(r progress.Report) {
		if r.Final {
			return // the command reports its own outcome
		}
		args := []any{"phase", r.Phase, "done", r.Done, "total", r.Total, "elapsed", r.Elapsed.Round(time.Second).String()}
		if r.Unit == "" {
			args = append(args, "rate", bytesize.Format(int64(r.Rate))+"/s")
		} else {
			args = append(args, "unit", r.Unit)
		}
		if r.ETA > 0 {
			args = append(args, "eta", r.ETA.Round(time.Second).String())
		}
		log.Info(job+" progress", args...)
	})
}

// statusLine keeps one progress line at the bottom of a terminal: log
// lines written through it appear above the line, which is redrawn.
type statusLine struct {
	mu   sync.Mutex
	w    io.Writer
	line string
}

// Write writes a log line above the status line.
func (s *statusLine) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.line != "" {
		io.WriteString(s.w, "\r\x1b[K")
	}
	n, err := s.w.Write(p)
	if s.line != "" {
		io.WriteString(s.w, s.line)
	}
	return n, err
}

// show redraws the status line; a final one ends it.
func (s *statusLine) show(line string, final bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.line = line
	fmt.Fprintf(s.w, "\r\x1b[K%s", s.line)
	if final {
		io.WriteString(s.w, "\n")
		s.line = ""
	}
}

// logProgress logs progress as structured lines.
func logProgress(log *slog.Logger) func(backup.Progress) {
	return func(p backup.Progress) {
		if p.Final {
			return // the backup logs its own outcome
		}
		log.Info("backup progress", "phase", p.Phase, "method", p.Method, "done_bytes", p.DoneBytes, "total_bytes", p.TotalBytes,
			"read_bytes", p.ReadBytes, "stored_bytes", p.StoredBytes, "files", p.Files,
			"rate", bytesize.Format(int64(p.Rate))+"/s", "eta", p.ETA.Round(time.Second).String())
	}
}
