package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// TestSystemdUnits runs systemd-analyze verify on every unit in
// contrib/systemd, in a root that has the tidemark binary where the units
// expect it and the system's own units beside them.
func TestSystemdUnits(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Missing(t, "systemd-analyze", "apt-get install systemd")
	}
	mod, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	units, err := filepath.Glob(filepath.Join(mod, "contrib", "systemd", "tidemark-*"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in contrib/systemd: %v", err)
	}
	root := t.TempDir()
	for _, d := range []string{"usr/local/bin", "etc/systemd/system", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Copies, not symbolic links: systemd resolves links inside the root.
	bin := filepath.Join(root, "usr/local/bin/tidemark")
	if err := os.Link(testenv.Tidemark(t), bin); err != nil {
		if out, err := exec.Command("cp", testenv.Tidemark(t), bin).CombinedOutput(); err != nil {
			t.Fatalf("copy tidemark: %v\n%s", err, out)
		}
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy the system's units: %v\n%s", err, out)
	}
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", filepath.Base(u)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, "/etc/systemd/system/"+filepath.Base(u))
	}
	out, err := exec.Command(sa, append([]string{"verify", "--root=" + root}, paths...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
