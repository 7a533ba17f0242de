package wal

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
)

// ReadCluster reads what archiving needs to know about the cluster in
// pgdata from its global/pg_control: the system identifier, the WAL segment
// size and the WAL page size.
func ReadCluster(pgdata string) (walarchive.ClusterInfo, error) {
	c, err := pg.ReadControlFileAt(pgdata)
	if err != nil {
		return walarchive.ClusterInfo{}, fmt.Errorf("read %s: %w (is %s the data directory? set --pgdata)",
			filepath.Join(pgdata, "global", "pg_control"), err, pgdata)
	}
	return walarchive.ClusterInfo{SystemID: c.SystemIdentifier, SegSize: c.WALSegSize, BlockSize: c.WALBlockSize}, nil
}

// DataDir returns the data directory to use: dir if set, else the working
// directory, which is PGDATA for archive_command and restore_command.
func DataDir(dir string) (string, error) {
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("data directory: %w", err)
		}
		dir = wd
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("data directory %s: %w", dir, err)
	}
	return abs, nil
}

// DefaultSocket is the agent's socket for a data directory:
// PGDATA/tidemark-agent.sock. Inside PGDATA, because only the server's OS
// user can enter it (the socket is the agent's only door), and because
// archive_command runs there; outside pg_wal, whose names belong to
// PostgreSQL. Base backups skip it (a socket is not a regular file).
func DefaultSocket(pgdata string) string { return filepath.Join(pgdata, "tidemark-agent.sock") }

// DefaultSpoolDir is the restore spool for a data directory: beside it, as
// PGDATA.tidemark-spool, so that it is on the same disk but never part of
// the data directory (or of a backup of it).
func DefaultSpoolDir(pgdata string) string {
	return filepath.Join(filepath.Dir(pgdata), filepath.Base(pgdata)+".tidemark-spool")
}
