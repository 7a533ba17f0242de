package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/repotest"
	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/pgtest"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage/mem"
)

var walT0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

// commitAt is the time of the one commit in segment seg of archived.
func commitAt(seg pg.SegNo) time.Time { return walT0.Add(time.Duration(seg) * time.Minute) }

// archived makes a repository with the snapshots of healthy (starting in
// segments 2, 4 and 6, stopping at 10:00, 10:01 and 10:02 on the 2nd) and
// segments 1..10 of timeline 1 really archived, each with one commit.
func archived(t *testing.T) (*repotest.Fixture, []*repo.Snapshot, *walarchive.Archive) {
	f, snaps, _ := healthy(t)
	wa := walarchive.New(f.Store, f.Repo, f.Repo.WALMACKey(), walarchive.Options{})
	for seg := pg.SegNo(1); seg <= 10; seg++ {
		putSegment(t, wa, seg, pgtest.Segment(1, seg, segSize, cluster, []time.Time{commitAt(seg)}))
	}
	return f, snaps, wa
}

func putSegment(t *testing.T, wa *walarchive.Archive, seg pg.SegNo, b []byte) string {
	t.Helper()
	ci := walarchive.ClusterInfo{SystemID: cluster, SegSize: segSize, BlockSize: pgtest.WALPageSize}
	res, err := wa.Put(context.Background(), ci, pg.SegmentName(1, seg, segSize), b)
	if err != nil {
		t.Fatal(err)
	}
	return res.Key
}

func segKey(seg pg.SegNo) string {
	k, _ := walarchive.Key(cluster, pg.SegmentName(1, seg, segSize))
	return k
}

func sumKey(seg pg.SegNo) string { return walarchive.SummaryKey(cluster, 1, seg, segSize) }

func TestReadWALHealthy(t *testing.T) {
	f, _, wa := archived(t)
	rep, err := verifyRun(t, f, wa, Options{ReadData: true})
	if err != nil {
		t.Fatalf("%v\n%v", err, rep.Problems)
	}
	s := rep.Stats
	// Each segment and its block summary.
	if s.WALObjectsRead != 20 || s.WALBytesRead != 10*segSize || s.WALPagesChecked != 10*segSize/pgtest.WALPageSize || s.WALStoredRead == 0 || s.WALRequests < 21 {
		t.Fatalf("stats %+v", s)
	}
	if rep.WAL == nil || rep.WAL.Objects != 20 || rep.WAL.Total != 20 || rep.WAL.First != segKey(1) || rep.WAL.Last != sumKey(10) {
		t.Fatalf("wal share %+v", rep.WAL)
	}
	text := strings.Join(rep.Checked, "\n")
	if !strings.Contains(text, "WAL contents: all 20 objects") || !strings.Contains(text, "page headers") {
		t.Fatalf("report does not say what it read of the WAL:\n%s", text)
	}
	if strings.Contains(strings.Join(rep.NotChecked, "\n"), "WAL contents") {
		t.Fatalf("report says WAL contents were not checked: %v", rep.NotChecked)
	}
	// Without --read-data, the report says WAL was only listed.
	rep, err = verifyRun(t, f, wa, Options{})
	if err != nil || rep.Stats.WALObjectsRead != 0 || !strings.Contains(strings.Join(rep.NotChecked, "\n"), "WAL contents") {
		t.Fatalf("listing only: %v %+v %v", err, rep.Stats, rep.NotChecked)
	}
}

