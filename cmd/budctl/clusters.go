package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// kubeCall is fleetCall for the ClusterService.
func kubeCall[Req, Resp any](a *app, ctx context.Context, method func(kubev1.ClusterServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	if _, err := a.fleet(); err != nil { // dials once
		var zero Resp
		return zero, err
	}
	c := kubev1.NewClusterServiceClient(a.conn)
	return call(a, ctx, func(ctx context.Context, req Req, opts ...grpc.CallOption) (Resp, error) {
		return method(c, ctx, req, opts...)
	}, req)
}

func (a *app) clustersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "clusters",
		Short: "Register the Kubernetes clusters the fleet's nodes belong to",
		Long: `The controller keeps each cluster's kubeconfig in its store and never prints it back.

A fleet node belongs to the cluster named by its label budfleet.io/cluster, or
to the only registered cluster; its Kubernetes Node is the one named by its
label budfleet.io/k8s-node, or its hostname.`,
	}

	var kubeconfig string
	var addOut outputFlag
	add := &cobra.Command{
		Use:   "add NAME --kubeconfig FILE",
		Short: "Check that the controller can reach a cluster, then store its kubeconfig",
		Long: `The kubeconfig must carry its credentials (no file paths, no exec plugins):
'kubectl config view --minify --flatten' writes such a file. Its current context
is the one used. Nothing is stored when the cluster cannot be reached.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := addOut.check(); err != nil {
				return err
			}
			b, err := os.ReadFile(kubeconfig)
			if err != nil {
				return fmt.Errorf("--kubeconfig: %w", err)
			}
			resp, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.AddCluster, &kubev1.AddClusterRequest{Name: args[0], Kubeconfig: b})
			if err != nil {
				return err
			}
			return addOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				c := resp.GetCluster()
				fmt.Fprintf(tw, "cluster %s added: %s, Kubernetes %s, authenticated as %s\n", c.GetName(), c.GetServer(), c.GetCheck().GetServerVersion(), c.GetCheck().GetAuthenticatedAs())
			})
		},
	}
	add.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file of the cluster (credentials embedded)")
	_ = add.MarkFlagRequired("kubeconfig")
	addOut.add(add)

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List clusters, each checked now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allPages(func(tok string) (*kubev1.ListClustersResponse, error) {
				return kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.ListClusters, &kubev1.ListClustersRequest{PageToken: tok})
			}, func(all, p *kubev1.ListClustersResponse) {
				all.Clusters, all.NextPageToken = append(all.Clusters, p.GetClusters()...), p.GetNextPageToken()
			})
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tSERVER\tREACHABLE\tVERSION\tUSER\tAGE\tREASON")
				for _, c := range resp.GetClusters() {
					chk := c.GetCheck()
					reason := chk.GetReason()
					if reason == "" {
						reason = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.GetName(), c.GetServer(), yesNo(chk.GetReachable()), dash(chk.GetServerVersion()), dash(chk.GetAuthenticatedAs()), age(c.GetAddedAt(), now), reason)
				}
			})
		},
	}
	listOut.add(list)

	var getOut outputFlag
	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Show one cluster, checked now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := getOut.check(); err != nil {
				return err
			}
			resp, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.GetCluster, &kubev1.GetClusterRequest{Name: args[0]})
			if err != nil {
				return err
			}
			now := time.Now()
			return getOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				c := resp.GetCluster()
				chk := c.GetCheck()
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				row("Name", c.GetName())
				row("Server", c.GetServer())
				ca := dash(c.GetCaFingerprint())
				if c.GetInsecureSkipTlsVerify() {
					ca = "NOT VERIFIED (insecure-skip-tls-verify)"
				}
				row("CA", ca)
				row("User", c.GetUser()+" ("+c.GetAuth()+")")
				row("Added", age(c.GetAddedAt(), now)+" ago by "+dash(c.GetAddedBy()))
				row("Reachable", yesNo(chk.GetReachable()))
				if chk.GetReason() != "" {
					row("Reason", chk.GetReason())
				}
				row("Version", dash(chk.GetServerVersion()))
				row("Authenticated as", dash(chk.GetAuthenticatedAs()))
			})
		},
	}
	getOut.add(get)

	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Forget a cluster and its credentials (its nodes stay enrolled)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.RemoveCluster, &kubev1.RemoveClusterRequest{Name: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s removed\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(add, list, get, remove)
	return cmd
}

// nodeKubeCmds are the nodes subcommands that act on a node's Kubernetes
// Node: cordon, uncordon, drain.
func (a *app) nodeKubeCmds() []*cobra.Command {
	var cordonOut, uncordonOut outputFlag
	cordon := &cobra.Command{
		Use:   "cordon ID",
		Short: "Mark the node's Kubernetes Node unschedulable",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cordonOut.check(); err != nil {
				return err
			}
			resp, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.CordonNode, &kubev1.CordonNodeRequest{NodeId: args[0]})
			if err != nil {
				return err
			}
			return cordonOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "node %s: %s cordoned\n", args[0], kubeNodeWhere(resp.GetNode()))
			})
		},
	}
	cordonOut.add(cordon)
	uncordon := &cobra.Command{
		Use:   "uncordon ID",
		Short: "Mark the node's Kubernetes Node schedulable again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := uncordonOut.check(); err != nil {
				return err
			}
			resp, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.UncordonNode, &kubev1.UncordonNodeRequest{NodeId: args[0]})
			if err != nil {
				return err
			}
			return uncordonOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "node %s: %s uncordoned\n", args[0], kubeNodeWhere(resp.GetNode()))
			})
		},
	}
	uncordonOut.add(uncordon)

	var (
		drainTimeout     time.Duration
		deleteEmptyDir   bool
		ignoreDaemonSets bool
		force            bool
		gracePeriod      int32
		drainOut         outputFlag
	)
	drain := &cobra.Command{
		Use:   "drain ID",
		Short: "Cordon the node's Kubernetes Node and evict its pods, PodDisruptionBudgets respected",
		Long: `Cordon the node's Kubernetes Node and evict its pods as 'kubectl drain' does.
It prints what was evicted and what blocked the drain (the pod, and the
PodDisruptionBudget that refused its eviction), and exits non-zero when pods are
left. --timeout here is the drain's; the call itself waits a minute longer.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := drainOut.check(); err != nil {
				return err
			}
			if drainTimeout <= 0 {
				return fmt.Errorf("--timeout %s: want a positive duration", drainTimeout)
			}
			if gracePeriod == 0 {
				return fmt.Errorf("--grace-period 0 would kill pods without any grace: give 1 or more seconds, or -1 for each pod's own")
			}
			a.timeout = drainTimeout + time.Minute
			req := &kubev1.DrainNodeRequest{
				NodeId:             args[0],
				Timeout:            durationpb.New(drainTimeout),
				DeleteEmptydirData: &deleteEmptyDir,
				IgnoreDaemonsets:   &ignoreDaemonSets,
				Force:              force,
			}
			if gracePeriod > 0 {
				req.GracePeriodSeconds = &gracePeriod
			}
			resp, err := kubeCall(a, cmd.Context(), kubev1.ClusterServiceClient.DrainNode, req)
			if err != nil {
				return err
			}
			rep := resp.GetReport()
			if err := drainOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) { printDrainReport(tw, rep) }); err != nil {
				return err
			}
			if rep.GetResult() != kubev1.DrainResult_DRAIN_RESULT_SUCCEEDED {
				return fmt.Errorf("drain did not finish: %s", rep.GetMessage())
			}
			return nil
		},
	}
	drain.Flags().DurationVar(&drainTimeout, "timeout", 300*time.Second, "how long the evictions may take in all")
	drain.Flags().BoolVar(&deleteEmptyDir, "delete-emptydir-data", true, "evict pods with emptyDir volumes (their data is lost)")
	drain.Flags().BoolVar(&ignoreDaemonSets, "ignore-daemonsets", true, "leave DaemonSet pods; when false, one blocks the drain")
	drain.Flags().BoolVar(&force, "force", false, "also delete pods that no controller manages (they are not recreated)")
	drain.Flags().Int32Var(&gracePeriod, "grace-period", -1, "seconds each pod gets to terminate; -1 keeps each pod's own")
	drainOut.add(drain)
	return []*cobra.Command{cordon, uncordon, drain}
}

