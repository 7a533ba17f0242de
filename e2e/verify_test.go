package e2e

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// TestVerifySubsetRotation: four runs of --read-data-subset 25% read every
// pack exactly once, and every WAL object (segments and .backup files) once
// in its own rotation over the archive's keys; the fifth starts a new pack
// cycle. The rotations live in the repository, so they are shared by every
// host that verifies.
func TestVerifySubsetRotation(t *testing.T) {
	e := backupEnv(t, true, 128<<10)
	c := e.backupCluster(15, nil)
	testenv.LoadRandomTable(t, c, "data", 30000)
	e.backup(c)
	testenv.UpdateRandomRows(t, c, "data", 0.3)
	e.backup(c)
	for range 3 {
		workload(t, c, 1)
		switchAndWait(t, c)
	}

	all := append(e.keys("data/"), e.keys("meta/")...)
	slices.Sort(all)
	if len(all) < 12 {
		t.Fatalf("only %d packs: the test needs more", len(all))
	}
	var wal []string // what --read-data reads of the archive: all but history files and the marker
	for _, k := range e.keys(walarchive.Prefix) {
		name := strings.TrimSuffix(k[strings.LastIndexByte(k, '/')+1:], walarchive.SummarySuffix)
		if f, err := pg.ParseWALFileName(name); err == nil && f.Kind != pg.WALTimelineHistory {
			wal = append(wal, k)
		}
	}
	slices.Sort(wal)
	if len(wal) < 8 {
		t.Fatalf("only %d WAL objects: the test needs more", len(wal))
	}
	var read, walRead []string
	walDone := false
	for i := range 4 {
		rep := e.verify(0, "--read-data-subset", "25%")
		if rep.Subset == nil || rep.Subset.Cycle != 1 || rep.Subset.CycleComplete != (i == 3) {
			t.Fatalf("run %d: subset %+v", i+1, rep.Subset)
		}
		if rep.Stats.PacksRead != len(rep.ReadPacks) || !strings.Contains(strings.Join(rep.Checked, " "), "share") {
			t.Fatalf("run %d does not say what it read: %+v %v", i+1, rep.Stats, rep.Checked)
		}
		read = append(read, rep.ReadPacks...)
		w := rep.WAL
		if w == nil || int64(w.Objects) != rep.Stats.WALObjectsRead || w.Objects == 0 {
			t.Fatalf("run %d: WAL share %+v, %d WAL objects read", i+1, w, rep.Stats.WALObjectsRead)
		}
		switch {
		case w.Cycle == 1 && !walDone:
			for _, k := range wal {
				if k >= w.First && k <= w.Last {
					walRead = append(walRead, k)
				}
			}
			walDone = w.CycleComplete
		case walDone && w.Cycle == 2 && w.First != wal[0]:
			t.Fatalf("run %d: the second WAL cycle starts at %s, not %s", i+1, w.First, wal[0])
		case !walDone || w.Cycle != 2:
			t.Fatalf("run %d: WAL share %+v after cycle 1 was complete=%v", i+1, w, walDone)
		}
	}
	slices.Sort(read)
	if strings.Join(read, " ") != strings.Join(all, " ") {
		t.Fatalf("four runs of 25%% read %d packs (%d distinct); the repository has %d: each must be read exactly once",
			len(read), len(slices.Compact(slices.Clone(read))), len(all))
	}
	slices.Sort(walRead)
	if !walDone || !slices.Equal(walRead, wal) {
		t.Fatalf("four runs of 25%% read %d WAL objects in the first cycle (complete: %v); the archive has %d: each must be read exactly once\n%v\n%v",
			len(walRead), walDone, len(wal), walRead, wal)
	}
	if rep := e.verify(0, "--read-data-subset", "25%"); rep.Subset.Cycle != 2 || rep.Subset.From != 0 {
		t.Fatalf("fifth run: %+v", rep.Subset)
	}
}

// TestVerifyMissingHistory: archiving turned on after a promotion leaves
// the new timeline without its history file in the archive (PostgreSQL
// marks it ready only while archiving is on). Verify reports it, naming
// the file and the snapshot on that timeline.
func TestVerifyMissingHistory(t *testing.T) {
	e := backupEnv(t, false, 0)
	c := e.backupCluster(15, nil)
	c.Exec(t, "CREATE TABLE t (i int); INSERT INTO t VALUES (1)")
	e.backup(c)
	switchAndWait(t, c)
	e.verify(0)

	// A restore promoted with archiving off: timeline 2, whose history
	// file is never archived.
	dir := e.target("promoted")
	e.restore(dir, "--target", "immediate", "--target-action", "promote")
	p := e.start(15, dir, false)
	waitRecovered(t, p)
	p.Exec(t, "CHECKPOINT")
	p.Stop()
	// Archiving on from now.
	p = e.start(15, dir, true)
	if tli := p.QueryString(t, "SELECT timeline_id FROM pg_control_checkpoint()"); tli != "2" {
		t.Fatalf("promoted to timeline %s", tli)
	}
	p.Exec(t, "INSERT INTO t VALUES (2)")
	s := e.backup(p)
	switchAndWait(t, p)

	rep := e.verify(6)
	found := false
	for _, pr := range rep.Problems {
		if pr.Kind == "history" && strings.HasSuffix(pr.Object, "00000002.history") && strings.Contains(pr.Message, "no history file") {
			found = slices.ContainsFunc(pr.Snapshots, func(k string) bool { return strings.HasSuffix(k, s.ID) })
		}
	}
	if !found {
		t.Fatalf("verify does not report the missing 00000002.history with snapshot %s: %+v", s.ID, rep.Problems)
	}
	// Archiving the file by hand fixes it.
	r := e.run(p, "wal-push", "--repo", e.url, "--identity", e.identity, "pg_wal/00000002.history")
	if r.code != 0 {
		t.Fatalf("wal-push of the history file: %d %s", r.code, r.stderr)
	}
	e.verify(0)
}

