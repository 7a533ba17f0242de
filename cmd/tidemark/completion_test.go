package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tidemarkdb/tidemark/internal/testenv"
)

// tidemarkOut runs the built binary and returns its stdout; it wants exit 0.
func tidemarkOut(t *testing.T, bin string, args ...string) string {
	t.Helper()
	var out, errs bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Run(); err != nil {
		t.Fatalf("tidemark %v: %v\n%s", args, err, errs.String())
	}
	return out.String()
}

// TestCompletionAndMan: what the release ships as completions and man page.
// bash, with the script tidemark completion bash prints, completes command
// names, subcommands and flags from the command tree (asking the binary, as
// a shell would); the zsh and fish scripts name every command; the man
// page is a section 8 troff page with every command; an unknown shell is a
// usage error in one line.
func TestCompletionAndMan(t *testing.T) {
	bin := testenv.Tidemark(t)
	top := []string{}
	for _, c := range commands() {
		if !c.Hidden {
			top = append(top, c.Name)
		}
	}

	t.Run("bash", func(t *testing.T) {
		bash, err := exec.LookPath("bash")
		if err != nil {
			t.Skip("no bash")
		}
		// The script runs "tidemark" by name, as from PATH.
		dir := t.TempDir()
		if err := os.Symlink(bin, filepath.Join(dir, "tidemark")); err != nil {
			t.Fatal(err)
		}
		script := filepath.Join(dir, "tidemark.bash")
		os.WriteFile(script, []byte(tidemarkOut(t, bin, "completion", "bash")), 0o644)
		complete := func(words ...string) []string {
			t.Helper()
			line := "source " + script + "\nCOMP_WORDS=(" + strings.Join(words, " ") + ")\n" +
				"COMP_CWORD=" + string(rune('0'+len(words)-1)) + "\n" +
				"_tidemark_complete\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
			cmd := exec.Command(bash, "--norc", "--noprofile", "-c", line)
			cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bash completion of %v: %v\n%s", words, err, out)
			}
			return strings.Fields(string(out))
		}
		for _, tc := range []struct {
			words []string
			want  []string
		}{
			{[]string{"tidemark", "''"}, top},
			{[]string{"tidemark", "ba"}, []string{"backup"}},
			{[]string{"tidemark", "key", "''"}, []string{"add", "list", "remove"}},
			{[]string{"tidemark", "restore", "--dry"}, []string{"--dry-run"}},
			{[]string{"tidemark", "agent", "--metrics-l"}, []string{"--metrics-listen"}},
		} {
			got := complete(tc.words...)
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("completing %v: %v lacks %s", tc.words, got, w)
				}
			}
		}
	})

	t.Run("zsh and fish", func(t *testing.T) {
		zsh := tidemarkOut(t, bin, "completion", "zsh")
		if !strings.HasPrefix(zsh, "#compdef tidemark\n") || !strings.Contains(zsh, "--generate-bash-completion") {
			t.Errorf("completion zsh:\n%s", zsh)
		}
		fish := tidemarkOut(t, bin, "completion", "fish")
		for _, name := range top {
			if !strings.Contains(fish, "complete -r -c tidemark -n '__fish_tidemark_no_subcommand' -a '"+name+"'") {
				t.Errorf("completion fish does not offer %s", name)
			}
		}
		for shell, script := range map[string]string{"zsh": zsh, "fish": fish} {
			if p, err := exec.LookPath(shell); err == nil {
				f := filepath.Join(t.TempDir(), "tidemark."+shell)
				os.WriteFile(f, []byte(script), 0o644)
				if out, err := exec.Command(p, "-n", f).CombinedOutput(); err != nil {
					t.Errorf("%s -n: %v\n%s", shell, err, out)
				}
			}
		}
	})

	t.Run("man", func(t *testing.T) {
		page := tidemarkOut(t, bin, "man")
		if !regexp.MustCompile(`(?m)^\.TH tidemark 8$`).MatchString(page) {
			t.Errorf("man: no .TH tidemark 8 line:\n%.300s", page)
		}
		for _, name := range top {
			if !strings.Contains(page, "\n.SH "+name+"\n") {
				t.Errorf("man: no section for %s", name)
			}
		}
	})

	t.Run("unknown shell", func(t *testing.T) {
		var errs bytes.Buffer
		cmd := exec.Command(bin, "completion", "tcsh")
		cmd.Stderr = &errs
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || strings.Count(strings.TrimSpace(errs.String()), "\n") != 0 || !strings.Contains(errs.String(), "bash, zsh or fish") {
			t.Errorf("completion tcsh: %v, %q", err, errs.String())
		}
	})
}
