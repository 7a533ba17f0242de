package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage/location"
)

// runRepoCmd runs the repository commands (init, key, repair) through the
// real app wiring and returns stdout, stderr and the error.
func runRepoCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	app := newApp(&stdout, &stderr, []*cli.Command{initCommand(), keyCommand(), repairCommand()})
	err := app.RunContext(context.Background(), append([]string{"tidemark"}, args...))
	return stdout.String(), stderr.String(), err
}

func TestInitGeneratesIdentity(t *testing.T) {
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "repo")
	idPath := filepath.Join(dir, "keys", "id.txt")
	out, _, err := runRepoCmd(t, "init", "--repo", url, "--identity-out", idPath)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(idPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", fi, err)
	}
	if !strings.Contains(out, idPath) || !strings.Contains(out, "LOSING IT LOSES THE BACKUPS") {
		t.Fatalf("init output lacks the path or the warning:\n%s", out)
	}
	b, _ := os.ReadFile(idPath)
	if ids, err := age.ParseIdentities(bytes.NewReader(b)); err != nil || len(ids) != 1 {
		t.Fatalf("identity file does not parse: %v", err)
	}

	// A second init on the same URL fails clearly and leaves no identity.
	idPath2 := filepath.Join(dir, "id2.txt")
	_, _, err = runRepoCmd(t, "init", "--repo", url, "--identity-out", idPath2)
	if !errors.Is(err, repo.ErrRepositoryExists) || !strings.Contains(err.Error(), "repository already exists at") {
		t.Fatalf("second init: %v", err)
	}
	if _, err := os.Stat(idPath2); !os.IsNotExist(err) {
		t.Fatal("refused init left an identity file")
	}
	// Refuses to overwrite an identity file.
	if _, _, err := runRepoCmd(t, "init", "--repo", "file://"+filepath.Join(dir, "other"), "--identity-out", idPath); exitCode(err) != exitUsage {
		t.Fatalf("overwriting an identity: %v", err)
	}

	// key list / add / remove with the generated identity.
	out, _, err = runRepoCmd(t, "key", "list", "--repo", url, "--identity", idPath)
	if err != nil || strings.Count(out, "mlkem768x25519") != 1 {
		t.Fatalf("key list: %v\n%s", err, out)
	}
	other, _ := age.GenerateX25519Identity()
	out, _, err = runRepoCmd(t, "key", "add", "--repo", url, "--identity", idPath, "--recipient", other.Recipient().String(), "--label", "ops")
	if err != nil || !strings.Contains(out, "added key") {
		t.Fatalf("key add: %v %s", err, out)
	}
	newID := strings.Fields(out)[2]
	otherPath := filepath.Join(dir, "other.txt")
	os.WriteFile(otherPath, []byte(other.String()+"\n"), 0o600)
	if _, _, err := runRepoCmd(t, "key", "remove", "--repo", url, "--identity", otherPath, newID); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runRepoCmd(t, "key", "list", "--repo", url, "--identity", idPath, "--json")
	if strings.Contains(out, newID) {
		t.Fatalf("removed key still listed:\n%s", out)
	}
	lastID := strings.Split(strings.Split(out, `"id": "`)[1], `"`)[0]
	if _, _, err := runRepoCmd(t, "key", "remove", "--repo", url, "--identity", idPath, lastID); !errors.Is(err, repo.ErrLastKey) {
		t.Fatalf("removing the last key: %v", err)
	}
	// A wrong identity is refused with the typed error.
	if _, _, err := runRepoCmd(t, "key", "list", "--repo", url, "--identity", otherPath); !errors.Is(err, repo.ErrNoIdentity) {
		t.Fatalf("wrong identity: %v", err)
	}
	out, _, err = runRepoCmd(t, "repair", "index", "--repo", url, "--identity", idPath)
	if err != nil || !strings.Contains(out, "0 packs found") {
		t.Fatalf("repair index: %v %s", err, out)
	}
}

func TestInitRecipientAndPassphrase(t *testing.T) {
	dir := t.TempDir()
	id, _ := age.GenerateHybridIdentity()
	out, _, err := runRepoCmd(t, "init", "--repo", "file://"+filepath.Join(dir, "a"), "--recipient", id.Recipient().String())
	if err != nil || strings.Contains(out, "LOSING") || !strings.Contains(out, "mlkem768x25519") {
		t.Fatalf("init with recipient: %v\n%s", err, out)
	}
	pf := filepath.Join(dir, "pass")
	os.WriteFile(pf, []byte("s3cret\n"), 0o600)
	if _, _, err := runRepoCmd(t, "init", "--repo", "file://"+filepath.Join(dir, "b"), "--passphrase-file", pf); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runRepoCmd(t, "key", "list", "--repo", "file://"+filepath.Join(dir, "b"), "--passphrase-file", pf); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runRepoCmd(t, "init", "--repo", "file://"+filepath.Join(dir, "c"), "--recipient", "nope"); exitCode(err) != exitUsage {
		t.Fatalf("bad recipient: %v", err)
	}
}

// TestInitSecond: init --from-repo makes a second repository that shares
// the first one's master secret, opens with the same identity by default,
// and has its own id; one initialized on its own is refused as repo2 in one
// line that says how to make one (exit 3).
func TestInitSecond(t *testing.T) {
	dir := t.TempDir()
	url1, url2, url3 := "file://"+filepath.Join(dir, "one"), "file://"+filepath.Join(dir, "two"), "file://"+filepath.Join(dir, "three")
	id := filepath.Join(dir, "id.txt")
	if _, _, err := runRepoCmd(t, "init", "--repo", url1, "--identity-out", id); err != nil {
		t.Fatal(err)
	}
	out, _, err := runRepoCmd(t, "init", "--from-repo", "--repo", url1, "--identity", id, "--repo2", url2)
	if err != nil || !strings.Contains(out, "the second repository of") {
		t.Fatalf("init --from-repo: %v\n%s", err, out)
	}
	// A second time: the repository exists.
	if _, _, err := runRepoCmd(t, "init", "--from-repo", "--repo", url1, "--identity", id, "--repo2", url2); exitCode(err) != exitRepository {
		t.Fatalf("second init --from-repo: %v", err)
	}
	open := func(url string) *repo.Repo {
		t.Helper()
		st, err := location.Open(context.Background(), url, location.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(id)
		ids, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		r, err := repo.Open(context.Background(), st, ids, repo.Options{})
		if err != nil {
			t.Fatalf("open %s with the first repository's identity: %v", url, err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	r1, r2 := open(url1), open(url2)
	if r1.Config().ID == r2.Config().ID || r1.CheckSharedSecret(r2) != nil {
		t.Fatalf("ids %s %s, shared secret: %v", r1.Config().ID, r2.Config().ID, r1.CheckSharedSecret(r2))
	}

	if _, _, err := runRepoCmd(t, "init", "--repo", url3, "--identity-out", filepath.Join(dir, "id3.txt")); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	app := newApp(&stdout, &stderr, []*cli.Command{copyCommand()})
	err = app.RunContext(context.Background(), []string{"tidemark", "copy", "--repo", url1, "--identity", id, "--repo2", url3,
		"--repo2-identity", filepath.Join(dir, "id3.txt")})
	if exitCode(err) != exitRepository || !strings.Contains(err.Error(), "--from-repo") {
		t.Fatalf("copy into an independent repository: %v (exit %d)", err, exitCode(err))
	}
}
