package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
)

// gcLoopDuration is how long TestGCConcurrent runs its loops:
// TIDEMARK_GC_LOOP (a Go duration) or 2 minutes.
func gcLoopDuration(t *testing.T) time.Duration {
	if v := os.Getenv("TIDEMARK_GC_LOOP"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("TIDEMARK_GC_LOOP=%q: %v", v, err)
		}
		return d
	}
	return 2 * time.Minute
}

type gcJSON struct {
	Deleted     struct{ Packs int } `json:"deleted"`
	Quarantined struct{ Packs int } `json:"quarantined"`
	Released    struct{ Packs int } `json:"released"`
	Repacked    struct{ Packs int } `json:"repacked"`
}

// TestGCConcurrent runs garbage collection in a loop while backups (some
// killed half way, every one followed by expire --keep-last 2) and WAL
// pushes under a write load run in loops, then checks that nothing was
// lost: verify --read-data is clean and every snapshot left restores and
// recovers to a state within the bounds recorded around its backup.
func TestGCConcurrent(t *testing.T) {
	e := backupEnv(t, true, 128<<10)
	c := e.backupCluster(15, nil)
	c.Exec(t, `CREATE TABLE ledger (id bigserial PRIMARY KEY, pad text);
		CREATE TABLE churn (id int PRIMARY KEY, v text);
		INSERT INTO churn SELECT g, md5(g::text) FROM generate_series(1, 20000) g`)
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	deadline := time.Now().Add(gcLoopDuration(t))
	var wg sync.WaitGroup

	// Writes and WAL switches: the WAL pushes.
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := c.Conn(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ctx.Err() == nil; i++ {
			conn.Exec(ctx, "INSERT INTO ledger (pad) VALUES (repeat('x', 100))")
			conn.Exec(ctx, "UPDATE churn SET v = md5(v) WHERE id % 97 = $1", i%97)
			if i%20 == 0 {
				conn.Exec(ctx, "SELECT pg_switch_wal()")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	maxID := func() int64 {
		conn, err := c.Conn(context.WithoutCancel(ctx))
		if err != nil {
			t.Error(err)
			return 0
		}
		defer conn.Close(context.Background())
		var n int64
		conn.QueryRow(context.Background(), "SELECT coalesce(max(id), 0) FROM ledger").Scan(&n)
		return n
	}
	// Backups, some killed, each followed by expire.
	type bounds struct{ lo, hi int64 }
	var mu sync.Mutex
	ranges := map[string]bounds{}
	var backups, killed int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			lo := maxID()
			args := append([]string{"backup", "--json", "--pgdata", c.DataDir, "--pg-conn", c.ConnString()}, e.repoArgs()...)
			if i%4 == 3 {
				args = append(args, "--full")
			}
			cmd := exec.Command(e.bin, args...)
			cmd.Env = append(os.Environ(), e.env...)
			var out, errs strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &errs
			var kill *time.Timer
			if i%5 == 2 {
				kill = time.AfterFunc(time.Duration(500+rand.IntN(1500))*time.Millisecond, func() { cmd.Process.Signal(syscall.SIGKILL) })
			}
			err := cmd.Run()
			if kill != nil && !kill.Stop() {
				killed++
				continue
			}
			if err != nil {
				t.Errorf("backup %d: %v: %s", i, err, errs.String())
				continue
			}
			var res backupJSON
			if err := fromJSON(out.String(), "backup", &res); err != nil {
				t.Errorf("backup %d printed %q", i, out.String())
				continue
			}
			mu.Lock()
			ranges[res.Snapshot.ID] = bounds{lo, maxID()}
			backups++
			mu.Unlock()
			if _, errs, code := e.tidemark(append([]string{"expire", "--keep-last", "2"}, e.repoArgs()...)...); code != 0 {
				t.Errorf("expire: exit %d: %s", code, errs)
			}
		}
	}()

	// Garbage collection in a loop.
	var gcRuns int
	var total gcJSON
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Now().Before(deadline) {
			out, errs, code := e.tidemark(append([]string{"gc", "--json", "--grace", "2s", "--repack-dead", "30%"}, e.repoArgs()...)...)
			if code != 0 {
				t.Errorf("gc: exit %d: %s", code, errs)
				time.Sleep(time.Second)
				continue
			}
			var res gcJSON
			fromJSON(out, "gc", &res)
			gcRuns++
			total.Deleted.Packs += res.Deleted.Packs
			total.Quarantined.Packs += res.Quarantined.Packs
			total.Released.Packs += res.Released.Packs
			total.Repacked.Packs += res.Repacked.Packs
			time.Sleep(time.Second)
		}
	}()
	for time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(time.Second)
	}
	// The writer stops with the others; wait for the backup and gc loops
	// to finish their current round.
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	wg.Wait()
	t.Logf("%d backups (%d killed), %d gc runs: quarantined %d packs, deleted %d, released %d, repacked %d",
		backups, killed, gcRuns, total.Quarantined.Packs, total.Deleted.Packs, total.Released.Packs, total.Repacked.Packs)
	if t.Failed() {
		return
	}
	if total.Deleted.Packs == 0 {
		t.Errorf("gc deleted nothing: the loop did not exercise it")
	}

	switchAndWait(t, c)
	e.verify(0, "--read-data")
	snaps := e.snapshots()
	if len(snaps) == 0 {
		t.Fatal("no snapshots left")
	}
	for _, s := range snaps {
		b, ok := ranges[s.ID]
		if !ok {
			t.Errorf("snapshot %s was not made by a backup that reported success", s.ID)
			continue
		}
		dir := e.target("r-" + s.ID)
		e.restore(dir, "--backup", s.ID, "--target", "immediate", "--target-action", "promote")
		r := e.start(15, dir, false)
		waitRecovered(t, r)
		got, _ := strconv.ParseInt(r.QueryString(t, "SELECT coalesce(max(id), 0) FROM ledger"), 10, 64)
		if got < b.lo || got > b.hi {
			t.Errorf("snapshot %s recovers with ledger at %d, outside [%d, %d] recorded around its backup", s.ID, got, b.lo, b.hi)
		}
		r.Stop()
		os.RemoveAll(dir)
	}
}

