package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

func healthWord(s gpuv1.HealthState) string {
	switch s {
	case gpuv1.HealthState_HEALTH_STATE_HEALTHY:
		return "Healthy"
	case gpuv1.HealthState_HEALTH_STATE_DEGRADED:
		return "Degraded"
	case gpuv1.HealthState_HEALTH_STATE_UNHEALTHY:
		return "Unhealthy"
	}
	return "Unknown"
}

func mib(b uint64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%d MiB", b/(1<<20))
}

func (a *app) gpusCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gpus", Short: "GPU inventory and health across the fleet"}

	var req fleetv1.ListGpusRequest
	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "One row per GPU and per MIG device",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allPages(func(tok string) (*fleetv1.ListGpusResponse, error) {
				req.PageToken = tok
				return fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.ListGpus, &req)
			}, func(all, p *fleetv1.ListGpusResponse) {
				all.Gpus, all.NextPageToken = append(all.Gpus, p.GetGpus()...), p.GetNextPageToken()
			})
			if err != nil {
				return err
			}
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NODE\tHOSTNAME\tGPU\tUUID\tPRODUCT\tMEMORY\tHEALTH\tREASONS")
				for _, g := range resp.GetGpus() {
					idx := fmt.Sprint(g.GetIndex())
					product := g.GetProduct()
					if g.MigIndex != nil {
						idx = fmt.Sprintf("%d/mig%d", g.GetIndex(), g.GetMigIndex())
						product += " MIG " + g.GetMigProfile()
					}
					reasons := strings.Join(g.GetReasons(), "; ")
					if reasons == "" {
						reasons = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.GetNodeId(), safe(g.GetHostname()), idx, safe(g.GetUuid()), safe(product), mib(g.GetMemoryBytes()), healthWord(g.GetHealth()), safe(reasons))
				}
			})
		},
	}
	list.Flags().StringVar(&req.NodeId, "node", "", "only this node")
	list.Flags().StringVar(&req.Product, "product", "", "only products containing this (case-insensitive)")
	list.Flags().BoolVar(&req.Unhealthy, "unhealthy", false, "only Degraded or Unhealthy GPUs")
	listOut.add(list)

	var sumOut outputFlag
	summary := &cobra.Command{
		Use:   "summary",
		Short: "GPU counts by product and health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sumOut.check(); err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.GetGpuSummary, &fleetv1.GetGpuSummaryRequest{})
			if err != nil {
				return err
			}
			return sumOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "PRODUCT\tNODES\tGPUS\tHEALTHY\tDEGRADED\tUNHEALTHY\tUNKNOWN")
				for _, r := range resp.GetProducts() {
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", safe(r.GetProduct()), r.GetNodes(), r.GetTotal(), r.GetHealthy(), r.GetDegraded(), r.GetUnhealthy(), r.GetUnknown())
				}
				fmt.Fprintf(tw, "\nnodes with GPUs: %d, without: %d, missing GPUs: %d\n", resp.GetNodesWithGpus(), resp.GetNodesWithoutGpus(), resp.GetNodesMissingGpus())
			})
		},
	}
	sumOut.add(summary)
	cmd.AddCommand(list, summary)
	return cmd
}
