package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	gpuv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/gpu/v1"
)

func statusWord(s fleetv1.NodeStatus) string {
	switch s {
	case fleetv1.NodeStatus_NODE_STATUS_READY:
		return "Ready"
	case fleetv1.NodeStatus_NODE_STATUS_NOT_READY:
		return "NotReady"
	}
	return "Unknown"
}

func (a *app) nodesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "nodes", Short: "Inspect, remove, cordon and drain nodes"}

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allNodes(a, cmd.Context())
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tHOSTNAME\tSTATUS\tGPUS\tLAST HEARTBEAT\tADDRESSES\tVERSION\tAGE\tPROBLEMS")
				for _, n := range resp.GetNodes() {
					inv := n.GetInventory()
					addrs, ver := "-", "-"
					if inv != nil {
						if len(inv.GetIpAddresses()) > 0 {
							addrs = strings.Join(inv.GetIpAddresses(), ",")
						}
						ver = inv.GetAgentVersion()
					}
					problems := "-"
					if len(n.GetProblems()) > 0 {
						problems = strings.Join(n.GetProblems(), " | ")
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.GetId(), safe(n.GetHostname()), statusWord(n.GetStatus()), gpuCount(n), age(n.GetLastHeartbeat(), now), safe(addrs), safe(ver), age(n.GetEnrolledAt(), now), safe(problems))
				}
			})
		},
	}
	listOut.add(list)

	var getOut outputFlag
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show one node",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := getOut.check(); err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.GetNode, &fleetv1.GetNodeRequest{Id: args[0]})
			if err != nil {
				return err
			}
			now := time.Now()
			return getOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				n := resp.GetNode()
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, safe(v)) }
				row("ID", n.GetId())
				row("Hostname", n.GetHostname())
				row("Status", statusWord(n.GetStatus()))
				row("Connected", fmt.Sprint(n.GetConnected()))
				row("Last heartbeat", age(n.GetLastHeartbeat(), now))
				row("Labels", labelString(n.GetLabels()))
				row("Enrolled", age(n.GetEnrolledAt(), now)+" ago with token "+n.GetTokenId())
				row("Certificate expires", age(n.GetCertificateExpiresAt(), now))
				if n.GetBootId() != "" {
					row("Boot ID", n.GetBootId())
				}
				if len(n.GetProblems()) > 0 {
					row("Problems", strings.Join(n.GetProblems(), "\n\t"))
				}
				if inv := n.GetInventory(); inv != nil {
					row("OS", inv.GetOs())
					row("Kernel", inv.GetKernel()+" ("+inv.GetArchitecture()+")")
					row("CPU", fmt.Sprintf("%s, %d cores", inv.GetCpuModel(), inv.GetCpuCores()))
					row("Memory", fmt.Sprintf("%.1f GiB", float64(inv.GetMemoryBytes())/(1<<30)))
					row("Addresses", strings.Join(inv.GetIpAddresses(), ", "))
					row("Machine ID", inv.GetMachineId())
					row("Agent version", inv.GetAgentVersion())
				}
				printNodeGPUs(tw, n)
				if q := n.GetGpus().GetQuarantine(); q != nil {
					row("GPU quarantine", quarantineText(q, now))
				}
				printNodeKubernetes(tw, n.GetKubernetes())
				printKubeletJoin(tw, n.GetKubeletJoin(), now) // join.go
			})
		},
	}
	getOut.add(get)

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Remove a node and revoke its certificate",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.DeleteNode, &fleetv1.DeleteNodeRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, get, del)
	cmd.AddCommand(a.nodeKubeCmds()...) // cordon, uncordon, drain (clusters.go)
	cmd.AddCommand(a.joinClusterCmd())  // join.go
	return cmd
}

func gpuCount(n *fleetv1.Node) string {
	g := n.GetGpus()
	if g == nil {
		return "-"
	}
	if !g.GetInventory().GetAvailable() {
		return "0"
	}
	unhealthy := 0
	for _, h := range g.GetHealth() {
		if h.GetState() == gpuv1.HealthState_HEALTH_STATE_UNHEALTHY {
			unhealthy++
		}
	}
	s := fmt.Sprint(len(g.GetInventory().GetGpus()))
	if unhealthy > 0 {
		s += fmt.Sprintf(" (%d unhealthy)", unhealthy)
	}
	return s
}

func printNodeGPUs(tw *tabwriter.Writer, n *fleetv1.Node) {
	g := n.GetGpus()
	if g == nil {
		return
	}
	inv := g.GetInventory()
	if !inv.GetAvailable() {
		fmt.Fprintf(tw, "GPUs:\tnone (%s)\n", safe(inv.GetReason()))
		return
	}
	fmt.Fprintf(tw, "GPU driver:\t%s (CUDA %s, NVML %s)\n", safe(inv.GetDriverVersion()), safe(inv.GetCudaDriverVersion()), safe(inv.GetNvmlVersion()))
	health := map[string]*gpuv1.GpuHealth{}
	for _, h := range g.GetHealth() {
		health[h.GetUuid()] = h
	}
	for _, gpu := range inv.GetGpus() {
		h := health[gpu.GetUuid()]
		line := fmt.Sprintf("%s, %s, %s, %s", gpu.GetProduct(), gpu.GetUuid(), mib(gpu.GetMemoryTotalBytes()), healthWord(h.GetState()))
		if len(h.GetReasons()) > 0 {
			line += ": " + strings.Join(h.GetReasons(), "; ")
		}
		fmt.Fprintf(tw, "GPU %d:\t%s\n", gpu.GetIndex(), safe(line))
	}
	if len(n.GetKubernetesLabels()) > 0 {
		fmt.Fprintf(tw, "Kubernetes labels:\t%s\n", labelString(n.GetKubernetesLabels()))
	}
	for _, t := range n.GetProposedTaints() {
		fmt.Fprintf(tw, "Proposed taint:\t%s=%s:%s\n", safe(t.GetKey()), safe(t.GetValue()), safe(t.GetEffect()))
	}
}

// quarantineText is one line on a node's GPU quarantine.
func quarantineText(q *fleetv1.GpuQuarantine, now time.Time) string {
	word := strings.ToLower(strings.TrimPrefix(q.GetState().String(), "QUARANTINE_STATE_"))
	out := word + " for " + age(q.GetSince(), now) + ": " + q.GetReason()
	if q.GetCampaignId() != "" {
		out += "; remediation campaign " + q.GetCampaignId()
	}
	if q.GetError() != "" {
		out += "; " + q.GetError()
	}
	return out
}
