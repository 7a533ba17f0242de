package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PGBenchInit runs pgbench -i -s scale against the postgres database (about
// 16 MB of data per scale unit). extraArgs go before the database name, e.g.
// "--partitions=4". PostgreSQL 15's pgbench serves 16-18 servers as well.
func PGBenchInit(t testing.TB, c *Cluster, scale int, extraArgs ...string) {
	t.Helper()
	args := append([]string{"-i", "-q", "-s", strconv.Itoa(scale)}, extraArgs...)
	runPGBench(t, c, "postgres", args)
}

// PGBenchOptions describes a pgbench run.
type PGBenchOptions struct {
	Clients int // -c; 0 means 1
	Jobs    int // -j; 0 means 1
	// Transactions is per client (-t). Duration (-T, whole seconds) is used
	// when Transactions is 0; when both are 0, 100 transactions per client.
	Transactions int
	Duration     time.Duration
	// Builtin is the built-in script: "tpcb-like" (default),
	// "simple-update" or "select-only".
	Builtin  string
	Database string   // default postgres
	Args     []string // more pgbench arguments
}

// PGBenchResult is what pgbench reported.
type PGBenchResult struct {
	Transactions int64   // "number of transactions actually processed"
	TPS          float64 // "tps = ... (without initial connection time)"
	Output       string
}

// PGBenchRun runs pgbench (without its initial vacuum) and fails the test if
// pgbench fails.
func PGBenchRun(t testing.TB, c *Cluster, opts PGBenchOptions) PGBenchResult {
	t.Helper()
	clients, jobs := max(opts.Clients, 1), max(opts.Jobs, 1)
	builtin := opts.Builtin
	if builtin == "" {
		builtin = "tpcb-like"
	}
	args := []string{"-n", "-b", builtin, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(jobs)}
	switch {
	case opts.Transactions > 0:
		args = append(args, "-t", strconv.Itoa(opts.Transactions))
	case opts.Duration > 0:
		secs := int((opts.Duration + time.Second - 1) / time.Second)
		args = append(args, "-T", strconv.Itoa(secs))
	default:
		args = append(args, "-t", "100")
	}
	args = append(args, opts.Args...)
	db := opts.Database
	if db == "" {
		db = "postgres"
	}
	out := runPGBench(t, c, db, args)
	res := PGBenchResult{Output: out}
	if m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out); m != nil {
		res.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := regexp.MustCompile(`tps = ([0-9.]+)`).FindStringSubmatch(out); m != nil {
		res.TPS, _ = strconv.ParseFloat(m[1], 64)
	}
	return res
}

func runPGBench(t testing.TB, c *Cluster, db string, args []string) string {
	t.Helper()
	bin := c.ClientBin("pgbench")
	full := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}, args...)
	full = append(full, db)
	cmd := exec.CommandContext(t.Context(), bin, full...)
	// Connection flags are explicit; libpq variables of the caller must not
	// redirect pgbench elsewhere.
	cmd.Env = lookupServerUser(t).baseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %s on PostgreSQL %d: %v\n%s", strings.Join(args, " "), c.Version, err, out)
	}
	return string(out)
}

// LoadRandomTable creates table name (id bigint primary key, payload text)
// in the postgres database and fills it with rows rows of random md5 text
// (about 70 bytes per row on disk, incompressible-ish hex).
func LoadRandomTable(t testing.TB, c *Cluster, name string, rows int) {
	t.Helper()
	LoadRandomTableDB(t, c, "postgres", name, rows)
}

// LoadRandomTableDB is LoadRandomTable in database db.
func LoadRandomTableDB(t testing.TB, c *Cluster, db, name string, rows int) {
	t.Helper()
	ident := quoteQualified(name)
	// The key is added after the load: building the index once is much
	// faster than maintaining it row by row.
	c.ExecDB(t, db, fmt.Sprintf(`CREATE TABLE %[1]s (id bigint NOT NULL, payload text NOT NULL);
INSERT INTO %[1]s SELECT g, md5(random()::text) FROM generate_series(1, %[2]d) AS g;
ALTER TABLE %[1]s ADD PRIMARY KEY (id);`, ident, rows))
}

