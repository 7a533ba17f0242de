// Package heartbeat is the table tidemark keeps in the source cluster to
// prove where a recovery stopped: its name, its schema, the write of one
// beat and the read-back. The agent writes it (package wal); a restore drill
// reads it from the recovered copy (package drill). Both go through this
// package, so the table has one spelling.
//
// It is not the loop that beats (wal.RunHeartbeat) nor the judgement of a
// drill (drill's checks).
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tidemarkdb/tidemark/pg"
)

// Table is the table the heartbeat writes: one row (id 1) with the time and
// WAL position of the latest beat and the interval between beats.
const Table = "tidemark.heartbeat"

// ddl creates the table if it is missing. The CHECK keeps it at one row,
// so it never grows; each beat is one small committed transaction whose
// commit record also gives recovery_target_time a place to stop.
const ddl = `CREATE SCHEMA IF NOT EXISTS tidemark;
CREATE TABLE IF NOT EXISTS ` + Table + ` (
	id int PRIMARY KEY CHECK (id = 1),
	at timestamptz NOT NULL,
	lsn pg_lsn NOT NULL,
	every_seconds float8 NOT NULL,
	host text NOT NULL
)`

const upsert = `INSERT INTO ` + Table + ` (id, at, lsn, every_seconds, host)
VALUES (1, now(), pg_current_wal_lsn(), $1, $2)
ON CONFLICT (id) DO UPDATE SET at = excluded.at, lsn = excluded.lsn, every_seconds = excluded.every_seconds, host = excluded.host
RETURNING at, lsn::text`

const query = `SELECT at, lsn::text, every_seconds FROM ` + Table + ` WHERE id = 1`

// Querier is what the package needs of a connection; *pgx.Conn has it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Create makes the table if it is missing.
func Create(ctx context.Context, q Querier) error {
	if _, err := q.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("create %s: %w", Table, err)
	}
	return nil
}

// Row is one beat as stored.
type Row struct {
	At    time.Time
	LSN   pg.LSN
	Every time.Duration
}

// Write records a beat now, with the interval until the next one and the
// writing host, and returns the time and LSN the server recorded.
func Write(ctx context.Context, q Querier, every time.Duration, host string) (time.Time, pg.LSN, error) {
	var at time.Time
	var lsn string
	if err := q.QueryRow(ctx, upsert, every.Seconds(), host).Scan(&at, &lsn); err != nil {
		return at, 0, fmt.Errorf("write %s: %w", Table, err)
	}
	l, err := pg.ParseLSN(lsn)
	if err != nil {
		return at, 0, fmt.Errorf("write %s: %w", Table, err)
	}
	return at, l, nil
}

// ErrNone is returned by Read when the database has no heartbeat: the table
// or schema is missing, or the row was never written.
var ErrNone = errors.New("no heartbeat")

// Read returns the newest beat.
func Read(ctx context.Context, q Querier) (Row, error) {
	var r Row
	var lsn string
	var every float64
	err := q.QueryRow(ctx, query).Scan(&r.At, &lsn, &every)
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000"), errors.Is(err, pgx.ErrNoRows):
		return r, ErrNone
	case err != nil:
		return r, fmt.Errorf("read %s: %w", Table, err)
	}
	if r.LSN, err = pg.ParseLSN(lsn); err != nil {
		return r, fmt.Errorf("read %s: %w", Table, err)
	}
	r.Every = time.Duration(every * float64(time.Second))
	return r, nil
}
