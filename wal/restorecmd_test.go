package wal

import (
	"regexp"
	"strings"
	"testing"
)

// TestFetchCommandLine pins restore_command's shape: the mv fast path from
// a ready directory named after a fresh token, then wal-fetch with the same
// token, every word shell-quoted and every % doubled for PostgreSQL.
func TestFetchCommandLine(t *testing.T) {
	f := FetchCommand{Args: []string{"/usr/bin/tidemark", "wal-fetch", "--pgdata", ".", "--repo", "s3://b/p?endpoint=http%3A%2F%2Fh:9000", "--identity", "/etc/tm/id with space"}}
	line := f.Line("/srv/pg/data")
	re := regexp.MustCompile(`^mv -f \.\./data\.tidemark-spool/ready-([A-Za-z0-9]+)/%f %p 2>/dev/null \|\| (.*) --spool-token ([A-Za-z0-9]+) %f %p$`)
	m := re.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("restore_command %q", line)
	}
	if m[1] != m[3] || !ValidToken(m[1]) {
		t.Errorf("tokens %q and %q", m[1], m[3])
	}
	want := `/usr/bin/tidemark wal-fetch --pgdata . --repo 's3://b/p?endpoint=http%%3A%%2F%%2Fh:9000' --identity '/etc/tm/id with space'`
	if m[2] != want {
		t.Errorf("wal-fetch part\n got %s\nwant %s", m[2], want)
	}
	if other := f.Line("/srv/pg/data"); strings.Contains(other, m[1]) {
		t.Error("two restores share a token")
	}
	if got := f.SpoolDir("/srv/pg/data"); got != "/srv/pg/data.tidemark-spool" {
		t.Errorf("spool %s", got)
	}
}
