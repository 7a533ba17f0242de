package bench

import (
	"strings"
	"testing"
)

// The timer wraps the whole restore_command, quoted again for the
// configuration file: its value comes back out of PostgreSQL's quoting
// (doubled quotes, backslash escapes) as it went in.
func TestWrapRestoreCommand(t *testing.T) {
	conf := "# tidemark\nrestore_command = 'mv -f ../a.spool/ready-X/%f %p 2>/dev/null || /bin/tidemark wal-fetch --repo ''s3://b/p?x=%%2F'' %f %p'\nrecovery_target_time = '2026-01-01'\n"
	var got string
	out, err := wrapRestoreCommand(conf, func(cmd string) string {
		got = cmd
		return "/t/timed -c " + shellQuote(cmd) + " %f %p"
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "mv -f ../a.spool/ready-X/%f %p 2>/dev/null || /bin/tidemark wal-fetch --repo 's3://b/p?x=%%2F' %f %p"; got != want {
		t.Fatalf("value %q, want %q", got, want)
	}
	// Read back, the new value is the wrapper line exactly, and the rest
	// of the file is untouched.
	var back string
	again, err := wrapRestoreCommand(out, func(cmd string) string { back = cmd; return cmd })
	if err != nil {
		t.Fatal(err)
	}
	if want := "/t/timed -c " + shellQuote(got) + " %f %p"; back != want {
		t.Fatalf("read back %q, want %q", back, want)
	}
	if again != out || !strings.HasPrefix(out, "# tidemark\nrestore_command = '/t/timed -c ''mv -f ") ||
		!strings.HasSuffix(out, " %f %p'' %f %p'\nrecovery_target_time = '2026-01-01'\n") {
		t.Fatalf("wrapped file:\n%s", out)
	}
	if _, err := wrapRestoreCommand("work_mem = '4MB'\n", func(s string) string { return s }); err == nil {
		t.Fatal("no restore_command: no error")
	}
}
