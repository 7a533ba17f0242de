package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// Shell completion and the man page, both rendered from the command tree
// itself so that they can never disagree with --help. The release ships
// their output (goreleaser.yaml runs these commands).

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: "bash: tidemark completion bash > /etc/bash_completion.d/tidemark\n" +
			"zsh:  tidemark completion zsh > \"${fpath[1]}/_tidemark\"\n" +
			"fish: tidemark completion fish > ~/.config/fish/completions/tidemark.fish\n" +
			"bash and zsh ask tidemark itself for the words (--generate-bash-completion); fish gets a static list.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("completion takes one argument, the shell: bash, zsh or fish")
			}
			return writeCompletion(c.App, c.Args().First(), c.App.Writer)
		},
	}
}

func writeCompletion(app *cli.App, shell string, w io.Writer) error {
	var script string
	switch shell {
	case "bash":
		script = bashCompletion
	case "zsh":
		script = zshCompletion
	case "fish":
		s, err := app.ToFishCompletion()
		if err != nil {
			return fmt.Errorf("render the fish completion: %w", err)
		}
		script = s
	default:
		return usageErrorf("completion %q: want bash, zsh or fish", shell)
	}
	_, err := io.WriteString(w, strings.ReplaceAll(script, "$PROG", app.Name))
	return err
}

// bashCompletion and zshCompletion follow urfave/cli's autocomplete
// scripts (MIT): they run the command line typed so far with
// --generate-bash-completion, which the app answers from its command tree.
const bashCompletion = `# bash completion for $PROG (tidemark completion bash)
_$PROG_complete() {
	local cur words cword
	COMPREPLY=()
	if declare -F _init_completion >/dev/null 2>&1; then
		_init_completion -n "=:" || return
	else
		cur="${COMP_WORDS[COMP_CWORD]}"
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
	fi
	words=("${words[@]:0:$cword}")
	local req
	if [[ "$cur" == "-"* ]]; then
		req="${words[*]} ${cur} --generate-bash-completion"
	else
		req="${words[*]} --generate-bash-completion"
	fi
	local opts
	opts=$(eval "${req}" 2>/dev/null)
	COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
	return 0
}
complete -o bashdefault -o default -F _$PROG_complete $PROG
`

const zshCompletion = `#compdef $PROG
# zsh completion for $PROG (tidemark completion zsh)
_$PROG() {
	local -a opts
	local cur
	cur=${words[-1]}
	if [[ "$cur" == "-"* ]]; then
		opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion 2>/dev/null)}")
	else
		opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
	fi
	if [[ "${opts[1]}" != "" ]]; then
		_describe 'values' opts
	else
		_files
	fi
}
if [[ "$funcstack[1]" == "_$PROG" ]]; then
	_$PROG "$@"
else
	compdef _$PROG $PROG
fi
`

func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print the man page (troff, section 8): tidemark man > tidemark.8; man ./tidemark.8",
		Action: func(c *cli.Context) error {
			page, err := c.App.ToMan()
			if err != nil {
				return fmt.Errorf("render the man page: %w", err)
			}
			_, err = io.WriteString(c.App.Writer, page)
			return err
		},
	}
}
