package repo

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo/blob"
	"github.com/tidemarkdb/tidemark/storage/fs"
)

// manualProcedure returns the shell block of docs/format.md §12.
func manualProcedure(t *testing.T) string {
	b, err := os.ReadFile("../docs/format.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	_, s, ok1 := strings.Cut(s, "<!-- manual-procedure:begin -->")
	s, _, ok2 := strings.Cut(s, "<!-- manual-procedure:end -->")
	s = strings.TrimSpace(s)
	if !ok1 || !ok2 || !strings.HasPrefix(s, "```sh\n") || !strings.HasSuffix(s, "```") {
		t.Fatal("docs/format.md has no manual-procedure block")
	}
	return strings.TrimSuffix(strings.TrimPrefix(s, "```sh\n"), "```")
}

// TestManualProcedure follows docs/format.md's "decrypt by hand" procedure
// literally, with the age, zstd and jq command-line tools, on a repository
// in a directory, and checks it recovers every blob of a pack and a
// snapshot.
func TestManualProcedure(t *testing.T) {
	script := manualProcedure(t)
	ageBin := testenv.FindBinary("age", "")
	for _, tool := range []string{"age", "zstd", "jq"} {
		if testenv.FindBinary(tool, "") == "" {
			testenv.Missing(t, tool, "apt-get install "+tool)
		}
	}
	// Debian 12's age (1.1.1) predates post-quantum keys: then the test
	// makes a classic repository (an X25519 escrow key does that), which
	// the procedure covers as well.
	out, _ := exec.Command(ageBin, "--version").Output()
	classic := strings.HasPrefix(string(out), "v1.0") || strings.HasPrefix(string(out), "1.0") ||
		strings.HasPrefix(string(out), "v1.1") || strings.HasPrefix(string(out), "1.1") ||
		strings.HasPrefix(string(out), "v1.2") || strings.HasPrefix(string(out), "1.2")
	dir := t.TempDir()
	root := filepath.Join(dir, "repo")
	store, err := fs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	f := initRepo(t, store, func(o *InitOptions) {
		if classic {
			escrow, _ := age.GenerateX25519Identity()
			o.EscrowRecipients = []string{escrow.Recipient().String()}
		}
	})
	t.Logf("age %s, classic repository: %v", strings.TrimSpace(string(out)), classic)
	w, _ := f.repo.NewWriter(ctx, "manual")
	want := map[string][]byte{}
	for _, d := range [][]byte{randBytes(3000), compressible(200_000, 7), []byte("hello")} {
		id, err := w.Add(ctx, blob.KindFile, d)
		if err != nil {
			t.Fatal(err)
		}
		want[id.String()] = d
	}
	root2, _ := w.Add(ctx, blob.KindTree, []byte("tree"))
	snapKey, err := w.Commit(ctx, testSnapshot(root2), nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Close(ctx)
	packs := keysUnder(t, store, "data/")
	if len(packs) != 1 {
		t.Fatalf("%d packs", len(packs))
	}
	work := filepath.Join(dir, "work")
	os.Mkdir(work, 0o700)
	os.WriteFile(filepath.Join(work, "me.txt"), []byte(f.id.String()+"\n"), 0o600)
	cmd := exec.Command("bash", "-euc", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "REPO="+root, "KEY_ID="+f.res.KeyID, "PACK="+packs[0], "SNAPSHOT="+snapKey,
		"PATH="+filepath.Dir(ageBin)+":"+os.Getenv("PATH"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	listing, err := cmd.Output()
	if err != nil {
		t.Fatalf("procedure failed: %v\n%s", err, stderr.String())
	}
	t.Logf("procedure listed:\n%s", listing)
	for id, d := range want {
		got, err := os.ReadFile(filepath.Join(work, "blob-"+id+".plain"))
		if err != nil || !bytes.Equal(got, d) {
			t.Fatalf("blob %s by hand: %v", id, err)
		}
	}
	snap, err := os.ReadFile(filepath.Join(work, "snapshot.json"))
	if err != nil || !bytes.Contains(snap, []byte(`"cluster": "7312345678901234567"`)) {
		t.Fatalf("snapshot by hand: %v\n%s", err, snap)
	}
}