func kubeNodeWhere(n *kubev1.KubernetesNode) string {
	return fmt.Sprintf("Kubernetes Node %s in cluster %s", n.GetName(), n.GetCluster())
}

func printDrainReport(tw *tabwriter.Writer, rep *kubev1.DrainReport) {
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	result := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(rep.GetResult().String(), "DRAIN_RESULT_")), "_", " ")
	row("Result", result)
	row("Node", kubeNodeWhere(rep.GetNode())+", "+schedulable(rep.GetNode()))
	row("Duration", rep.GetDuration().AsDuration().Round(time.Millisecond).String())
	if len(rep.GetEvicted()) == 0 {
		row("Evicted", "none")
	}
	for i, p := range rep.GetEvicted() {
		k := ""
		if i == 0 {
			k = "Evicted"
		}
		fmt.Fprintf(tw, "%s\t%s/%s\n", colon(k), p.GetNamespace(), p.GetName())
	}
	for i, b := range rep.GetBlocked() {
		k := ""
		if i == 0 {
			k = "Blocked"
		}
		by := ""
		if b.GetPdb() != "" {
			by = " by PodDisruptionBudget " + b.GetPdb()
		}
		fmt.Fprintf(tw, "%s\t%s/%s%s: %s\n", colon(k), b.GetNamespace(), b.GetName(), by, b.GetReason())
	}
	for i, w := range rep.GetWarnings() {
		k := ""
		if i == 0 {
			k = "Warnings"
		}
		fmt.Fprintf(tw, "%s\t%s\n", colon(k), w)
	}
	row("Summary", rep.GetMessage())
}

// printNodeKubernetes adds a node's Kubernetes mapping and Node state to
// 'nodes get'.
func printNodeKubernetes(tw *tabwriter.Writer, k *kubev1.KubernetesNode) {
	if k == nil {
		return
	}
	fmt.Fprintf(tw, "Kubernetes:\t%s (by %s)\n", kubeNodeWhere(k), k.GetMappedBy())
	switch {
	case k.GetError() != "":
		fmt.Fprintf(tw, "Kubernetes Node:\tunknown: %s\n", k.GetError())
	case !k.GetExists():
		fmt.Fprintf(tw, "Kubernetes Node:\tdoes not exist\n")
	default:
		ready := "NotReady"
		if k.GetReady() {
			ready = "Ready"
		}
		fmt.Fprintf(tw, "Kubernetes Node:\t%s, %s\n", ready, schedulable(k))
	}
}

func schedulable(k *kubev1.KubernetesNode) string {
	if k.GetUnschedulable() {
		return "unschedulable (cordoned)"
	}
	return "schedulable"
}

func colon(k string) string {
	if k == "" {
		return ""
	}
	return k + ":"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
