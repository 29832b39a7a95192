package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func (a *app) siemCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "siem", Short: "Audit-log forwarding across the fleet"}

	var file string
	var selector []string
	var applyOut outputFlag
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Store a forwarding configuration and push it to the nodes it selects",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyOut.check(); err != nil {
				return err
			}
			if file == "" {
				return fmt.Errorf("-f FILE is required")
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			sel, err := parseLabels(selector)
			if err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.ApplySiemConfig, &fleetv1.ApplySiemConfigRequest{Yaml: b, Selector: sel})
			if err != nil {
				return err
			}
			return applyOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "SIEM configuration version %d applies to %d node(s)\n", resp.GetVersion(), len(resp.GetNodeIds()))
			})
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "YAML file with the siem: section")
	apply.Flags().StringArrayVar(&selector, "selector", nil, "only nodes with this label k=v (repeatable)")
	applyOut.add(apply)

	var node string
	var statusOut outputFlag
	status := &cobra.Command{
		Use:   "status",
		Short: "Forwarding per node: failing and lagging nodes first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := statusOut.check(); err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.GetSiemStatus, &fleetv1.GetSiemStatusRequest{NodeId: node})
			if err != nil {
				return err
			}
			now := time.Now()
			return statusOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NODE\tHOSTNAME\tSTATE\tCONFIG\tOUTPUT\tSENT\tSPOOLED\tLAG\tREAD\tLAST ERROR")
				for _, n := range resp.GetNodes() {
					st := n.GetStatus()
					cfg := "-"
					if st != nil {
						cfg = st.GetConfigSource()
						if st.GetConfigSource() == "controller" {
							cfg = fmt.Sprintf("v%d", st.GetConfigVersion())
						}
					}
					var read uint64
					for _, s := range st.GetSources() {
						read += s.GetEventsRead()
					}
					if len(st.GetOutputs()) == 0 {
						errMsg := st.GetConfigError()
						if errMsg == "" {
							errMsg = "-"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\t-\t-\t-\t%d\t%s\n", n.GetNodeId(), safe(n.GetHostname()), n.GetState(), cfg, read, safe(errMsg))
						continue
					}
					for _, o := range st.GetOutputs() {
						errMsg := o.GetLastError()
						if errMsg == "" {
							errMsg = "-"
						}
						if o.GetLastErrorAt() != nil {
							errMsg += " (" + age(o.GetLastErrorAt(), now) + " ago)"
						}
						lag := fmt.Sprintf("%.1fs", o.GetLagSeconds())
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\n", n.GetNodeId(), safe(n.GetHostname()), n.GetState(), cfg, safe(o.GetName()), o.GetEventsAcknowledged(), o.GetSpoolEvents(), lag, read, safe(strings.ReplaceAll(errMsg, "\n", " ")))
					}
				}
			})
		},
	}
	status.Flags().StringVar(&node, "node", "", "only this node")
	statusOut.add(status)
	cmd.AddCommand(apply, status)
	return cmd
}
