package testenv

import (
	"testing"
)

func TestLoad(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, PGConfig{})

	PGBenchInit(t, c, 1)
	res := PGBenchRun(t, c, PGBenchOptions{Clients: 2, Jobs: 2, Transactions: 50, Builtin: "simple-update"})
	if res.Transactions != 100 || res.TPS <= 0 {
		t.Fatalf("pgbench result %+v", res)
	}

	LoadRandomTable(t, c, "public.r", 10000)
	sum := TableChecksum(t, c, "r")
	if n := c.QueryString(t, "SELECT count(DISTINCT payload) FROM r"); n != "10000" {
		t.Fatalf("distinct payloads = %s", n)
	}
	// Moving every row leaves the contents, and so the checksum, alone.
	c.Exec(t, "UPDATE r SET payload = payload WHERE id % 2 = 0")
	c.Exec(t, "VACUUM FULL r")
	if got := TableChecksum(t, c, "r"); got != sum {
		t.Fatalf("checksum changed with the physical order: %s, was %s", got, sum)
	}
	fp := DatabaseFingerprint(t, c)

	c.Exec(t, "CREATE DATABASE other")
	c.ExecDB(t, "other", "CREATE TABLE o (x int); INSERT INTO o VALUES (1); CREATE UNLOGGED TABLE u (x int)")
	sums := TableChecksums(t, c)
	for _, k := range []string{"postgres.public.r", "postgres.public.pgbench_accounts", "other.public.o"} {
		if sums[k] == "" {
			t.Errorf("no checksum for %s in %v", k, sums)
		}
	}
	if _, ok := sums["other.public.u"]; ok {
		t.Error("unlogged table included: a restore empties it")
	}
	if got := DatabaseFingerprint(t, c); got == fp {
		t.Fatal("fingerprint did not change with a new database")
	}
	fp = DatabaseFingerprint(t, c)

	if n := UpdateRandomRows(t, c, "r", 0.1); n == 0 {
		t.Fatal("UpdateRandomRows changed nothing")
	}
	if got := TableChecksum(t, c, "r"); got == sum {
		t.Fatal("checksum did not change with the contents")
	}
	if got := DatabaseFingerprint(t, c); got == fp {
		t.Fatal("fingerprint did not change with the contents")
	}
}
