package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tidemarkdb/tidemark/pg"
)

// RehearseOptions configure a migration rehearsal: the drill's scratch
// cluster, recovered to the end of the archive, runs the migration
// statement by statement, optionally under a load, and is then discarded.
// Nothing of it reaches the repository: the scratch server does not
// archive, and the rehearsal stores no report.
type RehearseOptions struct {
	// Statements are the migration, run in order, each in a transaction
	// of its own (or outside one, for those PostgreSQL refuses to run in a
	// transaction block, such as CREATE INDEX CONCURRENTLY).
	Statements []Check
	// LoadArgs, when set, are pgbench arguments (say -c 4 -N, or -f
	// script.sql): pgbench runs them against the clone from before the
	// first statement until after the last, standing in for production.
	LoadArgs []string
	// LoadWarmup is how long the load runs before the first statement
	// (default 2s).
	LoadWarmup time.Duration
	// ProbeTimeout is lock_timeout of each statement's first try: when
	// the load holds a conflicting lock longer, the statement is reported
	// as one that would queue behind production (and every query after
	// it behind the statement), then run again without the timeout.
	// Default 100ms.
	ProbeTimeout time.Duration
}

// Rehearsal is what a rehearsal measured.
type Rehearsal struct {
	Format   int       `json:"format"`
	Cluster  uint64    `json:"cluster,string"`
	Snapshot string    `json:"snapshot"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// RecoverSeconds is how long the clone took to be ready: restore plus
	// WAL replay to the end of the archive.
	RecoverSeconds float64          `json:"recover_seconds"`
	Load           *LoadReport      `json:"load,omitempty"`
	Statements     []StatementTrial `json:"statements"`
	OK             bool             `json:"ok"`
	Reason         string           `json:"reason,omitempty"`
}

// LoadReport is what the load did while the migration ran.
type LoadReport struct {
	Args   []string `json:"args"`
	Output string   `json:"output"`
}

// StatementTrial is one statement of the migration, as it ran on the
// clone.
type StatementTrial struct {
	Name      string  `json:"name"` // file:line
	Statement string  `json:"statement"`
	Seconds   float64 `json:"seconds"`
	// Lock is the strongest lock the statement held on a user relation
	// (AccessExclusiveLock blocks every query on it), on LockRelation;
	// LockSeconds is how long it was held: from the statement's start,
	// or from when it stopped waiting, to its commit.
	Lock         string  `json:"strongest_lock"`
	LockRelation string  `json:"lock_relation,omitempty"`
	LockSeconds  float64 `json:"lock_held_seconds"`
	// WaitedSeconds is how long the statement waited for locks the load
	// held; WouldWait says its first try, with lock_timeout ProbeTimeout,
	// gave up: in production it would have queued behind the load, and
	// the load behind it.
	WaitedSeconds float64 `json:"waited_for_locks_seconds"`
	WouldWait     bool    `json:"would_wait_behind_load"`
	// Rewritten lists the tables the statement rewrote (a new
	// relfilenode), RowsRewritten their rows; RowsAffected is what the
	// command tag says (UPDATE, DELETE, INSERT).
	Rewritten     []string `json:"rewritten_tables"`
	RowsRewritten int64    `json:"rows_rewritten"`
	RowsAffected  int64    `json:"rows_affected"`
	// WALBytes is the WAL the clone wrote while the statement ran (the
	// load's included, when there is one).
	WALBytes      int64  `json:"wal_bytes"`
	InTransaction bool   `json:"in_transaction"`
	Error         string `json:"error,omitempty"`
	ErrorSQLState string `json:"error_sqlstate,omitempty"`
}

// ErrRehearsalFailed is matched when a statement of the migration failed
// on the clone.
var ErrRehearsalFailed = errors.New("migration failed in rehearsal")

// Rehearse restores the newest backup into a scratch cluster, recovers it
// to the end of the archive, and runs the migration there (see
// RehearseOptions). opts are the drill's (scratch directory, server user,
// binaries, restore); its target, checks and report are not used.
func Rehearse(ctx context.Context, r Repository, w WAL, opts Options, ro RehearseOptions) (*Rehearsal, error) {
	if len(ro.Statements) == 0 {
		return nil, errors.New("rehearse: no statements to run")
	}
	if ro.ProbeTimeout <= 0 {
		ro.ProbeTimeout = 100 * time.Millisecond
	}
	if ro.LoadWarmup <= 0 {
		ro.LoadWarmup = 2 * time.Second
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	reh := &Rehearsal{Format: 1, Started: now().UTC()}
	opts.Latest = true
	opts.Checks = nil
	opts.AfterRecovery = func(ctx context.Context, s Recovered) error {
		return rehearse(ctx, s, opts, ro, reh)
	}
	rep, err := Run(ctx, r, w, opts)
	if rep != nil {
		reh.Cluster, reh.Snapshot, reh.RecoverSeconds = rep.Cluster, rep.Snapshot, rep.RecoverSeconds
	}
	reh.Finished = now().UTC()
	reh.OK = err == nil
	if err != nil {
		reh.Reason = oneLine(err.Error())
	}
	return reh, err
}

func rehearse(ctx context.Context, s Recovered, opts Options, ro RehearseOptions, reh *Rehearsal) error {
	db := opts.DBName
	if db == "" {
		db = "postgres"
	}
	conn, err := pgx.Connect(ctx, s.ConnString(db))
	if err != nil {
		return fmt.Errorf("connect to the clone: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	mon, err := pgx.Connect(ctx, s.ConnString(db))
	if err != nil {
		return fmt.Errorf("connect to the clone: %w", err)
	}
	defer mon.Close(context.WithoutCancel(ctx))

	if len(ro.LoadArgs) > 0 {
		stop, err := startLoad(ctx, s, db, ro.LoadArgs, reh)
		if err != nil {
			return err
		}
		defer stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(ro.LoadWarmup):
		}
	}
	for _, st := range ro.Statements {
		tr := trial(ctx, conn, mon, st, ro.ProbeTimeout)
		reh.Statements = append(reh.Statements, tr)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if tr.Error != "" {
			return fmt.Errorf("%w: %s: %s", ErrRehearsalFailed, st.Name, tr.Error)
		}
	}
	return nil
}

// startLoad runs pgbench against the clone until stop is called.
func startLoad(ctx context.Context, s Recovered, db string, args []string, reh *Rehearsal) (stop func(), err error) {
	bin := pg.FindClientBin(ctx, "pgbench", s.BinDir, s.Search, s.Major)
	if bin == "" {
		return nil, fmt.Errorf("a load needs pgbench, and none is installed (apt-get install postgresql-client-%d)", s.Major)
	}
	full := append([]string{"-h", s.Socket, "-p", strconv.Itoa(s.Port), "-U", s.User, "-n"}, args...)
	timed := false
	for _, a := range args {
		if a == "-T" || a == "-t" || strings.HasPrefix(a, "--time") || strings.HasPrefix(a, "--transactions") {
			timed = true
		}
	}
	if !timed {
		full = append(full, "-T", "86400")
	}
	// pgbench prints no summary when interrupted: its progress lines
	// (one a second) say what the load got while the migration ran.
	full = append(full, "-P", "1")
	full = append(full, db)
	cmd := exec.Command(bin, full...)
	cmd.Env = s.Env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the load (%s): %w", bin, err)
	}
	reh.Load = &LoadReport{Args: args}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	return func() {
		// pgbench prints its summary when interrupted.
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		o := strings.TrimSpace(out.String())
		if len(o) > 8<<10 {
			o = "..." + o[len(o)-8<<10:]
		}
		reh.Load.Output = o
	}, nil
}

// lockRank orders PostgreSQL's table lock modes by strength.
var lockRank = map[string]int{
	"AccessShareLock": 1, "RowShareLock": 2, "RowExclusiveLock": 3, "ShareUpdateExclusiveLock": 4,
	"ShareLock": 5, "ShareRowExclusiveLock": 6, "ExclusiveLock": 7, "AccessExclusiveLock": 8,
}

// userRelations are the relations whose locks and rewrites a trial
// reports: not the catalogs a DDL statement touches on the way.
const userRelations = `c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema') OR nspname LIKE 'pg_toast%')`

// trial runs one statement and measures it.
func trial(ctx context.Context, conn, mon *pgx.Conn, st Check, probe time.Duration) StatementTrial {
	tr := StatementTrial{Name: st.Name, Statement: st.SQL, Lock: "none"}
	files, err := relfilenodes(ctx, mon)
	if err != nil {
		tr.Error = err.Error()
		return tr
	}
	var lsn0 pg.LSN
	if err := scanLSN(ctx, mon, &lsn0); err != nil {
		tr.Error = err.Error()
		return tr
	}
	w := watch(ctx, mon, int(conn.PgConn().PID()))
	start := time.Now()
	res, err := execTimed(ctx, conn, st.SQL, probe)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available: the load held it
		tr.WouldWait = true
		res, err = execTimed(ctx, conn, st.SQL, 0)
	}
	end := time.Now()
	seen := w.stop()
	tr.Seconds = end.Sub(start).Seconds()
	tr.InTransaction = res.inTx
	tr.WaitedSeconds = seen.waited.Seconds()
	// The statement's own view of its locks is exact; the watcher's
	// polls also catch what a statement outside a transaction held.
	held := res.held
	if lockRank[seen.held.mode] > lockRank[held.mode] {
		held = seen.held
	}
	if held.mode != "" {
		tr.Lock, tr.LockRelation = held.mode, held.relation
		tr.LockSeconds = max(tr.Seconds-tr.WaitedSeconds, 0)
		if !seen.since.IsZero() && seen.held == held {
			tr.LockSeconds = end.Sub(seen.since).Seconds()
		}
	}
	if err != nil {
		tr.Error = oneLine(err.Error())
		if errors.As(err, &pe) {
			tr.ErrorSQLState = pe.Code
		}
		return tr
	}
	tr.RowsAffected = res.tag.RowsAffected()
	var lsn1 pg.LSN
	if err := scanLSN(ctx, mon, &lsn1); err == nil && lsn1 > lsn0 {
		tr.WALBytes = int64(lsn1 - lsn0)
	}
	after, err := relfilenodes(ctx, mon)
	if err != nil {
		tr.Error = err.Error()
		return tr
	}
	tr.Rewritten = []string{}
	for oid, rel := range after {
		if old, ok := files[oid]; ok && old.file != rel.file && rel.kind == "r" {
			tr.Rewritten = append(tr.Rewritten, rel.name)
			var n int64
			if err := mon.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier(strings.SplitN(rel.name, ".", 2)).Sanitize()).Scan(&n); err == nil {
				tr.RowsRewritten += n
			}
		}
	}
	return tr
}