// replace puts b at key in the fixture's store.
func replace(t *testing.T, f *repotest.Fixture, key string, b []byte) {
	t.Helper()
	if err := f.Store.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

func object(t *testing.T, f *repotest.Fixture, key string) []byte {
	t.Helper()
	rc, err := f.Store.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReadWALDamage: each kind of damaged WAL object is reported, named,
// with the snapshots whose recovery it breaks and the target times lost.
func TestReadWALDamage(t *testing.T) {
	f, snaps, wa := archived(t)
	other := repotest.New(t) // another repository, same cluster
	owa := walarchive.New(other.Store, other.Repo, other.Repo.WALMACKey(), walarchive.Options{})
	putSegment(t, owa, 5, pgtest.Segment(1, 5, segSize, cluster, []time.Time{commitAt(5)}))
	snapKey := func(i int) string { return repo.SnapshotKey(cluster, snaps[i].ID) }

	// A segment whose MAC is right but whose fourth page is not where it
	// says: only the page check finds it (wal-push checks the first page).
	badPage := pgtest.Segment(1, 5, segSize, cluster, []time.Time{commitAt(5)})
	binary.LittleEndian.PutUint64(badPage[3*pgtest.WALPageSize+8:], 0x123456000)

	tests := []struct {
		name   string
		seg    pg.SegNo
		damage func(key string)
		want   string
		snaps  []int // broken, in any order
		cons   int   // of them, cannot become consistent
		to     time.Time
	}{
		{"one byte flipped", 5, func(k string) { f.Store.Store.(*mem.Store).Corrupt(k, len(object(t, f, k))/2) }, "", []int{0, 1}, 0, snaps[2].StopTime},
		{"truncated", 5, func(k string) { b := object(t, f, k); replace(t, f, k, b[:len(b)-100]) }, "", []int{0, 1}, 0, snaps[2].StopTime},
		{"another segment's object", 5, func(k string) { replace(t, f, k, object(t, f, segKey(7))) }, "holds 000000010000000000000007", []int{0, 1}, 0, snaps[2].StopTime},
		{"another repository's object", 5, func(k string) { replace(t, f, k, object(t, other, segKey(5))) }, "not encrypted to this repository", []int{0, 1}, 0, snaps[2].StopTime},
		{"bad page header", 5, func(k string) {
			f.Store.Delete(context.Background(), k)
			putSegment(t, wa, 5, badPage)
		}, "page 3", []int{0, 1}, 0, snaps[2].StopTime},
		{"a snapshot's own segment", 6, func(k string) { f.Store.Store.(*mem.Store).Corrupt(k, 5000) }, "", []int{0, 1, 2}, 1, time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := segKey(tc.seg)
			saved := object(t, f, key)
			defer replace(t, f, key, saved)
			tc.damage(key)
			rep, err := verifyRun(t, f, wa, Options{ReadData: true})
			if !errors.Is(err, ErrProblems) {
				t.Fatalf("verify --read-data of a damaged %s: %v", key, err)
			}
			p := problemWith(rep, "wal-data", key)
			if p == nil || len(rep.Problems) != 1 {
				t.Fatalf("no single wal-data problem names %s: %v", key, rep.Problems)
			}
			if !strings.Contains(p.Message, tc.want) || !strings.Contains(err.Error(), key) {
				t.Fatalf("problem %q (error %v), want %q", p.Message, err, tc.want)
			}
			var want []string
			for _, i := range tc.snaps {
				want = append(want, snapKey(i))
			}
			got := slices.Clone(p.Snapshots)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("breaks %v, want %v", got, want)
			}
			if tc.cons > 0 && !strings.Contains(p.Message, "cannot become consistent") {
				t.Fatalf("message does not say a snapshot cannot become consistent: %s", p.Message)
			}
			// Targets from the last commit before the segment to the stop
			// of the next snapshot that starts after it are lost.
			if len(p.Lost) != 1 {
				t.Fatalf("lost %+v", p.Lost)
			}
			l := p.Lost[0]
			if l.Timeline != 1 || !l.From.Equal(commitAt(tc.seg-1)) || l.FromBasis != "last commit" || !l.To.Equal(tc.to.UTC()) {
				t.Fatalf("lost %+v, want timeline 1 from %s to %s", l, commitAt(tc.seg-1), tc.to)
			}
			if !strings.Contains(p.Message, l.String()) {
				t.Fatalf("message does not give the lost range %s: %s", l, p.Message)
			}
		})
	}
	if rep, err := verifyRun(t, f, wa, Options{ReadData: true}); err != nil {
		t.Fatalf("after repairs: %v %v", err, rep.Problems)
	}
}

// TestReadWALRotation: runs of --read-data-subset 25% read the archive in
// key order, each object once per cycle, continuing where the last stopped;
// a record of the rotation written before WAL was read starts WAL at the
// beginning.
func TestReadWALRotation(t *testing.T) {
	f, _, wa := archived(t)
	// A state record as an older tidemark wrote it: packs only.
	r := f.Open(t)
	v := &run{r: r, o: Options{Now: time.Now}, rep: &Report{}}
	old := &state{Format: 1, Cycle: 3, Done: 0, CycleStarted: time.Now(), Updated: time.Now()}
	if err := v.saveState(context.Background(), old, false); err != nil {
		t.Fatal(err)
	}
	var read []string
	for i := range 4 {
		rep, err := verifyRun(t, f, wa, Options{Subset: 0.25})
		if err != nil {
			t.Fatalf("run %d: %v %v", i+1, err, rep.Problems)
		}
		w := rep.WAL
		if w == nil || w.Cycle != 1 || w.CycleComplete != (i == 3) || rep.Subset.Cycle != 3 {
			t.Fatalf("run %d: %+v %+v", i+1, w, rep.Subset)
		}
		for seg := pg.SegNo(1); seg <= 10; seg++ {
			for _, k := range []string{segKey(seg), sumKey(seg)} {
				if k >= w.First && k <= w.Last {
					read = append(read, k)
				}
			}
		}
		if int64(rep.Stats.WALObjectsRead) != w.Objects || w.Objects != 5 {
			t.Fatalf("run %d read %d objects: %+v", i+1, rep.Stats.WALObjectsRead, w)
		}
	}
	var all []string
	for seg := pg.SegNo(1); seg <= 10; seg++ {
		all = append(all, segKey(seg), sumKey(seg))
	}
	if !slices.Equal(read, all) {
		t.Fatalf("four runs read %v, want each of %v once", read, all)
	}
	rep, err := verifyRun(t, f, wa, Options{Subset: 0.25})
	if err != nil || rep.WAL.Cycle != 2 || rep.WAL.First != segKey(1) {
		t.Fatalf("fifth run: %v %+v", err, rep.WAL)
	}
}

