package drill

import (
	"testing"
)

func TestParseChecks(t *testing.T) {
	sql := `-- checks for the orders database
SELECT count(*) > 0 FROM orders;

SELECT 'a;b' = 'a;b'; SELECT $$x;y$$ = 'x;y'
;
/* a comment; with a semicolon */
SELECT $f$ it's; $f$ IS NOT NULL;
SELECT "weird;name" IS NULL FROM (SELECT NULL AS "weird;name") s;
-- trailing comment only
/* and a trailing block comment */`
	got, err := ParseChecks("c.sql", sql)
	if err != nil {
		t.Fatal(err)
	}
	want := []Check{
		{"c.sql:1", "-- checks for the orders database\nSELECT count(*) > 0 FROM orders"},
		{"c.sql:4", "SELECT 'a;b' = 'a;b'"},
		{"c.sql:4", "SELECT $$x;y$$ = 'x;y'"},
		{"c.sql:6", "/* a comment; with a semicolon */\nSELECT $f$ it's; $f$ IS NOT NULL"},
		{"c.sql:8", `SELECT "weird;name" IS NULL FROM (SELECT NULL AS "weird;name") s`},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d checks: %q", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("check %d: got %q, want %q", i, got[i], want[i])
		}
	}
	if _, err := ParseChecks("bad.sql", "SELECT 'open"); err == nil {
		t.Error("an unterminated quote was accepted")
	}
}
