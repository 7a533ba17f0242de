package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

func TestTidemarkBuild(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "tidemark")); os.IsNotExist(err) {
		t.Skip("cmd/tidemark does not exist yet")
	}
	p := Tidemark(t)
	if again := Tidemark(t); again != p {
		t.Fatalf("second call built again: %s, then %s", p, again)
	}
	// The server user runs it from archive_command.
	out, err := ServerCommand(t.Context(), t, nil, p, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help as the server user: %v\n%s", p, err, out)
	}
}

func TestGoModModule(t *testing.T) {
	for in, want := range map[string]string{
		"module github.com/tidemarkdb/tidemark\n\ngo 1.26\n": modulePath,
		"// c\nmodule \"example.com/x\"\n":                   "example.com/x",
		"go 1.26\n":                                          "",
	} {
		if got := goModModule([]byte(in)); got != want {
			t.Errorf("goModModule(%q) = %q, want %q", in, got, want)
		}
	}
}