// UpdateRandomRows gives a random fraction (0..1) of the rows of a table made
// by LoadRandomTable new payloads and returns how many it changed, for
// incremental-backup tests.
func UpdateRandomRows(t testing.TB, c *Cluster, name string, fraction float64) int64 {
	t.Helper()
	conn, err := c.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tag, err := conn.Exec(t.Context(), fmt.Sprintf(
		"UPDATE %s SET payload = md5(random()::text) WHERE random() < $1", quoteQualified(name)), fraction)
	if err != nil {
		t.Fatalf("update rows of %s on PostgreSQL %d: %v", name, c.Version, err)
	}
	return tag.RowsAffected()
}

// TableChecksum is a content hash of a table of the postgres database,
// independent of row order and physical layout: "<rows>:<md5>". Equal
// checksums on the original and the restored cluster mean equal contents
// (for the same major version, whose text output of values is the same).
func TableChecksum(t testing.TB, c *Cluster, table string) string {
	t.Helper()
	conn, err := c.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	sum, err := tableChecksum(t.Context(), conn, quoteQualified(table))
	if err != nil {
		t.Fatalf("checksum %s on PostgreSQL %d: %v", table, c.Version, err)
	}
	return sum
}

// tableChecksum sums the rows' md5s as two 64-bit numbers. A sum does not
// depend on order and streams in constant memory (string_agg of a 10-million
// row table would not); it counts duplicate rows. Collisions need a crafted
// table, which tests do not make.
func tableChecksum(ctx context.Context, conn *pgx.Conn, ident string) (string, error) {
	q := fmt.Sprintf(`SELECT count(*)::text || ':' || md5(
	coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text || ':' ||
	coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text)
FROM (SELECT md5(r::text) AS h FROM %s AS r) AS s`, ident)
	var sum string
	if err := conn.QueryRow(ctx, q).Scan(&sum); err != nil {
		return "", err
	}
	return sum, nil
}

// TableChecksums is the TableChecksum of every permanent user table and
// populated materialized view of every database that accepts connections,
// keyed "db.schema.table". Unlogged tables and sequences are left out: a
// restore empties the former and may advance the latter (sequences log
// values ahead).
func TableChecksums(t testing.TB, c *Cluster) map[string]string {
	t.Helper()
	ctx := t.Context()
	conn, err := c.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	conn.Close(context.Background())
	if err != nil {
		t.Fatalf("list databases of PostgreSQL %d: %v", c.Version, err)
	}
	sums := map[string]string{}
	for _, db := range dbs {
		if err := dbChecksums(ctx, c, db, sums); err != nil {
			t.Fatalf("checksum database %s on PostgreSQL %d: %v", db, c.Version, err)
		}
	}
	return sums
}

func dbChecksums(ctx context.Context, c *Cluster, db string, sums map[string]string) error {
	conn, err := c.ConnDB(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(ctx, `SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' AND c.relispopulated
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY 1, 2`)
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var st [2]string
		err := r.Scan(&st[0], &st[1])
		return st, err
	})
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	for _, st := range tables {
		sum, err := tableChecksum(ctx, conn, pgx.Identifier{st[0], st[1]}.Sanitize())
		if err != nil {
			return fmt.Errorf("table %s.%s: %w", st[0], st[1], err)
		}
		sums[db+"."+st[0]+"."+st[1]] = sum
	}
	return nil
}

// DatabaseFingerprint hashes TableChecksums into one value: equal
// fingerprints mean every user table of every database has the same
// contents. On a mismatch, compare TableChecksums to see which table.
func DatabaseFingerprint(t testing.TB, c *Cluster) string {
	t.Helper()
	sums := TableChecksums(t, c)
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, sums[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// quoteQualified quotes "table" or "schema.table" as SQL identifiers.
func quoteQualified(name string) string {
	return pgx.Identifier(strings.Split(name, ".")).Sanitize()
}