// run runs tidemark as the server user in c's data directory.
func (e *restoreEnv) run(c *testenv.Cluster, args ...string) result {
	e.t.Helper()
	cmd := c.Command(e.t.Context(), e.bin, args...)
	cmd.Dir = c.DataDir
	cmd.Env = append(cmd.Env, e.env...)
	out, err := cmd.CombinedOutput()
	res := result{stdout: string(out), stderr: string(out)}
	if err != nil {
		res.code = cmd.ProcessState.ExitCode()
		if res.code == 0 {
			res.code = -1
		}
	}
	return res
}

// TestVerifyReadWAL: verify --read-data reads every WAL object of a real
// archive on MinIO. A segment flipped by one byte, truncated, replaced with
// another segment's object, or with another cluster's segment of the same
// name is caught and named, with the snapshot whose recovery it breaks and
// the target times it takes away.
func TestVerifyReadWAL(t *testing.T) {
	e := backupEnv(t, true, 0)
	a := e.backupCluster(15, nil)
	b := e.backupCluster(15, nil) // another cluster, same repository
	testenv.LoadRandomTable(t, a, "data", 5000)
	s := e.backup(a)
	for range 4 {
		workload(t, a, 2)
		switchAndWait(t, a)
	}
	for range 4 {
		b.Exec(t, "SELECT pg_logical_emit_message(false, 'x', repeat('y', 1000))")
		switchAndWait(t, b)
	}
	rep := e.verify(0, "--read-data")
	if rep.Stats.WALObjectsRead < 10 || rep.Stats.WALPagesChecked < 10*2048 {
		t.Fatalf("verify --read-data read %d WAL objects, %d pages", rep.Stats.WALObjectsRead, rep.Stats.WALPagesChecked)
	}

	// A segment after the backup's end on cluster a, and another one.
	st := e.store()
	segs := func(cluster uint64) []string {
		var out []string
		for _, k := range e.keys(walarchive.ClusterPrefix(cluster)) {
			name := k[strings.LastIndexByte(k, '/')+1:]
			if len(name) == 24 {
				out = append(out, k)
			}
		}
		return out
	}
	as := segs(s.Cluster)
	stopKey, _ := walarchive.Key(s.Cluster, pg.SegmentName(1, pg.LSN(s.StopLSN).Segment(16<<20), 16<<20))
	i := slices.Index(as, stopKey)
	if i < 0 || i+3 >= len(as) {
		t.Fatalf("segments %v; the backup stops in %s", as, stopKey)
	}
	victim, donor := as[i+2], as[i+3]
	name := victim[strings.LastIndexByte(victim, '/')+1:]
	var foreign string
	for _, k := range e.keys(walarchive.Prefix) {
		if !strings.HasPrefix(k, walarchive.ClusterPrefix(s.Cluster)) && strings.HasSuffix(k, "/"+name) {
			foreign = k
		}
	}
	if foreign == "" {
		t.Fatalf("cluster b has no segment %s", name)
	}
	saved := getObject(t, st, victim)
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"one byte flipped", func() []byte { c := bytes.Clone(saved); c[len(c)/2] ^= 0x10; return c }(), "authenticate"},
		{"truncated", saved[:len(saved)*3/4], ""},
		{"another segment's object", getObject(t, st, donor), "holds " + donor[strings.LastIndexByte(donor, '/')+1:]},
		{"another cluster's segment", getObject(t, st, foreign), "not " + strconv.FormatUint(s.Cluster, 10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			putObject(t, st, victim, tc.body)
			defer putObject(t, st, victim, saved)
			e.verify(0) // a listing sees nothing wrong
			rep := e.verify(6, "--read-data")
			var p *verifyProblem
			for i := range rep.Problems {
				if rep.Problems[i].Object == victim {
					p = &rep.Problems[i]
				}
			}
			if p == nil || p.Kind != "wal-data" || len(rep.Problems) != 1 {
				t.Fatalf("no single wal-data problem names %s: %+v", victim, rep.Problems)
			}
			if !strings.Contains(p.Message, tc.want) || !slices.ContainsFunc(p.Snapshots, func(k string) bool { return strings.HasSuffix(k, s.ID) }) {
				t.Fatalf("problem %+v: want %q and snapshot %s", p, tc.want, s.ID)
			}
			if len(p.Lost) != 1 || p.Lost[0].Timeline != 1 || p.Lost[0].From.Before(s.StopTime) || !p.Lost[0].To.IsZero() {
				t.Fatalf("lost targets %+v: want timeline 1 from after the backup's stop %s to the archive head", p.Lost, s.StopTime)
			}
		})
	}
	e.verify(0, "--read-data")
}
