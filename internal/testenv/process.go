package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// process is a server program run for one test: started, waited for until
// it answers, stopped and started again on demand (outage tests), killed
// with the test. The S3, Azure and GCS servers share it.
type process struct {
	t       testing.TB
	name    string
	args    []string // command line, fixed so Start brings back the same server
	env     []string
	dir     string // working directory; "" for the test's
	logPath string
	ready   func(context.Context, *http.Client) bool
	client0 func() *http.Client // for the readiness probe; nil: a plain client
	// graceful, when set, is sent before SIGKILL by Stop: for a server
	// that keeps its metadata in memory and would otherwise lose what it
	// had not saved yet (Azurite), which an outage test must not confuse
	// with a driver's fault.
	graceful syscall.Signal

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// launch starts the server for the first time and arranges its end.
func (s *process) launch(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			s.logTail(t)
		}
	})
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

func (s *process) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.args[0], s.args[1:]...)
	cmd.Env = s.env
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so the kill reaches any children; and killed
	// with the test binary, so a test that times out leaves no server
	// running on the machine.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited

	hc := &http.Client{Timeout: 5 * time.Second}
	if s.client0 != nil {
		hc = s.client0()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if s.ready(ctx, hc) {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("%s exited during start-up (%s); log:\n%s", s.name, cmd.ProcessState, s.tail())
		case <-ctx.Done():
			s.killLocked()
			return fmt.Errorf("%s not ready after 60s; log:\n%s", s.name, s.tail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *process) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *process) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Stop takes the server down abruptly (SIGKILL), as an outage would; its
// port then refuses connections until Start.
func (s *process) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.graceful != 0 && s.cmd != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, s.graceful)
		select {
		case <-s.exited:
			s.cmd = nil
			return
		case <-time.After(10 * time.Second):
		}
	}
	s.killLocked()
}

// Start brings a stopped server back on the same port with the same data
// and waits until it is ready. A failure is reported on the test that
// started the server (t.Errorf, so any goroutine may call Start) and
// returned.
func (s *process) Start() error {
	err := s.start()
	if err != nil {
		s.t.Errorf("restart %s: %v", s.name, err)
	}
	return err
}

func httpStatus(ctx context.Context, c *http.Client, u string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (s *process) tail() string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

func (s *process) logTail(t testing.TB) {
	t.Logf("last lines of the %s log (%s):\n%s", s.name, s.logPath, s.tail())
}
