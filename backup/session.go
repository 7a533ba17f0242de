package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/internal/bytesize"
	"github.com/tidemarkdb/tidemark/pg"
)

// server is the one connection a backup holds from pg_backup_start to
// pg_backup_stop. A non-exclusive backup ends with the session that started
// it, so losing the connection aborts the backup on the server: the
// keepalive notices that early instead of at pg_backup_stop.
type server struct {
	mu   sync.Mutex // pgx.Conn is not safe for concurrent use
	conn *pgx.Conn

	Major        int
	VersionNum   int
	InRecovery   bool
	ArchiveMode  string // off, on, always
	WALLevel     string
	DataDir      string
	SystemID     uint64
	BlockSize    int
	WALSegSize   int64
	Checksums    bool
	SummarizeWAL bool
}

// connect opens the backup's connection and reads what the backup needs to
// know about the server.
func connect(ctx context.Context, connString string) (*server, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, &RefusedError{What: "connection string", Err: err, Hint: "pass a libpq connection string or URL with --pg-conn"}
	}
	cfg.RuntimeParams["application_name"] = "tidemark backup"
	// A default statement_timeout would cancel pg_backup_stop while it
	// waits for the archive; the backup bounds its own waits.
	cfg.RuntimeParams["statement_timeout"] = "0"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	s := &server{conn: conn}
	if err := s.describe(ctx); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

func (s *server) describe(ctx context.Context) error {
	var vnum, recovery, archive, level, dataDir, sysid, blk, seg, checks string
	err := s.conn.QueryRow(ctx, `SELECT current_setting('server_version_num'), pg_is_in_recovery()::text,
	current_setting('archive_mode'), current_setting('wal_level'), current_setting('data_directory'),
	(SELECT system_identifier::text FROM pg_control_system()), current_setting('block_size'),
	current_setting('wal_segment_size'), current_setting('data_checksums')`).Scan(
		&vnum, &recovery, &archive, &level, &dataDir, &sysid, &blk, &seg, &checks)
	if err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}
	s.VersionNum, err = strconv.Atoi(vnum)
	if err != nil {
		return fmt.Errorf("server_version_num %q: %w", vnum, err)
	}
	if s.Major, err = pg.MajorFromVersionNum(s.VersionNum); err != nil {
		return &RefusedError{What: "server_version_num " + vnum, Err: err, Hint: "tidemark backs up " + pg.SupportedVersions()}
	}
	s.InRecovery = recovery == "true"
	s.ArchiveMode, s.WALLevel, s.DataDir = archive, level, dataDir
	s.Checksums = checks == "on"
	if s.SystemID, err = strconv.ParseUint(sysid, 10, 64); err != nil {
		return fmt.Errorf("system identifier %q: %w", sysid, err)
	}
	if s.BlockSize, err = strconv.Atoi(blk); err != nil {
		return fmt.Errorf("block_size %q: %w", blk, err)
	}
	if s.WALSegSize, err = bytesize.Parse(seg); err != nil {
		return fmt.Errorf("wal_segment_size %q: %w", seg, err)
	}
	if pg.HasWALSummaries(s.Major) {
		var on string
		if err := s.conn.QueryRow(ctx, "SELECT current_setting('summarize_wal')").Scan(&on); err != nil {
			return fmt.Errorf("read summarize_wal: %w", err)
		}
		s.SummarizeWAL = on == "on"
	}
	return nil
}

// checkPGData makes sure the directory the backup reads is the cluster the
// connection talks to: pg_control's system identifier must match.
func (s *server) checkPGData(pgdata string, ctl *pg.ControlFile) error {
	if ctl.SystemIdentifier != s.SystemID {
		return &RefusedError{What: "--pgdata " + pgdata,
			Err:  fmt.Errorf("it holds cluster %d but the connection reaches cluster %d (data directory %s)", ctl.SystemIdentifier, s.SystemID, s.DataDir),
			Hint: "point --pgdata and --pg-conn at the same cluster"}
	}
	if int(ctl.BlockSize) != s.BlockSize {
		return fmt.Errorf("pg_control says block size %d, the server %d", ctl.BlockSize, s.BlockSize)
	}
	return nil
}

