package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// ErrMarkRefused is matched when a mark cannot be made on this server
// (a standby, archiving off, a name PostgreSQL would not take).
var ErrMarkRefused = errors.New("mark refused")

// ErrMarkNotArchived is matched when the mark's segment did not reach the
// archive in time.
var ErrMarkNotArchived = errors.New("restore point not archived")

// MarkOptions configure Mark.
type MarkOptions struct {
	// ConnString reaches the primary as a user allowed to call
	// pg_create_restore_point and pg_switch_wal; "" uses libpq's
	// environment.
	ConnString string
	// Name is the restore point's name (1 to 63 bytes).
	Name string
	// Timeout bounds the wait for the archive (default 5 minutes).
	Timeout time.Duration
	Logger  *slog.Logger
}

// MarkResult says where the restore point is and when the archive had it.
type MarkResult struct {
	Name     string        `json:"name"`
	Cluster  uint64        `json:"cluster,string"`
	LSN      pg.LSN        `json:"lsn"`
	Segment  string        `json:"segment"`
	Key      string        `json:"key"`
	Archived time.Duration `json:"-"`
}

// Mark creates a named restore point on the server, ends its WAL segment
// and returns only once the archive holds that segment: from then on,
// restore --target-name NAME is sure to reach the point, the moment before
// a migration say. It writes nothing to the repository itself; the
// segment arrives through archive_command (wal-push or the agent).
func Mark(ctx context.Context, st storage.Store, opts MarkOptions) (*MarkResult, error) {
	if opts.Name == "" || len(opts.Name) >= 64 {
		return nil, fmt.Errorf("%w: restore point name %q: want 1 to 63 bytes", ErrMarkRefused, opts.Name)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Minute
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := pgx.Connect(ctx, opts.ConnString)
	if err != nil {
		return nil, fmt.Errorf("connect to the server: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	var archiveMode string
	var sysid uint64
	if err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('archive_mode'), system_identifier FROM pg_control_system()`).
		Scan(&inRecovery, &archiveMode, &sysid); err != nil {
		return nil, fmt.Errorf("read the server's state: %w", err)
	}
	switch {
	case inRecovery:
		return nil, fmt.Errorf("%w: the server is a standby; make the mark on the primary (restore points are written to WAL)", ErrMarkRefused)
	case archiveMode == "off":
		return nil, fmt.Errorf("%w: archive_mode is off, so the mark would never reach the archive: set archive_mode = on and archive_command = 'tidemark wal-push %%p'", ErrMarkRefused)
	}
	res := &MarkResult{Name: opts.Name, Cluster: sysid}
	var lsn string
	if err := conn.QueryRow(ctx, `SELECT pg_create_restore_point($1)::text`, opts.Name).Scan(&lsn); err != nil {
		return nil, fmt.Errorf("create restore point %q: %w", opts.Name, err)
	}
	if res.LSN, err = pg.ParseLSN(lsn); err != nil {
		return nil, fmt.Errorf("create restore point %q: %w", opts.Name, err)
	}
	// The restore point is a record of its own, so the switch always
	// completes the segment that holds it.
	if err := conn.QueryRow(ctx, `SELECT pg_walfile_name($1::pg_lsn), pg_switch_wal()::text`, lsn).Scan(&res.Segment, new(string)); err != nil {
		return nil, fmt.Errorf("switch WAL after restore point %q: %w", opts.Name, err)
	}
	if res.Key, err = walarchive.Key(sysid, res.Segment); err != nil {
		return nil, err
	}
	log.Info("mark: restore point created; waiting for the archive", "name", opts.Name, "lsn", res.LSN, "segment", res.Segment)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := st.Head(wctx, res.Key)
		if err == nil {
			res.Archived = time.Since(start)
			return res, nil
		}
		if !errors.Is(err, storage.ErrNotFound) && !storage.IsTransient(err) {
			return nil, fmt.Errorf("look for %s in the archive: %w", res.Segment, err)
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: restore point %q is in segment %s, which did not reach the archive within %s: check archive_command and pg_stat_archiver, then run mark again", ErrMarkNotArchived, opts.Name, res.Segment, opts.Timeout)
		case <-tick.C:
		}
	}
}