// TestReadWALSideFiles: .backup and .partial objects are read and checked
// too; damaged, they are problems that break no snapshot's recovery.
func TestReadWALSideFiles(t *testing.T) {
	f, _, wa := archived(t)
	ci := walarchive.ClusterInfo{SystemID: cluster, SegSize: segSize, BlockSize: pgtest.WALPageSize}
	label, err := os.ReadFile("../pg/testdata/pg15/000000010000000000000002.00000028.backup")
	if err != nil {
		t.Fatal(err)
	}
	bk, err := wa.Put(context.Background(), ci, "000000010000000000000002.00000028.backup", label)
	if err != nil {
		t.Fatal(err)
	}
	partial := pgtest.Segment(1, 11, segSize, cluster, []time.Time{commitAt(11)})[:3*pgtest.WALPageSize+100]
	pt, err := wa.Put(context.Background(), ci, "00000001000000000000000B.partial", partial)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := verifyRun(t, f, wa, Options{ReadData: true})
	if err != nil || rep.Stats.WALObjectsRead != 22 {
		t.Fatalf("healthy: %v, %d objects read: %v", err, rep.Stats.WALObjectsRead, rep.Problems)
	}
	for key, want := range map[string]string{bk.Key: "backup history file", pt.Key: ".partial segment"} {
		saved := object(t, f, key)
		f.Store.Store.(*mem.Store).Corrupt(key, len(saved)/2)
		rep, err := verifyRun(t, f, wa, Options{ReadData: true})
		p := problemWith(rep, "wal-data", key)
		if !errors.Is(err, ErrProblems) || p == nil || !strings.Contains(p.Message, want) || len(p.Snapshots) != 0 {
			t.Fatalf("damaged %s: %v %+v", key, err, rep.Problems)
		}
		replace(t, f, key, saved)
	}
}

// TestReadWALSummariesAndPieces: a block summary and a piece of a segment
// streamed by wal-receive are read and authenticated too; damaged, each is
// a problem that says what it costs, and breaks no snapshot's recovery.
func TestReadWALSummariesAndPieces(t *testing.T) {
	f, _, wa := archived(t)
	ci := walarchive.ClusterInfo{SystemID: cluster, SegSize: segSize, BlockSize: pgtest.WALPageSize}
	seg := pgtest.Segment(1, 11, segSize, cluster, []time.Time{commitAt(11)})
	pc, err := wa.PutPiece(context.Background(), ci, pg.SegmentName(1, 11, segSize), 0, seg[:2*pgtest.WALPageSize])
	if err != nil {
		t.Fatal(err)
	}
	rep, err := verifyRun(t, f, wa, Options{ReadData: true})
	if err != nil || rep.Stats.WALObjectsRead != 21 {
		t.Fatalf("healthy: %v, %d objects read: %v", err, rep.Stats.WALObjectsRead, rep.Problems)
	}
	for key, want := range map[string]string{sumKey(4): "block summary", pc.Key: "streamed by wal-receive"} {
		saved := object(t, f, key)
		f.Store.Store.(*mem.Store).Corrupt(key, len(saved)/2)
		rep, err := verifyRun(t, f, wa, Options{ReadData: true})
		p := problemWith(rep, "wal-data", key)
		if !errors.Is(err, ErrProblems) || p == nil || !strings.Contains(p.Message, want) || len(p.Snapshots) != 0 {
			t.Fatalf("damaged %s: %v %+v", key, err, rep.Problems)
		}
		replace(t, f, key, saved)
	}
	// A summary moved to another segment's key is caught: it names the
	// segment it describes.
	saved := object(t, f, sumKey(5))
	replace(t, f, sumKey(5), object(t, f, sumKey(6)))
	rep, err = verifyRun(t, f, wa, Options{ReadData: true})
	if p := problemWith(rep, "wal-data", sumKey(5)); !errors.Is(err, ErrProblems) || p == nil {
		t.Fatalf("swapped summary: %v %+v", err, rep.Problems)
	}
	replace(t, f, sumKey(5), saved)
}
