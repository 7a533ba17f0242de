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
		}, {
			Name:  "versions",
			Usage: "bring back the objects of a locked repository that were deleted or overwritten",
			Description: "For a repository made with init --lock-days, after someone with its credentials deleted or\n" +
				"overwrote objects: every locked object (config, keys, packs, index, snapshots, WAL) was written once,\n" +
				"so its oldest version in the bucket is the original and the lock kept it. The versions and delete\n" +
				"markers hiding it are removed (or, when locked themselves, the original is copied over them). Needs no\n" +
				"identity. Leases, quarantine records and verify's state are not restored; delete stray ones by hand.",
			Flags:  repoURLFlags(),
			Action: runRepairVersions,
		}},
	}
}

func runRepairVersions(c *cli.Context) error {
	log, err := newLogger(c, c.App.ErrWriter)
	if err != nil {
		return err
	}
	st, err := openStore(c, log)
	if err != nil {
		return err
	}
	restored, lost, err := repo.RestoreOriginals(c.Context, st)
	for _, k := range restored {
		fmt.Fprintf(c.App.Writer, "restored %s\n", k)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%d objects restored to their original version\n", len(restored))
	for _, k := range lost {
		fmt.Fprintf(c.App.ErrWriter, "no version left: %s\n", k)
	}
	if len(lost) > 0 {
		return &repo.CorruptError{Key: lost[0], Err: fmt.Errorf("%d objects have no version left; run 'tidemark verify' to see which snapshots they affect", len(lost))}
	}
	return nil
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
