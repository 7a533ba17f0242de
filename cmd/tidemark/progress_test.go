package main

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/progress"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestProgressRendering: on a terminal, log lines go above the status
// line, which ends with the final report; otherwise progress is a log line
// with the phase, the counts and the rate, and no final line.
func TestProgressRendering(t *testing.T) {
	var term lockedBuffer
	status := &statusLine{w: &term}
	log := slog.New(slog.NewTextHandler(status, nil))
	ctr := progress.NewCounter()
	ctr.Phase("fetch", 100<<20, "")
	ctr.Add(25 << 20)
	stop := watchProgressEvery("restore", status, log, ctr, 10*time.Millisecond, time.Hour)
	time.Sleep(50 * time.Millisecond)
	log.Info("a log line")
	time.Sleep(30 * time.Millisecond)
	stop()
	out := term.String()
	if !strings.Contains(out, "\r\x1b[Krestore: fetch  25.0% 25.0 MiB of 100.0 MiB") || !strings.Contains(out, "a log line") ||
		!strings.Contains(out, "restore: done in") {
		t.Errorf("terminal output: %q", out)
	}
	// The log line was written on a line of its own: the status line was
	// cleared before it and redrawn after.
	if i := strings.Index(out, "time="); i < 0 || !strings.HasSuffix(out[:i], "\r\x1b[K") {
		t.Errorf("log line not above the status line: %q", out)
	}

	var plain lockedBuffer
	log = slog.New(slog.NewTextHandler(&plain, nil))
	stop = watchProgressEvery("verify", nil, log, ctr, time.Hour, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	stop()
	if out := plain.String(); !strings.Contains(out, `msg="verify progress" phase=fetch done=26214400 total=104857600`) || !strings.Contains(out, "rate=") ||
		strings.Contains(out, "done in") {
		t.Errorf("log output: %q", out)
	}
}
