package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/pg/heartbeat"
)

func (d *run) result(name, status, format string, args ...any) CheckResult {
	r := CheckResult{Name: name, Status: status, Detail: fmt.Sprintf(format, args...)}
	d.rep.Checks = append(d.rep.Checks, r)
	lvl := d.log.Info
	if status == Fail {
		lvl = d.log.Error
	}
	lvl("drill: check", "check", name, "status", status, "detail", r.Detail)
	return r
}

// checks runs every check on the promoted server, stops it, then checks
// the data pages on disk. The first failure is the drill's reason; the
// other checks still run, so the report shows everything.
func (d *run) checks(ctx context.Context) error {
	var first error
	failed := func(r CheckResult) {
		if r.Status == Fail && first == nil {
			first = fmt.Errorf("%s: %s", r.Name, r.Detail)
		}
	}
	conn, err := pgx.Connect(ctx, d.connString(d.o.DBName))
	if err != nil {
		return d.fail(fmt.Errorf("connect to the recovered server as %s to database %s: %w (pass --db-user/--db-name)", d.o.DBUser, d.o.DBName, err))
	}
	failed(d.checkTarget(ctx, conn))
	failed(d.checkHeartbeat(ctx, conn))
	for _, c := range d.o.Checks {
		failed(d.checkSQL(ctx, conn, c))
	}
	conn.Close(context.WithoutCancel(ctx))
	failed(d.checkAmcheck(ctx))
	if err := d.stop(); err != nil {
		failed(d.result("shutdown", Fail, "%v", err))
	}
	failed(d.checkPages(ctx))
	if first != nil {
		return d.fail(first)
	}
	return ctx.Err()
}

// checkTarget checks what PostgreSQL says about where it stopped.
func (d *run) checkTarget(ctx context.Context, conn *pgx.Conn) CheckResult {
	const name = "recovery target"
	t := d.rep.Target
	reached := t.Reached
	var last *time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_last_xact_replay_timestamp()").Scan(&last); err != nil {
		return d.result(name, Fail, "query pg_last_xact_replay_timestamp(): %v", err)
	}
	lastText := "none"
	if last != nil {
		lastText = last.UTC().Format(time.RFC3339Nano)
	}
	switch t.Kind {
	case "time":
		if !strings.HasPrefix(reached, "recovery stopping") {
			return d.result(name, Fail, "target time %s: PostgreSQL did not log that it stopped there (last replayed commit %s)", t.Time.Format(time.RFC3339Nano), lastText)
		}
		if last != nil && last.After(t.Time) {
			return d.result(name, Fail, "the last replayed commit is at %s, after the target %s", lastText, t.Time.Format(time.RFC3339Nano))
		}
		return d.result(name, Pass, "stopped at the target %s (%s); last replayed commit %s", t.Time.Format(time.RFC3339Nano), reached, lastText)
	case "immediate":
		if reached == "" {
			return d.result(name, Fail, "PostgreSQL did not log reaching a consistent state")
		}
		return d.result(name, Pass, "consistent at the end of backup %s (%s)", d.snap.ID, reached)
	default:
		if !strings.HasPrefix(reached, "recovery stopping") {
			return d.result(name, Fail, "target %s: PostgreSQL did not log that it stopped there", t.Kind)
		}
		return d.result(name, Pass, "%s; last replayed commit %s", reached, lastText)
	}
}

// checkHeartbeat reads the heartbeat row back: the newest beat must lie at
// or before the target, and no more than one interval (plus slack) before
// it, or recovery stopped somewhere else.
func (d *run) checkHeartbeat(ctx context.Context, conn *pgx.Conn) CheckResult {
	const name = "heartbeat"
	hb, err := heartbeat.Read(ctx, conn)
	switch {
	case errors.Is(err, heartbeat.ErrNone):
		return d.result(name, Skipped, "no heartbeat in %s of database %s: the exact recovery point rests on PostgreSQL's own report only; run tidemark agent --heartbeat 5s on the source to prove it", heartbeat.Table, d.o.DBName)
	case err != nil:
		return d.result(name, Fail, "%v", err)
	}
	at, lsn, interval := hb.At, hb.LSN, hb.Every
	t := d.rep.Target
	atText := at.UTC().Format(time.RFC3339Nano)
	switch t.Kind {
	case "time":
		behind := t.Time.Sub(at)
		switch {
		case behind < 0:
			return d.result(name, Fail, "the newest heartbeat (%s) is after the target %s: recovery went past it", atText, t.Time.Format(time.RFC3339Nano))
		case behind > interval+d.o.HeartbeatSlack:
			return d.result(name, Fail, "the newest heartbeat (%s) is %s before the target %s, more than its interval %s (+%s): recovery stopped early, or the heartbeat was not written then",
				atText, behind.Round(time.Millisecond), t.Time.Format(time.RFC3339Nano), interval, d.o.HeartbeatSlack)
		}
		return d.result(name, Pass, "newest heartbeat %s, %s before the target (interval %s)", atText, behind.Round(time.Millisecond), interval)
	case "lsn":
		target, _ := pg.ParseLSN(t.LSN)
		if lsn > target {
			return d.result(name, Fail, "the newest heartbeat was written at LSN %s, after the target %s", lsn, t.LSN)
		}
		return d.result(name, Pass, "newest heartbeat at LSN %s (%s), before the target %s", lsn, atText, t.LSN)
	case "immediate":
		if stop := pg.LSN(d.snap.StopLSN); lsn > stop {
			return d.result(name, Fail, "the newest heartbeat was written at LSN %s, after the backup's end %s", lsn, stop)
		}
		return d.result(name, Pass, "newest heartbeat at LSN %s (%s), before the backup's end %s", lsn, atText, pg.LSN(d.snap.StopLSN))
	}
	return d.result(name, Pass, "newest heartbeat %s at LSN %s (not comparable with a %s target)", atText, lsn, t.Kind)
}

