package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
)

// TestAgePlugin: a repository made with an age plugin recipient opens with
// the plugin's identity, key add grants access to another plugin key and
// to a native one, and without the plugin's program every command that
// needs it fails with one line naming the plugin. The plugin is a real
// program built by the test, speaking the age plugin protocol; the
// repository is on MinIO.
func TestAgePlugin(t *testing.T) {
	pluginDir := testenv.AgePlugin(t)
	srv := testenv.MinIO(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	path := os.Getenv("PATH")
	t.Setenv("PATH", pluginDir+string(os.PathListSeparator)+path)
	dir := t.TempDir()
	url := srv.URL(srv.NewBucket(t), "repo")
	rcpt, ident := testenv.AgePluginKey(t)
	idFile := filepath.Join(dir, "plugin-identity.txt")
	os.WriteFile(idFile, []byte("# a plugin identity\n"+ident+"\n"), 0o600)
	if !strings.HasPrefix(rcpt, "age1tidemarktest1") || !strings.HasPrefix(ident, "AGE-PLUGIN-TIDEMARKTEST-1") {
		t.Fatalf("plugin key %s %s", rcpt, ident)
	}

	out, _, err := runRepoCmd(t, "init", "--repo", url, "--recipient", rcpt, "--label", "token")
	if err != nil || !strings.Contains(out, "(plugin)") {
		t.Fatalf("init with a plugin recipient: %v\n%s", err, out)
	}
	out, _, err = runRepoCmd(t, "key", "list", "--repo", url, "--identity", idFile)
	if err != nil || !strings.Contains(out, "plugin") || !strings.Contains(out, rcpt) {
		t.Fatalf("key list opened with the plugin identity: %v\n%s", err, out)
	}

	// Another plugin key, and a native one, added with the plugin identity.
	rcpt2, ident2 := testenv.AgePluginKey(t)
	idFile2 := filepath.Join(dir, "plugin-identity-2.txt")
	os.WriteFile(idFile2, []byte(ident2+"\n"), 0o600)
	if out, _, err = runRepoCmd(t, "key", "add", "--repo", url, "--identity", idFile, "--recipient", rcpt2); err != nil {
		t.Fatalf("key add of a plugin recipient: %v\n%s", err, out)
	}
	native, _ := age.GenerateX25519Identity()
	nativeFile := filepath.Join(dir, "native.txt")
	os.WriteFile(nativeFile, []byte(native.String()+"\n"), 0o600)
	if out, _, err = runRepoCmd(t, "key", "add", "--repo", url, "--identity", idFile2, "--recipient", native.Recipient().String()); err != nil {
		t.Fatalf("key add of a native recipient, opened with the second plugin key: %v\n%s", err, out)
	}
	// A file holding a native and a plugin identity: each works.
	both := filepath.Join(dir, "both.txt")
	os.WriteFile(both, []byte(native.String()+"\n"+ident+"\n"), 0o600)
	if out, _, err = runRepoCmd(t, "key", "list", "--repo", url, "--identity", both, "--json"); err != nil || strings.Count(out, `"recipient_type": "plugin"`) != 2 {
		t.Fatalf("key list: %v\n%s", err, out)
	}

	// Without the plugin's program.
	t.Setenv("PATH", path)
	_, _, err = runRepoCmd(t, "key", "list", "--repo", url, "--identity", idFile)
	var pm *repo.PluginMissingError
	if !errors.As(err, &pm) || exitCode(err) != exitAccess || !strings.Contains(err.Error(), `age plugin "tidemarktest" is not installed`) ||
		strings.Contains(err.Error(), "\n") {
		t.Fatalf("opening with a plugin identity whose program is missing: exit %d: %v", exitCode(err), err)
	}
	// A native key still opens: the missing plugin is not even started.
	if out, _, err = runRepoCmd(t, "key", "list", "--repo", url, "--identity", both); err != nil {
		t.Fatalf("native identity beside a missing plugin: %v\n%s", err, out)
	}
	_, _, err = runRepoCmd(t, "init", "--repo", "file://"+filepath.Join(dir, "repo2"), "--recipient", rcpt)
	if !errors.As(err, &pm) || !strings.Contains(err.Error(), "age-plugin-tidemarktest") {
		t.Fatalf("init with a plugin recipient whose program is missing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "repo2", "config")); !os.IsNotExist(err) {
		t.Fatalf("the failed init left a config: %v", err)
	}
	_, _, err = runRepoCmd(t, "key", "add", "--repo", url, "--identity", nativeFile, "--recipient", rcpt2)
	if !errors.As(err, &pm) {
		t.Fatalf("key add of a plugin recipient whose program is missing: %v", err)
	}
	// Plugins cannot be escrow recipients: every object would run them.
	_, _, err = runRepoCmd(t, "init", "--repo", "file://"+filepath.Join(dir, "repo3"), "--recipient", native.Recipient().String(), "--escrow-recipient", rcpt)
	if err == nil || !strings.Contains(err.Error(), "escrow recipient") || !strings.Contains(err.Error(), "plugin") {
		t.Fatalf("a plugin escrow recipient: %v", err)
	}
}
