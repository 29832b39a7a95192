package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// joinClusterCmd is 'nodes join-cluster': queue the node's kubelet join.
func (a *app) joinClusterCmd() *cobra.Command {
	var (
		cluster, version string
		labels, taints   []string
		images           []string
		tokenTTL         time.Duration
		out              outputFlag
	)
	cmd := &cobra.Command{
		Use:   "join-cluster ID --cluster NAME",
		Short: "Join the node to a Kubernetes cluster: the agent installs and starts the kubelet",
		Long: `Queue the node's join to a registered Kubernetes cluster (command kind
kubelet.join). The controller ensures the cluster's bootstrap RBAC, mints a
bootstrap token (1h by default), finds the kubelet and the node's runtime in
the artifact store, and queues the join spec; the agent installs them, writes
the kubelet's configuration and starts it; the kubelet bootstraps its
certificate and registers its Node. GPU nodes get nvidia.com/gpu=true,
node.kubernetes.io/gpu=true, the GPU feature labels and the taint
nvidia.com/gpu=true:NoSchedule. 'budctl nodes get ID' shows the join's phase.
Joining again converges and keeps the node's credentials.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			if cluster == "" {
				return fmt.Errorf("--cluster NAME is required (see 'budctl clusters list')")
			}
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			req := &kubev1.JoinNodeRequest{NodeId: args[0], Cluster: cluster, KubeletVersion: version, Labels: l, Taints: taints, Images: images}
			if tokenTTL != 0 {
				req.TokenTtl = durationpb.New(tokenTTL)
			}
			resp, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.JoinNode, req)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				row("Command", resp.GetCommandId())
				row("Joins", kubeNodeWhere(resp.GetNode()))
				row("Kubelet", resp.GetKubeletVersion())
				row("Bootstrap token", resp.GetTokenId()+" (expires "+resp.GetTokenExpiresAt().AsTime().UTC().Format(time.RFC3339)+")")
				row("Labels", labelString(resp.GetLabels()))
				row("Taints", dashIfEmpty(strings.Join(resp.GetTaints(), ", ")))
				arts := "none: the node uses what it has"
				if len(resp.GetArtifacts()) > 0 {
					arts = strings.Join(resp.GetArtifacts(), "; ")
				}
				row("Artifacts", arts)
				row("Follow", "budctl nodes get "+args[0])
			})
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "the registered cluster to join (required)")
	cmd.Flags().StringVar(&version, "kubelet-version", "", "the kubelet's version, e.g. v1.37.2 (default: the API server's)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "Node label k=v (repeatable; overrides the GPU labels)")
	cmd.Flags().StringArrayVar(&taints, "taint", nil, "Node taint k=v:Effect or k:Effect (repeatable)")
	cmd.Flags().StringArrayVar(&images, "image", nil, "image tarball artifact NAME or NAME@VERSION to import before the kubelet starts (repeatable)")
	cmd.Flags().DurationVar(&tokenTTL, "token-ttl", 0, "how long the bootstrap token works (default 1h; 1m to 24h)")
	out.add(cmd)
	return cmd
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printKubeletJoin shows a node's latest join in 'nodes get'.
func printKubeletJoin(tw *tabwriter.Writer, j *kubev1.KubeletJoin, now time.Time) {
	if j == nil {
		return
	}
	phase := j.GetPhase()
	if j.GetReason() != "" {
		phase += ": " + j.GetReason()
	}
	fmt.Fprintf(tw, "Kubelet join:\t%s (cluster %s, Node %s, command %s, updated %s ago)\n", phase, j.GetCluster(), j.GetNodeName(), j.GetCommandId(), age(j.GetUpdatedAt(), now))
}
