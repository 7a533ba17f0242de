package retention

import (
	"slices"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

func TestSplitLockedKeepsPairs(t *testing.T) {
	file := func(seg pg.SegNo, summary bool) WALFile {
		f, err := pg.ParseWALFileName(pg.SegmentName(1, seg, segSize))
		if err != nil {
			t.Fatal(err)
		}
		k, _ := walarchive.Key(cluster, f.Name())
		if summary {
			k += walarchive.SummarySuffix
		}
		return WALFile{Key: k, File: f, Seg: seg, Summary: summary}
	}
	wal := []WALFile{file(1, false), file(1, true), file(2, false), file(2, true), file(3, false), file(3, true), file(4, false)}
	// Segment 2's summary (re-pushed later) and segment 3 itself are locked.
	free, locked := splitLocked(wal, func(f WALFile) bool {
		return f.Seg == 2 && f.Summary || f.Seg == 3 && !f.Summary
	})
	var got []string
	for _, f := range free {
		got = append(got, f.Key[strings.LastIndex(f.Key, "/")+1:])
	}
	want := []string{"000000010000000000000001", "000000010000000000000001" + walarchive.SummarySuffix, "000000010000000000000004"}
	if !slices.Equal(got, want) || len(locked) != 4 {
		t.Fatalf("free %v (%d locked), want %v", got, len(locked), want)
	}
}
