package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/internal/cli"
)

// upgradeWatchCmd is the rollback watch an upgrade starts from the binary
// it keeps: it puts that binary back unless the new one connects in time.
func (a *app) upgradeWatchCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "upgrade-watch",
		Short:  "Roll back a pending agent upgrade at its deadline unless the new binary connected (started by agent.upgrade)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := cli.NewLogger(os.Stderr, a.logFormat, a.logLevel)
			if err != nil {
				return err
			}
			return agent.WatchUpgrade(cmd.Context(), a.stateDir, log.With("component", "upgrade-watch"))
		},
	}
}
