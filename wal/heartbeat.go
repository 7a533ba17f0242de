package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/heartbeat"
)

// HeartbeatOptions configure RunHeartbeat.
type HeartbeatOptions struct {
	// ConnString reaches the cluster as a user that may create a schema
	// (the first time) and write the table; "" uses the libpq environment.
	ConnString string
	// Every is the interval between beats.
	Every  time.Duration
	Logger *slog.Logger
	// OnBeat, when set, receives what each beat saw of the server, for
	// metrics (archive lag).
	OnBeat func(Beat)
}

// Beat is what one heartbeat wrote and saw.
type Beat struct {
	At  time.Time
	LSN pg.LSN
	// InRecovery: the server is a standby and nothing was written.
	InRecovery bool
	// From pg_stat_archiver: the newest segment PostgreSQL archived, when,
	// and the counters.
	LastArchived     string
	LastArchivedTime time.Time
	Archived, Failed int64
	// CurrentSegment is the segment being written now; LagSegments how
	// many complete segments before it are not archived yet.
	CurrentSegment string
	LagSegments    int64
}

// RunHeartbeat writes a heartbeat row every opts.Every until ctx ends. A
// failed beat is logged and retried at the next tick (reconnecting): the
// heartbeat must never stop the agent it runs in. On a standby it writes
// nothing (it cannot) and only reports the archiver's state.
func RunHeartbeat(ctx context.Context, opts HeartbeatOptions) error {
	if opts.Every <= 0 {
		return errors.New("heartbeat interval must be positive")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, _ := os.Hostname()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	created := false
	tick := time.NewTicker(opts.Every)
	defer tick.Stop()
	failing := false
	for {
		err := func() error {
			if conn == nil {
				c, err := pgx.Connect(ctx, opts.ConnString)
				if err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				conn = c
			}
			b, err := beat(ctx, conn, &created, opts.Every, host)
			if err != nil {
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
				return err
			}
			if opts.OnBeat != nil {
				opts.OnBeat(b)
			}
			return nil
		}()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			log.Warn("heartbeat failed; retrying every interval", "table", heartbeat.Table, "err", err)
			failing = true
		case err == nil && failing:
			log.Info("heartbeat written again", "table", heartbeat.Table)
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func beat(ctx context.Context, conn *pgx.Conn, created *bool, every time.Duration, host string) (Beat, error) {
	var b Beat
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&b.InRecovery); err != nil {
		return b, err
	}
	if !b.InRecovery {
		if !*created {
			if err := heartbeat.Create(ctx, conn); err != nil {
				return b, err
			}
			*created = true
		}
		var err error
		if b.At, b.LSN, err = heartbeat.Write(ctx, conn, every, host); err != nil {
			return b, err
		}
	}
	var last string
	var lastTime *time.Time
	err := conn.QueryRow(ctx, `SELECT coalesce(last_archived_wal, ''), last_archived_time, archived_count, failed_count FROM pg_stat_archiver`).
		Scan(&last, &lastTime, &b.Archived, &b.Failed)
	if err != nil {
		return b, fmt.Errorf("read pg_stat_archiver: %w", err)
	}
	b.LastArchived = last
	if lastTime != nil {
		b.LastArchivedTime = *lastTime
	}
	if !b.InRecovery {
		var segSize int64
		err := conn.QueryRow(ctx, `SELECT pg_walfile_name(pg_current_wal_lsn()), setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'`).
			Scan(&b.CurrentSegment, &segSize)
		if err == nil && len(last) >= 24 {
			cur, err1 := pg.ParseWALFileName(b.CurrentSegment)
			done, err2 := pg.ParseWALFileName(last[:24])
			if err1 == nil && err2 == nil {
				cs, err1 := cur.SegNo(uint32(segSize))
				ds, err2 := done.SegNo(uint32(segSize))
				if err1 == nil && err2 == nil && cs > ds {
					b.LagSegments = int64(cs - ds - 1)
				}
			}
		}
	}
	return b, nil
}