// checkArchiving refuses a backup whose WAL nobody archives: it could never
// be restored.
func (s *server) checkArchiving(confirmer bool) error {
	if s.WALLevel == "minimal" {
		return &RefusedError{What: "wal_level = minimal", Err: errors.New("WAL at this level cannot restore a base backup"),
			Hint: "set wal_level = replica and restart PostgreSQL"}
	}
	switch {
	case s.ArchiveMode == "off":
		return &RefusedError{What: "archive_mode = off", Err: errors.New("the WAL this backup needs would not be archived"),
			Hint: "set archive_mode = on and archive_command = 'tidemark wal-push %p', then restart PostgreSQL"}
	case s.InRecovery && s.ArchiveMode != "always" && !confirmer:
		return &RefusedError{What: "standby with archive_mode = " + s.ArchiveMode,
			Err:  errors.New("pg_backup_stop on a standby cannot wait for the primary's archive"),
			Hint: "set archive_mode = always on the standby, or back up the primary"}
	}
	return nil
}

// start runs pg_backup_start and returns the backup's start LSN (its redo
// point) and timeline.
func (s *server) start(ctx context.Context, label string, fast bool) (pg.LSN, pg.TimelineID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lsnText string
	if err := s.conn.QueryRow(ctx, "SELECT ("+strings.TrimPrefix(pg.BackupStartSQL(s.Major), "SELECT ")+")::text", label, fast).Scan(&lsnText); err != nil {
		start, _ := pg.BackupFunctionNames(s.Major)
		return 0, 0, fmt.Errorf("%s: %w", start, err)
	}
	lsn, err := pg.ParseLSN(lsnText)
	if err != nil {
		return 0, 0, fmt.Errorf("backup start LSN: %w", err)
	}
	tli, err := s.timelineLocked(ctx)
	return lsn, tli, err
}

// timelineLocked is the timeline of the latest checkpoint (or restartpoint
// on a standby): the one the backup's redo point belongs to.
func (s *server) timelineLocked(ctx context.Context) (pg.TimelineID, error) {
	var tli int64
	if err := s.conn.QueryRow(ctx, "SELECT timeline_id::bigint FROM pg_control_checkpoint()").Scan(&tli); err != nil {
		return 0, fmt.Errorf("read the checkpoint timeline: %w", err)
	}
	return pg.TimelineID(tli), nil
}

// stop runs pg_backup_stop and returns the stop LSN, the backup_label and
// tablespace_map contents verbatim, and the timeline at stop.
func (s *server) stop(ctx context.Context, waitArchive bool) (pg.LSN, []byte, []byte, pg.TimelineID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sql := strings.Replace(pg.BackupStopSQL(s.Major), "SELECT lsn,", "SELECT lsn::text,", 1)
	var lsnText string
	var label, spcmap []byte
	var spc *string
	var lbl string
	if err := s.conn.QueryRow(ctx, sql, waitArchive).Scan(&lsnText, &lbl, &spc); err != nil {
		_, stop := pg.BackupFunctionNames(s.Major)
		return 0, nil, nil, 0, fmt.Errorf("%s: %w", stop, err)
	}
	label = []byte(lbl)
	if spc != nil && *spc != "" {
		spcmap = []byte(*spc)
	}
	lsn, err := pg.ParseLSN(lsnText)
	if err != nil {
		return 0, nil, nil, 0, fmt.Errorf("backup stop LSN: %w", err)
	}
	tli, err := s.timelineLocked(ctx)
	return lsn, label, spcmap, tli, err
}

// ping checks that the session (and so the backup) is still alive.
func (s *server) ping(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn.Ping(ctx)
}

// keepalive pings every interval until ctx ends and calls lost once if the
// session is gone.
func (s *server) keepalive(ctx context.Context, every time.Duration, lost func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, every)
			err := s.ping(pctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				lost(fmt.Errorf("lost the connection to PostgreSQL, which ended the backup on the server: %w", err))
				return
			}
		}
	}
}

func (s *server) close(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn.Close(ctx)
}

// checkVersionFile refuses a data directory of a PostgreSQL version
// tidemark does not support, by its PG_VERSION.
func checkVersionFile(pgdata string) error {
	path := filepath.Join(pgdata, "PG_VERSION")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &RefusedError{What: "--pgdata " + pgdata, Err: err, Hint: "point --pgdata (or PGDATA) at the cluster's data directory"}
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if _, err := pg.ParseVersionFile(b); err != nil {
		return &RefusedError{What: "--pgdata " + pgdata, Err: err, Hint: "tidemark backs up " + pg.SupportedVersions()}
	}
	return nil
}

// readControl reads pg_control from the data directory, for the facts the
// backup needs before it starts (the copy stored is read last, separately).
func readControl(pgdata string) (*pg.ControlFile, error) {
	path := filepath.Join(pgdata, "global", "pg_control")
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &RefusedError{What: "--pgdata " + pgdata, Err: err, Hint: "point --pgdata (or PGDATA) at the cluster's data directory"}
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	ctl, err := pg.ParseControlFile(b)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return ctl, nil
}
