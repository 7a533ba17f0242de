package lease

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/storage/mem"
)

var ctx = context.Background()

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestExclusiveConflictNamesHolder(t *testing.T) {
	store := mem.New()
	a, err := Acquire(ctx, store, "backup/7312", Options{Exclusive: true, Command: "tidemark backup", Host: "db1", PID: 4242})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(ctx, store, "backup/7312", Options{Exclusive: true, Command: "tidemark backup", Host: "db2"})
	var le *LockedError
	if !errors.As(err, &le) || le.Holder.Host != "db1" || le.Holder.PID != 4242 {
		t.Fatalf("second exclusive lease: %v", err)
	}
	for _, s := range []string{"db1", "4242", "tidemark backup", "since"} {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("message %q lacks %q", err, s)
		}
	}
	// The loser cleaned up after itself.
	if infos, _ := List(ctx, store, "backup/7312"); len(infos) != 1 {
		t.Fatalf("%d leases after a conflict", len(infos))
	}
	// Shared leases conflict with the exclusive one too, other scopes do not.
	if _, err := Acquire(ctx, store, "backup/7312", Options{}); !errors.As(err, &le) {
		t.Fatalf("shared vs exclusive: %v", err)
	}
	b, err := Acquire(ctx, store, "backup/9999", Options{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	a.Release(ctx)
	b.Release(ctx)
	if infos, _ := List(ctx, store, "backup"); len(infos) != 0 {
		t.Fatalf("%d leases after release", len(infos))
	}
}

func TestSharedLeasesListable(t *testing.T) {
	store := mem.New()
	var ls []*Lease
	for range 3 {
		l, err := Acquire(ctx, store, "writers", Options{Command: "wal-push"})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	infos, err := List(ctx, store, "writers")
	if err != nil || len(infos) != 3 {
		t.Fatalf("list: %d %v", len(infos), err)
	}
	for _, i := range infos {
		if i.Started.IsZero() || i.Exclusive {
			t.Fatalf("lease %+v", i)
		}
	}
	// An exclusive lease (say, a GC that must run alone) conflicts with them.
	if _, err := Acquire(ctx, store, "writers", Options{Exclusive: true}); err == nil {
		t.Fatal("exclusive lease granted over shared ones")
	}
	for _, l := range ls {
		l.Release(ctx)
	}
}

func TestExpiredLeaseReportedAndTakenOver(t *testing.T) {
	store := mem.New()
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	old, err := Acquire(ctx, store, "backup/1", Options{Exclusive: true, TTL: time.Minute, Host: "dead-host",
		PID: 7, Command: "tidemark backup", Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	// The holder dies: its refresh loop stops, its lease stays.
	old.mu.Lock()
	close(old.stop)
	old.mu.Unlock()
	<-old.stopped
	c.add(2 * time.Minute)
	l, err := Acquire(ctx, store, "backup/1", Options{Exclusive: true, TTL: time.Minute, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Expired) != 1 || l.Expired[0].Host != "dead-host" || l.Expired[0].PID != 7 {
		t.Fatalf("expired leases reported: %+v", l.Expired)
	}
	if infos, _ := List(ctx, store, "backup/1"); len(infos) != 1 || infos[0].ID != l.Info().ID {
		t.Fatalf("expired lease not removed: %+v", infos)
	}
	// The old holder finds out when it tries to refresh.
	old.err = nil
	if err := old.Refresh(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("refresh of a removed lease: %v", err)
	}
	select {
	case <-old.Lost():
	default:
		t.Fatal("Lost not closed")
	}
	l.Release(ctx)
}

func TestRefreshKeepsLeaseAlive(t *testing.T) {
	store := mem.New()
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	l, err := Acquire(ctx, store, "s", Options{Exclusive: true, TTL: time.Minute, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	for range 5 {
		c.add(40 * time.Second)
		if err := l.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Five minutes after it started, the refreshed lease still blocks others.
	if _, err := Acquire(ctx, store, "s", Options{Exclusive: true, Now: c.now}); err == nil {
		t.Fatal("refreshed lease was taken over")
	}
	if got := l.Info().Refreshed; !got.Equal(c.now()) {
		t.Fatalf("refreshed %v, want %v", got, c.now())
	}
	// The background loop refreshes on its own (1 s TTL -> every 333 ms).
	l2, err := Acquire(ctx, store, "t", Options{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	first := l2.Info().Refreshed
	deadline := time.Now().Add(5 * time.Second)
	for l2.Info().Refreshed.Equal(first) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if l2.Info().Refreshed.Equal(first) {
		t.Fatal("background refresh did not happen")
	}
	l2.Release(ctx)
}

func TestBadScope(t *testing.T) {
	for _, s := range []string{"", "a//b", "../x", "a/./b", "sp ace"} {
		if _, err := Acquire(ctx, mem.New(), s, Options{}); err == nil {
			t.Fatalf("scope %q accepted", s)
		}
	}
}

func FuzzDecode(f *testing.F) {
	i := Info{Format: Version, Scope: "backup/1", ID: NewID(time.Now()), TTL: 60, Host: "h"}
	f.Add(i.Encode())
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := Decode(b)
		if err != nil {
			return
		}
		if _, err := Decode(info.Encode()); err != nil {
			t.Fatalf("re-encoded lease does not decode: %v", err)
		}
	})
}

// TestReclaimGone: a lease held by a process of this host that is gone is
// removed by an Acquire that asks for it; a live holder, or one on another
// host, still conflicts.
func TestReclaimGone(t *testing.T) {
	store := mem.New()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("no true(1):", err)
	}
	dead := cmd.Process.Pid
	host, _ := os.Hostname()
	if _, err := Acquire(ctx, store, "backup/1", Options{Exclusive: true, Host: host, PID: dead}); err != nil {
		t.Fatal(err)
	}
	var le *LockedError
	if _, err := Acquire(ctx, store, "backup/1", Options{Exclusive: true}); !errors.As(err, &le) {
		t.Fatalf("without ReclaimGone: %v", err)
	}
	l, err := Acquire(ctx, store, "backup/1", Options{Exclusive: true, ReclaimGone: true})
	if err != nil {
		t.Fatalf("with ReclaimGone: %v", err)
	}
	defer l.Release(ctx)
	if _, err := Acquire(ctx, store, "backup/1", Options{Exclusive: true, ReclaimGone: true}); !errors.As(err, &le) {
		t.Fatalf("a live holder was reclaimed: %v", err)
	}
	if _, err := Acquire(ctx, store, "backup/2", Options{Exclusive: true, Host: "elsewhere", PID: dead}); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(ctx, store, "backup/2", Options{Exclusive: true, ReclaimGone: true}); !errors.As(err, &le) {
		t.Fatalf("a holder on another host was reclaimed: %v", err)
	}
}