// checkSQL runs one user check: one row, one column, true.
func (d *run) checkSQL(ctx context.Context, conn *pgx.Conn, c Check) CheckResult {
	rows, err := conn.Query(ctx, c.SQL, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return d.result(c.Name, Fail, "%v", err)
	}
	var vals [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			rows.Close()
			return d.result(c.Name, Fail, "%v", err)
		}
		vals = append(vals, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return d.result(c.Name, Fail, "%v", err)
	}
	if len(vals) != 1 || len(vals[0]) != 1 {
		return d.result(c.Name, Fail, "returned %d row(s); a check must return one row with one boolean", len(vals))
	}
	if b, ok := vals[0][0].(bool); !ok || !b {
		return d.result(c.Name, Fail, "returned %v, not true", vals[0][0])
	}
	return d.result(c.Name, Pass, "true")
}

// checkAmcheck runs pg_amcheck on every database, installing the amcheck
// extension where it is missing (in the scratch cluster only).
func (d *run) checkAmcheck(ctx context.Context) CheckResult {
	const name = "pg_amcheck"
	if d.o.Amcheck == "off" {
		return d.result(name, Skipped, "turned off (--amcheck off)")
	}
	skip := Skipped
	if d.o.Amcheck == "on" {
		skip = Fail
	}
	bin := pg.FindClientBin(ctx, "pg_amcheck", d.rep.PGBin, d.o.binSearch(), d.rep.PGMajor)
	if bin == "" {
		return d.result(name, skip, "no pg_amcheck installed (apt-get install postgresql-client-%d)", d.rep.PGMajor)
	}
	conn, err := pgx.Connect(ctx, d.connString(d.o.DBName))
	if err != nil {
		return d.result(name, Fail, "connect: %v", err)
	}
	var avail bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')").Scan(&avail)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return d.result(name, Fail, "query pg_available_extensions: %v", err)
	}
	if !avail {
		return d.result(name, skip, "the amcheck extension is not installed for PostgreSQL %d on this host (%s)", d.rep.PGMajor, d.rep.PGBin)
	}
	cmd := exec.CommandContext(ctx, bin, "--host", d.sock, "--port", strconv.Itoa(d.port), "--username", d.o.DBUser,
		"--no-password", "--all", "--install-missing")
	cmd.Env = serverEnv(nil)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	text := oneLine(tail(out.String(), 600))
	if err != nil {
		return d.result(name, Fail, "%s: %v: %s", bin, err, text)
	}
	return d.result(name, Pass, "%s --all: no corruption found in %s", bin, time.Since(start).Round(time.Millisecond))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// checkPages reads every relation file of the stopped scratch cluster and
// checks every page as PostgreSQL does when it reads one (pg.VerifyPage):
// a sane header, and the checksum when the cluster has data checksums.
func (d *run) checkPages(ctx context.Context) CheckResult {
	const name = "data pages"
	ctl, err := pg.ReadControlFileAt(d.pgdata)
	if err != nil {
		return d.result(name, Fail, "read pg_control: %v", err)
	}
	if ctl.State != pg.DBShutdowned {
		return d.result(name, Fail, "the server did not shut down cleanly (pg_control says %s): pages on disk may be stale", ctl.State)
	}
	bs := int(ctl.BlockSize)
	sums := ctl.DataChecksums()
	var files, pages, bad int64
	var first []string
	check := func(rel, abs string) error {
		rf, ok := pg.ParseRelPath(rel)
		if !ok || rf.Temp {
			return nil
		}
		f, err := os.Open(abs)
		if err != nil {
			return err
		}
		defer f.Close()
		files++
		buf := make([]byte, 128*bs)
		var blk uint32
		for {
			n, err := io.ReadFull(f, buf)
			for off := 0; off+bs <= n; off += bs {
				if err := pg.VerifyPage(buf[off:off+bs], pg.RelationBlock(rf.Segment, blk, ctl.RelSegSize), sums); err != nil {
					bad++
					if len(first) < 5 {
						first = append(first, fmt.Sprintf("%s block %d: %v", rel, blk, err))
					}
				}
				blk++
				pages++
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	walk := func(root, prefix string) error {
		return filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !e.Type().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			return check(prefix+filepath.ToSlash(rel), p)
		})
	}
	if err := walk(d.pgdata, ""); err != nil {
		return d.result(name, Fail, "%v", err)
	}
	links, _ := os.ReadDir(filepath.Join(d.pgdata, "pg_tblspc"))
	for _, l := range links {
		target, err := filepath.EvalSymlinks(filepath.Join(d.pgdata, "pg_tblspc", l.Name()))
		if err != nil || !strings.HasPrefix(target, d.scratch) {
			continue
		}
		if err := walk(target, "pg_tblspc/"+l.Name()+"/"); err != nil {
			return d.result(name, Fail, "%v", err)
		}
	}
	what := "headers and checksums"
	if !sums {
		what = "headers only: the cluster has no data checksums"
	}
	if bad > 0 {
		return d.result(name, Fail, "%d of %d pages in %d relation files fail (%s); first: %s", bad, pages, files, what, strings.Join(first, "; "))
	}
	return d.result(name, Pass, "%d pages in %d relation files verified (%s)", pages, files, what)
}
