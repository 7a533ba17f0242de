package testenv

import (
	"os/exec"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"filippo.io/age/plugin"
)

// AgePluginName is the name of the test age plugin (internal/testenv/ageplugin):
// its program is age-plugin-tidemarktest.
const AgePluginName = "tidemarktest"

// AgePlugin builds the test age plugin into a directory of its own and
// returns that directory, to put in PATH.
func AgePlugin(t testing.TB) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", filepath.Join(dir, "age-plugin-"+AgePluginName), "./internal/testenv/ageplugin")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the test age plugin: %v\n%s", err, out)
	}
	return dir
}

// AgePluginKey returns the recipient (age1tidemarktest1...) and identity
// (AGE-PLUGIN-TIDEMARKTEST-1...) of a new key of the test plugin.
func AgePluginKey(t testing.TB) (recipient, identity string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	recipient = plugin.EncodeRecipient(AgePluginName, []byte(id.Recipient().String()))
	identity = plugin.EncodeIdentity(AgePluginName, []byte(id.String()))
	if recipient == "" || identity == "" {
		t.Fatal("cannot encode a test plugin key")
	}
	return recipient, identity
}
