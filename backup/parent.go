package backup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
)

// readHistory returns the history of timeline tli from the data directory's
// pg_wal (PostgreSQL keeps every history file there). Without the file only
// tli itself is known, which restricts parents and summaries to it.
func readHistory(pgdata string, tli pg.TimelineID) (pg.History, error) {
	if tli <= 1 {
		return pg.History{Timeline: tli}, nil
	}
	path := filepath.Join(pgdata, "pg_wal", pg.HistoryFileName(tli))
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return pg.History{Timeline: tli}, nil
	}
	if err != nil {
		return pg.History{}, fmt.Errorf("read %s: %w", path, err)
	}
	h, err := pg.ParseHistory(tli, b)
	if err != nil {
		return pg.History{}, fmt.Errorf("read %s: %w", path, err)
	}
	return h, nil
}

// cluster is what a parent snapshot must share with the running backup.
type cluster struct {
	major     int
	blockSize int
	checksums bool
}

// chooseParent returns the snapshot an incremental builds on: the newest
// (by stop LSN, then stop time; never by name) committed snapshot of the
// cluster that lies on the current timeline's history and starts no later
// than this backup, taken by the same major version with the same block size
// and data checksum setting. It returns nil and the reason when there is
// none.
func chooseParent(snaps []*repo.Snapshot, hist pg.History, c cluster, start pg.LSN) (*repo.Snapshot, string) {
	var best *repo.Snapshot
	reason := "no earlier snapshot of this cluster"
	for _, s := range snaps {
		major, err := pg.MajorFromVersionNum(s.PGVersion)
		switch {
		case err != nil || major != c.major:
			reason = fmt.Sprintf("snapshot %s was taken by PostgreSQL %d", s.ID, major)
			continue
		case s.BlockSize != c.blockSize:
			reason = fmt.Sprintf("snapshot %s has block size %d", s.ID, s.BlockSize)
			continue
		case s.DataChecksums != c.checksums:
			// Pages of a chain must agree on checksums (PITFALLS).
			reason = fmt.Sprintf("data checksums were turned %s since snapshot %s", onOff(c.checksums), s.ID)
			continue
		case pg.LSN(s.StartLSN) > start:
			// A standby's backups share the redo point of its last
			// restartpoint until the primary checkpoints again, so a parent
			// may start where this backup starts (and end after it): its
			// pages are then repaired by this backup's WAL like any torn
			// page. One that starts later cannot be.
			reason = fmt.Sprintf("snapshot %s starts after this backup's start", s.ID)
			continue
		case !hist.CanRecoverFrom(pg.TimelineID(s.StopTimeline), pg.LSN(s.StopLSN)):
			reason = fmt.Sprintf("snapshot %s is not on timeline %d's history", s.ID, hist.Timeline)
			continue
		}
		if best == nil || s.StopLSN > best.StopLSN || s.StopLSN == best.StopLSN && s.StopTime.After(best.StopTime) {
			best = s
		}
	}
	if best != nil {
		return best, ""
	}
	return nil, reason
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
