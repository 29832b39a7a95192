// bud-agent is the node agent daemon.
package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/internal/cli"
	"github.com/bud-ecosystem/budfleet/version"
)

func main() { cli.Main(newRoot()) }

// app holds the flags every command shares.
type app struct {
	logFormat, logLevel string
	stateDir            string
}

func newRoot() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:   "bud-agent",
		Short: "The budfleet node agent",
	}
	cli.LogFlags(root, &a.logFormat, &a.logLevel)
	root.PersistentFlags().StringVar(&a.stateDir, "state-dir", "/var/lib/bud-agent", "agent state dir")

	root.AddCommand(a.joinCmd(), a.runCmd(), a.statusCmd(), gpusCmd(), a.upgradeWatchCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	return root
}
