package e2e

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// fromJSON decodes the value under key of a --json output, after checking
// its one shape: an object with "format" 1 and that key.
func fromJSON(out, key string, v any) error {
	var env map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		return err
	}
	if f := string(env["format"]); f != "1" {
		return fmt.Errorf("--json output has format %q, want 1", f)
	}
	raw, ok := env[key]
	if !ok || len(env) != 2 {
		return fmt.Errorf("--json output has keys %v, want format and %s", keysOf(env), key)
	}
	return json.Unmarshal(raw, v)
}

func keysOf(m map[string]json.RawMessage) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// jsonKeys returns the key paths of a --json output ("drill.checks[].name"),
// failing on a key that is not snake_case and on a null.
func jsonKeys(t *testing.T, cmd string, out string) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s --json: %v\n%s", cmd, err, out)
	}
	seen := map[string]bool{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case nil:
			t.Errorf("%s --json: %s is null", cmd, path)
		case map[string]any:
			for k, e := range x {
				if !snakeCase.MatchString(k) {
					t.Errorf("%s --json: key %q of %s is not snake_case", cmd, k, path)
				}
				p := k
				if path != "" {
					p = path + "." + k
				}
				seen[p] = true
				walk(p, e)
			}
		case []any:
			for _, e := range x {
				walk(path+"[]", e)
			}
		}
	}
	walk("", v)
	var keys []string
	for k := range seen {
		keys = append(keys, cmd+": "+k)
	}
	return keys
}

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// TestJSONKeys runs every command that has --json (cmd/tidemark's
// TestJSONCommandsPinned holds the list to the command tree) against
// PostgreSQL and a repository and pins the keys of what each prints to
// testdata/json-keys.txt (go test -run TestJSONKeys ./e2e -update writes
// it): a key that changes is a change of the output's format number. Every
// key is snake_case, every value non-null, and every output has the one
// shape (format, and one key).
func TestJSONKeys(t *testing.T) {
	e := backupEnv(t, false, 0)
	c := e.backupCluster(15, nil)
	e.heartbeatAgent(c)
	var keys []string
	run := func(name, key string, wantCode int, args ...string) string {
		t.Helper()
		out, errs, code := e.tidemark(args...)
		if code != wantCode {
			t.Fatalf("%s: exit %d, want %d\n%s%s", name, code, wantCode, out, errs)
		}
		var v any
		if err := fromJSON(out, key, &v); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		keys = append(keys, jsonKeys(t, name, out)...)
		return out
	}
	// with adds --json and the repository flags, before any argument
	// after "--" (urfave/cli reads no flag after the first argument).
	with := func(args ...string) []string {
		var pos []string
		if i := slices.Index(args, "--"); i >= 0 {
			args, pos = args[:i], args[i+1:]
		}
		return append(append(append(args, "--json"), e.repoArgs()...), pos...)
	}

	other := "file://" + filepath.Join(e.shared, "other")
	run("init", "init", 0, "init", "--json", "--repo", other, "--identity-out", filepath.Join(e.shared, "other-id.txt"))
	added := run("key add", "key", 0, with("key", "add", "--identity-out", filepath.Join(e.shared, "second.txt"))...)
	run("key list", "keys", 0, with("key", "list")...)
	var k struct {
		ID string `json:"id"`
	}
	fromJSON(added, "key", &k)
	run("key remove", "removed_key", 0, with("key", "remove", "--", k.ID)...)

	testenv.LoadRandomTable(t, c, "data", 2000)
	b := run("backup", "backup", 0, with("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString())...)
	var snap backupJSON
	fromJSON(b, "backup", &snap)
	workload(t, c, 4)
	// An incremental: its change_sources say which summaries it read or
	// why it could not.
	run("backup incremental", "backup", 0, with("backup", "--pgdata", c.DataDir, "--pg-conn", c.ConnString())...)
	// The drill below picks a random time from a second after the newest
	// backup's stop to its last archived commit: without a commit in that
	// window it recovers to the consistent point and has no target time.
	time.Sleep(1500 * time.Millisecond)
	workload(t, c, 1)
	switchAndWait(t, c)
	run("list", "snapshots", 0, with("list")...)
	run("info", "repository", 0, with("info")...)
	run("info ID", "snapshot", 0, with("info", "--", snap.Snapshot.ID)...)
	run("wal list", "wal", 0, with("wal", "list")...)
	run("mark", "mark", 0, with("mark", "--pg-conn", c.ConnString(), "--", "before-restore")...)
	run("check", "check", 0, with("check", "--no-switch", "--pgdata", c.DataDir, "--pg-conn", c.ConnString())...)
	run("restore --dry-run", "restore_plan", 0, with("restore", "--dry-run", "--pgdata", e.target("r"))...)
	run("restore", "restore", 0, with("restore", "--pgdata", e.target("r"))...)
	run("restore --delta", "restore", 0, with("restore", "--delta", "--pgdata", e.target("r"))...)
	run("verify", "verify", 0, with("verify")...)
	// Two halves: one share can hold none of the few packs this repository
	// has (read_packs is then left out), the two together hold them all.
	run("verify --read-data-subset", "verify", 0, with("verify", "--read-data-subset", "50%")...)
	run("verify --read-data-subset", "verify", 0, with("verify", "--read-data-subset", "50%")...)
	scratch := filepath.Join(e.shared, "scratch")
	os.MkdirAll(scratch, 0o755)
	run("drill", "drill", 0, with("drill", "--scratch-dir", scratch, "--pgdata", c.DataDir, "--log-level", "warn")...)
	sql := filepath.Join(e.shared, "migration.sql")
	os.WriteFile(sql, []byte("ALTER TABLE data ADD COLUMN c int;\n"), 0o644)
	run("rehearse", "rehearsal", 0, with("rehearse", "--sql", sql, "--scratch-dir", scratch, "--pgdata", c.DataDir, "--log-level", "warn")...)
	second := "file://" + filepath.Join(e.shared, "second")
	run("init --from-repo", "init", 0, with("init", "--from-repo", "--repo2", second)...)
	run("copy", "copy", 0, with("copy", "--repo2", second)...)
	run("expire", "expire", 0, with("expire", "--keep-last", "5")...)
	run("gc", "gc", 0, with("gc")...)
	// Last, as it writes the file repository as this test's user.
	rdir := filepath.Join(e.shared, "recv")
	rc := e.startReceiver(t, connString(c), rdir)
	waitUntil(t, time.Minute, "wal-receive to read its slot and hear from the server", func() bool {
		st := rc.status(t)
		return st.SlotActive != nil && !st.LastMessage.IsZero() && st.Flushed > 0
	})
	run("wal-receive --status", "wal_receive", 0, "wal-receive", "--status", "--json", "--dir", rdir)
	rc.stop(t)

	slices.Sort(keys)
	keys = slices.Compact(keys)
	got := strings.Join(keys, "\n") + "\n"
	golden := filepath.Join("testdata", "json-keys.txt")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test -run TestJSONKeys ./e2e -update writes it)", err)
	}
	if string(want) != got {
		wl, gl := strings.Split(string(want), "\n"), strings.Split(got, "\n")
		for _, l := range gl {
			if !slices.Contains(wl, l) {
				t.Errorf("new key: %s", l)
			}
		}
		for _, l := range wl {
			if !slices.Contains(gl, l) {
				t.Errorf("key gone: %s", l)
			}
		}
		t.Errorf("the --json keys changed: update testdata/json-keys.txt (-update), and raise jsonFormat in cmd/tidemark/json.go if a key is gone or changed meaning")
	}
}

var update = flag.Bool("update", false, "rewrite testdata/json-keys.txt")
