package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/tidemarkdb/tidemark/repo"
)

func repairCommand() *cli.Command {
	return &cli.Command{
		Name:  "repair",
		Usage: "repair repository metadata",
		Subcommands: []*cli.Command{{
			Name:  "index",
			Usage: "index packs the index does not know (after a crash between pack upload and index write)",
			Description: "Reads the trailer of every pack missing from the index (two or three ranged GETs each) and writes\n" +
				"an index delta for them. --full rebuilds the whole index from pack trailers alone.",
			Flags: flagSet(repoFlags(), []cli.Flag{
				&cli.BoolFlag{Name: "full", Usage: "rebuild the whole index from every pack's trailer", EnvVars: []string{envName("full")}},
			}),
			Action: runRepairIndex,
		}},
	}
}

func runRepairIndex(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	r, err := openRepo(c, log, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	st, err := r.RebuildIndex(c.Context, c.Bool("full"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%d packs found, %d indexed (%d blobs)", st.Packs, st.Indexed, st.Blobs)
	if st.Generation != 0 {
		fmt.Fprintf(c.App.Writer, ", index generation %d written", st.Generation)
	}
	fmt.Fprintln(c.App.Writer)
	for _, k := range st.Unreadable {
		fmt.Fprintf(c.App.ErrWriter, "unreadable pack, not indexed: %s\n", k)
	}
	if len(st.Unreadable) > 0 {
		return &repo.CorruptError{Key: st.Unreadable[0],
			Err: fmt.Errorf("%d packs unreadable; run 'tidemark verify' to see which snapshots they affect", len(st.Unreadable))}
	}
	return nil
}