// execResult is what execTimed saw of a statement.
type execResult struct {
	tag  pgconn.CommandTag
	inTx bool
	held lockHeld // the strongest lock held at the end, in a transaction
}

// lockHeld is a table lock mode on a relation.
type lockHeld struct {
	mode, relation string
	table          bool // a table rather than an index or sequence
}

// heldLocks lists the granted table locks of backend pid (0: this one) on
// user relations, strongest first.
const heldLocks = `SELECT l.mode, l.relation::regclass::text, c.relkind IN ('r', 'p', 'm') FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
	WHERE l.pid = coalesce(nullif($1, 0), pg_backend_pid()) AND l.granted AND l.locktype = 'relation' AND ` + userRelations

// strongest returns the strongest lock of rows of heldLocks.
func strongest(rows pgx.Rows) (lockHeld, error) {
	var best lockHeld
	for rows.Next() {
		var h lockHeld
		if err := rows.Scan(&h.mode, &h.relation, &h.table); err != nil {
			return best, err
		}
		// On a tie the table is named, not its index.
		if r, b := lockRank[h.mode], lockRank[best.mode]; r > b || r == b && h.table && !best.table {
			best = h
		}
	}
	return best, rows.Err()
}

// execTimed runs sql in a transaction of its own with lock_timeout (0:
// none), reads the locks it holds before the commit, and commits; a
// statement PostgreSQL refuses in a transaction block runs on its own.
func execTimed(ctx context.Context, conn *pgx.Conn, sql string, lockTimeout time.Duration) (execResult, error) {
	var res execResult
	set := "SET lock_timeout = " + strconv.FormatInt(lockTimeout.Milliseconds(), 10)
	if _, err := conn.Exec(ctx, set); err != nil {
		return res, err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "RESET lock_timeout")
	tx, err := conn.Begin(ctx)
	if err != nil {
		return res, err
	}
	res.tag, err = tx.Exec(ctx, sql)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "25001" { // active_sql_transaction: CREATE INDEX CONCURRENTLY and the like
		tx.Rollback(context.WithoutCancel(ctx))
		res.tag, err = conn.Exec(ctx, sql)
		return res, err
	}
	res.inTx = true
	if err != nil {
		tx.Rollback(context.WithoutCancel(ctx))
		return res, err
	}
	rows, err := tx.Query(ctx, heldLocks, 0)
	if err == nil {
		res.held, err = strongest(rows)
	}
	if err != nil {
		tx.Rollback(context.WithoutCancel(ctx))
		return res, fmt.Errorf("read the statement's locks: %w", err)
	}
	return res, tx.Commit(ctx)
}