// TestExpirePITR: four full backups; expire with a window that starts
// between the second and the third keeps the second (the window's base),
// third and fourth; --dry-run changes nothing; gc then frees the first's
// packs; and recovery to times inside the window still works while a time
// before it is refused.
func TestExpirePITR(t *testing.T) {
	e := backupEnv(t, false, 128<<10)
	c := e.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "data", 20000)
	c.Exec(t, "CREATE TABLE t (id serial, batch text)")
	var snaps []*repo.Snapshot
	times := map[string]string{}
	mark := func(name string) {
		c.Exec(t, "INSERT INTO t (batch) VALUES ($1)", name)
		times[name] = c.QueryString(t, "SELECT clock_timestamp()")
		time.Sleep(1500 * time.Millisecond)
	}
	for i := 1; i <= 4; i++ {
		c.Exec(t, "UPDATE data SET payload = md5(payload)")
		mark(fmt.Sprintf("before-b%d", i))
		snaps = append(snaps, e.backup(c, "--full"))
		time.Sleep(1500 * time.Millisecond)
		mark(fmt.Sprintf("after-b%d", i))
	}
	// A commit after the last mark, so that recovery can stop there.
	c.Exec(t, "INSERT INTO t (batch) VALUES ('end')")
	switchAndWait(t, c)

	mid := snaps[1].StopTime.Add(snaps[2].StopTime.Sub(snaps[1].StopTime) / 2)
	within := func() string { return fmt.Sprintf("%dms", time.Since(mid).Milliseconds()) }
	before := e.keys("")
	out := e.mustTidemark(append([]string{"expire", "--dry-run", "--json", "--keep-within", within()}, e.repoArgs()...)...)
	if after := e.keys(""); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatal("expire --dry-run changed the repository")
	}
	var dry struct {
		Clusters []struct {
			Snapshots []struct {
				ID   string
				Keep bool
			}
		}
	}
	if err := fromJSON(out, "expire", &dry); err != nil || len(dry.Clusters) != 1 {
		t.Fatalf("expire --dry-run --json: %v\n%s", err, out)
	}
	var keep []string
	for _, s := range dry.Clusters[0].Snapshots {
		if s.Keep {
			keep = append(keep, s.ID)
		}
	}
	want := []string{snaps[1].ID, snaps[2].ID, snaps[3].ID}
	if !slices.Equal(keep, want) {
		t.Fatalf("dry run keeps %v, want %v", keep, want)
	}

	e.mustTidemark(append([]string{"expire", "--keep-within", within()}, e.repoArgs()...)...)
	var left []string
	for _, s := range e.snapshots() {
		left = append(left, s.ID)
	}
	if !slices.Equal(left, want) {
		t.Fatalf("after expire: %v, want %v", left, want)
	}
	_, packBytes := e.count("data/")
	out = e.mustTidemark(append([]string{"gc", "--json", "--grace", "1s", "--wait", "1m"}, e.repoArgs()...)...)
	var g gcJSON
	fromJSON(out, "gc", &g)
	if _, after := e.count("data/"); g.Deleted.Packs == 0 || after >= packBytes {
		t.Fatalf("gc after expire deleted %d packs (%d -> %d bytes of data packs)", g.Deleted.Packs, packBytes, after)
	}
	e.verify(0, "--read-data")

	// Inside the window: just after it starts (from backup 2 and its WAL),
	// and at its end.
	all := []string{"before-b1", "after-b1", "before-b2", "after-b2", "before-b3", "after-b3", "before-b4", "after-b4"}
	for _, n := range []int{4, 8} {
		name := all[n-1]
		dir := e.target("pitr-" + name)
		e.restore(dir, "--target-time", times[name], "--target-action", "promote")
		r := e.start(15, dir, false)
		waitRecovered(t, r)
		if got, want := r.QueryString(t, "SELECT string_agg(batch, ',' ORDER BY id) FROM t"), strings.Join(all[:n], ","); got != want {
			t.Errorf("recovery to %s (%s): batches %s, want %s", times[name], name, got, want)
		}
		r.Stop()
	}
	// Before the window: backup 1 and the WAL after it are gone.
	dir := e.target("too-old")
	if _, _, code := e.tidemark(append([]string{"restore", "--pgdata", dir, "--target-time", times["after-b1"]}, e.repoArgs()...)...); code == 0 {
		t.Fatal("recovery to a time before the window succeeded")
	}
	os.RemoveAll(dir)
}
