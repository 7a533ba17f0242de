package pg

import (
	"errors"
	"reflect"
	"testing"
)

func TestTablespaceMap(t *testing.T) {
	entries := []TablespaceMapEntry{
		{16400, "/srv/ts1"},
		{16401, " /odd path with spaces"},
		{16402, "/weird\nname\\with\rescapes"},
	}
	enc := EncodeTablespaceMap(entries)
	const want = "16400 /srv/ts1\n16401  /odd path with spaces\n16402 /weird\\\nname\\\\with\\\rescapes\n"
	if string(enc) != want {
		t.Fatalf("Encode = %q, want %q", enc, want)
	}
	got, err := ParseTablespaceMap(enc)
	if err != nil || !reflect.DeepEqual(got, entries) {
		t.Fatalf("Parse = %+v, %v", got, err)
	}
	// CRLF line ends and an empty map.
	if got, err := ParseTablespaceMap([]byte("16400 /srv/ts1\r\n")); err != nil || len(got) != 1 || got[0].Path != "/srv/ts1" {
		t.Errorf("CRLF: %+v %v", got, err)
	}
	if got, err := ParseTablespaceMap(nil); err != nil || got != nil {
		t.Errorf("empty: %+v %v", got, err)
	}
	for _, bad := range []string{"16400 /x", "16400\n", "x /srv\n", "0 /srv\n", " /srv\n", "16400 /srv\\", "16400 \n"} {
		if _, err := ParseTablespaceMap([]byte(bad)); !errors.Is(err, ErrInvalidTablespaceMap) {
			t.Errorf("ParseTablespaceMap(%q): %v", bad, err)
		}
	}
}

func FuzzParseTablespaceMap(f *testing.F) {
	f.Add([]byte("16400 /srv/ts1\n16401 /weird\\\nname\n"))
	f.Add([]byte("1 a\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseTablespaceMap(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidTablespaceMap) {
				t.Fatalf("error %v does not match ErrInvalidTablespaceMap", err)
			}
			return
		}
		again, err := ParseTablespaceMap(EncodeTablespaceMap(entries))
		if err != nil || !reflect.DeepEqual(again, entries) {
			t.Fatalf("round trip: %+v -> %+v, %v", entries, again, err)
		}
	})
}