func scanLSN(ctx context.Context, c *pgx.Conn, l *pg.LSN) error {
	var s string
	if err := c.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		return fmt.Errorf("read the clone's WAL position: %w", err)
	}
	v, err := pg.ParseLSN(s)
	*l = v
	return err
}

type relFile struct {
	file uint32
	name string
	kind string
}

// relfilenodes maps every user table and index to its file, so that a
// rewrite (a new file) shows.
func relfilenodes(ctx context.Context, c *pgx.Conn) (map[uint32]relFile, error) {
	rows, err := c.Query(ctx, `SELECT c.oid, c.relfilenode, c.relnamespace::regnamespace::text || '.' || c.relname, c.relkind::text
		FROM pg_class c WHERE c.relkind IN ('r', 'm', 'i') AND `+userRelations)
	if err != nil {
		return nil, fmt.Errorf("list the clone's relations: %w", err)
	}
	out := map[uint32]relFile{}
	for rows.Next() {
		var oid uint32
		var f relFile
		if err := rows.Scan(&oid, &f.file, &f.name, &f.kind); err != nil {
			return nil, err
		}
		out[oid] = f
	}
	return out, rows.Err()
}

// watched is what the watcher saw of the statement's backend.
type watched struct {
	held   lockHeld
	since  time.Time // when the strongest lock was first seen held
	waited time.Duration
}

type watcher struct {
	stop func() watched
}

// watch polls the statement's backend from another connection every few
// milliseconds: the strongest lock it holds on a user relation, and how
// long it waits for one.
func watch(ctx context.Context, mon *pgx.Conn, pid int) watcher {
	// Stopped by a channel, not by ending ctx: pgx closes a connection
	// whose query's context ends, and mon is used again afterwards.
	quit := make(chan struct{})
	var mu sync.Mutex
	var w watched
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Now()
		for {
			select {
			case <-quit:
				return
			default:
			}
			var h lockHeld
			rows, err := mon.Query(ctx, heldLocks, pid)
			if err == nil {
				h, err = strongest(rows)
			}
			var wait string
			if err == nil {
				err = mon.QueryRow(ctx, `SELECT coalesce((SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1), '')`, pid).Scan(&wait)
			}
			now := time.Now()
			if err == nil {
				mu.Lock()
				if lockRank[h.mode] > lockRank[w.held.mode] {
					w.held, w.since = h, now
				}
				if wait == "Lock" {
					w.waited += now.Sub(last)
				}
				mu.Unlock()
			}
			last = now
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return watcher{stop: func() watched {
		close(quit)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return w
	}}
}
