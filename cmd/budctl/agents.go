package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

func (a *app) agentsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "agents", Short: "The nodes' agents: roll out a new bud-agent"}

	var selectors []string
	var version, name string
	var maxUnavailable, maxFailures int
	var timeout time.Duration
	var dryRun bool
	var out outputFlag
	upgrade := &cobra.Command{
		Use:   "upgrade --selector k=v --version V [--max-unavailable N] [--max-failures F]",
		Short: "Upgrade the agents of the matching nodes to bud-agent@V from the artifact store; prints the campaign id",
		Long: `Rolls the artifact bud-agent@V (a binary, one per platform: linux/<the
node's architecture>; push it or load a bundle first) out to the nodes whose
labels match every --selector, as a maintenance campaign: at most
--max-unavailable agents at once, stopping after --max-failures failed
nodes, resumed where it was after a controller restart. Nodes are not
cordoned or drained: only the agent restarts. Each agent checks the digest,
installs the binary beside the running one (kept as <binary>.prev),
restarts, and rolls itself back to the kept binary when the new one does not
connect within --upgrade-timeout. A node is done when its agent is back on
V. Follow it with 'budctl maintenance get ID -w'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			sel, err := maintenance.ParseSelector(selectors)
			if err != nil {
				return err
			}
			if timeout < 0 || timeout > command.MaxUpgradeTimeout {
				return fmt.Errorf("--upgrade-timeout must be over 0 and at most %s", command.MaxUpgradeTimeout)
			}
			if name == "" {
				name = "agent upgrade to " + version
			}
			req := &maintv1.StartCampaignRequest{
				Selector:       sel,
				MaxUnavailable: uint32(maxUnavailable),
				MaxFailures:    uint32(maxFailures),
				Name:           name,
				DryRun:         dryRun,
				AgentUpgrade:   &maintv1.AgentUpgrade{Version: version, Timeout: durationpb.New(timeout)},
			}
			resp, err := maintCall(a, cmd.Context(), maintv1.MaintenanceServiceClient.StartCampaign, req)
			if err != nil {
				return err
			}
			if dryRun || out.format != "table" {
				return out.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
					printCampaign(tw, resp.GetCampaign())
				})
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetId())
			return nil
		},
	}
	fl := upgrade.Flags()
	fl.StringArrayVar(&selectors, "selector", nil, "node label k=v the nodes must have (repeatable; all must match)")
	fl.StringVar(&version, "version", "", "the bud-agent version to run (the artifact bud-agent@VERSION)")
	fl.IntVar(&maxUnavailable, "max-unavailable", 1, "the most agents upgrading at once")
	fl.IntVar(&maxFailures, "max-failures", maintenance.DefaultMaxFailures, "stop the rollout after this many failed nodes")
	fl.DurationVar(&timeout, "upgrade-timeout", command.DefaultUpgradeTimeout, "how long a new agent has, from its restart, to connect before the node rolls back")
	fl.StringVar(&name, "name", "", `a name for the campaign (default "agent upgrade to VERSION")`)
	fl.BoolVar(&dryRun, "dry-run", false, "check everything and show the nodes the rollout would take; store nothing")
	_ = upgrade.MarkFlagRequired("selector")
	_ = upgrade.MarkFlagRequired("version")
	out.add(upgrade)
	cmd.AddCommand(upgrade)
	return cmd
}
