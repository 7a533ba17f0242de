package e2e

import (
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// waitStreaming waits until standby s streams from its primary and has
// replayed everything primary p has written.
func waitStreaming(t *testing.T, p, s *testenv.Cluster) {
	t.Helper()
	waitFor(t, func() bool {
		return s.QueryString(t, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), '')") == "streaming"
	})
	lsn := p.QueryString(t, "SELECT pg_current_wal_lsn()")
	waitFor(t, func() bool {
		return s.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn) == "t"
	})
}

// TestRestoreStandby seeds a replica from the repository while pgbench
// writes on the primary: it catches up from the archive, streams, and then
// matches the primary table by table. The primary is touched only by the
// replica's own streaming connection.
func TestRestoreStandby(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(15, nil)
	testenv.PGBenchInit(t, c, 5)
	e.backup(c)

	var wg sync.WaitGroup
	wg.Go(func() {
		testenv.PGBenchRun(t, c, testenv.PGBenchOptions{Clients: 2, Duration: 8 * time.Second})
	})
	dir := e.target("replica")
	out := e.restore(dir, "--standby", "--primary-conninfo", c.ConnString()+"&application_name=replica1")
	t.Logf("restore --standby:\n%s", out)
	r := e.start(15, dir, false)
	wg.Wait()
	c.Exec(t, "CHECKPOINT")
	waitStreaming(t, c, r)
	if !r.InRecovery(t) {
		t.Fatal("the replica is not a standby")
	}
	if got := c.QueryString(t, "SELECT application_name || ':' || state FROM pg_stat_replication"); got != "replica1:streaming" {
		t.Errorf("primary sees %q", got)
	}
	want := testenv.TableChecksums(t, c)
	if got := testenv.TableChecksums(t, r); !maps.Equal(got, want) {
		t.Errorf("replica differs from the primary:\n got %v\nwant %v", got, want)
	}
}

// TestRestoreStandbyRebuildsFormerPrimary: after a failover, the former
// primary (which went on writing) is rebuilt in place with --delta as a
// standby of the new primary, from the repository alone: the new primary
// serves only its stream.
func TestRestoreStandbyRebuildsFormerPrimary(t *testing.T) {
	e := newRestoreEnv(t, false)
	c := e.cluster(17, nil)
	testenv.PGBenchInit(t, c, 5)
	c.Exec(t, "CREATE TABLE t (id serial, batch text)")
	c.Exec(t, "INSERT INTO t (batch) VALUES ('base')")
	e.backup(c)

	// A standby from the repository, then the failover to it while the
	// old primary still runs: what it writes from then on, the new
	// primary never sees.
	b := e.target("new-primary")
	e.restore(b, "--standby", "--primary-conninfo", c.ConnString())
	nb := e.start(17, b, true)
	waitStreaming(t, c, nb)
	nb.Promote()
	waitRecovered(t, nb)
	c.Exec(t, "INSERT INTO t (batch) VALUES ('diverged')")
	c.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 50")
	switchAndWait(t, c)
	c.Stop()
	nb.Exec(t, "INSERT INTO t (batch) VALUES ('new')")
	switchAndWait(t, nb)

	e.restore(c.DataDir, "--delta", "--standby", "--primary-conninfo", nb.ConnString())
	r := e.start(17, c.DataDir, false)
	nb.Exec(t, "INSERT INTO t (batch) VALUES ('streamed')")
	waitStreaming(t, nb, r)
	if got := batches(t, r); got != "base:1,new:1,streamed:1" {
		t.Errorf("rebuilt former primary: %s", got)
	}
	want := testenv.TableChecksums(t, nb)
	if got := testenv.TableChecksums(t, r); !maps.Equal(got, want) {
		t.Errorf("rebuilt standby differs from the new primary")
	}
}
