package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/bud-ecosystem/budfleet/client"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

type app struct {
	configPath string
	server     string
	timeout    time.Duration
	conn       *grpc.ClientConn
}

func defaultConfigPath() string {
	if p := os.Getenv("BUDCTL_CONFIG"); p != "" {
		return p
	}
	if dir, err := os.UserConfigDir(); err == nil {
		return filepath.Join(dir, "budfleet", "budctl.yaml")
	}
	return ""
}

func newRoot() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:   "budctl",
		Short: "Operate a budfleet fleet",
		PersistentPostRun: func(*cobra.Command, []string) {
			if a.conn != nil {
				a.conn.Close()
			}
		},
	}
	root.PersistentFlags().StringVar(&a.configPath, "config", defaultConfigPath(), "budctl config file (also $BUDCTL_CONFIG)")
	root.PersistentFlags().StringVar(&a.server, "server", "", "controller address, overriding the config file")
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 30*time.Second, "time limit for each call")
	root.AddCommand(a.tokensCmd(), a.nodesCmd(), a.commandsCmd(), a.gpusCmd(), a.siemCmd(), a.clustersCmd(), a.maintenanceCmd(), a.artifactsCmd(), a.providersCmd(), a.machinesCmd(), a.bundleCmd(), a.agentsCmd(), a.backupCmd(), a.operatorsCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Version) },
	})
	return root
}

func (a *app) fleet() (fleetv1.FleetServiceClient, error) {
	if a.conn == nil {
		if a.configPath == "" {
			return nil, errors.New("no budctl config: pass --config or set BUDCTL_CONFIG")
		}
		cfg, err := client.Load(a.configPath)
		if err != nil {
			return nil, err
		}
		if a.server != "" {
			cfg.Server = a.server
		}
		a.conn, err = client.Dial(cfg)
		if err != nil {
			return nil, err
		}
	}
	return fleetv1.NewFleetServiceClient(a.conn), nil
}

// call runs one RPC with the timeout and turns its status into a plain error.
func call[Req, Resp any](a *app, ctx context.Context, f func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := f(ctx, req)
	if err != nil {
		if st, ok := status.FromError(err); ok {
			return resp, fmt.Errorf("%s: %s", st.Code(), st.Message())
		}
	}
	return resp, err
}

// fleetCall dials the controller (once) and makes one call of method, a
// FleetServiceClient method expression such as
// fleetv1.FleetServiceClient.ListNodes.
func fleetCall[Req, Resp any](a *app, ctx context.Context, method func(fleetv1.FleetServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	c, err := a.fleet()
	if err != nil {
		var zero Resp
		return zero, err
	}
	return call(a, ctx, func(ctx context.Context, req Req, opts ...grpc.CallOption) (Resp, error) {
		return method(c, ctx, req, opts...)
	}, req)
}

type outputFlag struct{ format string }

func (o *outputFlag) add(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "table", "output format: table, json or yaml")
}

func (o *outputFlag) check() error {
	switch o.format {
	case "table", "json", "yaml":
		return nil
	}
	return fmt.Errorf("--output %q: want table, json or yaml", o.format)
}

// print writes msg as protojson or YAML, or calls table for the table form.
func (o *outputFlag) print(w io.Writer, msg proto.Message, table func(*tabwriter.Writer)) error {
	switch o.format {
	case "json", "yaml":
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(msg)
		if err != nil {
			return err
		}
		if o.format == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return err
			}
			_, err = w.Write(b)
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func parseLabels(in []string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range in {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

func age(t interface{ AsTime() time.Time }, now time.Time) string {
	if t == nil {
		return "-"
	}
	tt := t.AsTime()
	if tt.IsZero() || tt.Unix() == 0 {
		return "-"
	}
	d := now.Sub(tt)
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		s = fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh", int(d.Hours()))
	default:
		s = fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	if neg {
		return "in " + s
	}
	return s
}

func labelString(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sortStrings(parts)
	return strings.Join(parts, ",")
}

// allNodes lists every node, following the pages.
func allNodes(a *app, ctx context.Context) (*fleetv1.ListNodesResponse, error) {
	out := &fleetv1.ListNodesResponse{}
	req := &fleetv1.ListNodesRequest{}
	for {
		resp, err := fleetCall(a, ctx, fleetv1.FleetServiceClient.ListNodes, req)
		if err != nil {
			return nil, err
		}
		out.Nodes = append(out.Nodes, resp.GetNodes()...)
		if resp.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// allCommands lists every command of node (all nodes when empty),
// following the pages.
func allCommands(a *app, ctx context.Context, node, batch string) (*fleetv1.ListCommandsResponse, error) {
	out := &fleetv1.ListCommandsResponse{}
	req := &fleetv1.ListCommandsRequest{NodeId: node, BatchId: batch}
	for {
		resp, err := fleetCall(a, ctx, fleetv1.FleetServiceClient.ListCommands, req)
		if err != nil {
			return nil, err
		}
		out.Commands = append(out.Commands, resp.GetCommands()...)
		if resp.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// allPages lists from the first page to the last: list is called with each
// page token in turn and merge adds each later page to the first (its items
// and its next_page_token), so the result reads as one response.
func allPages[R interface{ GetNextPageToken() string }](list func(token string) (R, error), merge func(all, page R)) (R, error) {
	all, err := list("")
	if err != nil {
		return all, err
	}
	seen := map[string]bool{}
	for tok := all.GetNextPageToken(); tok != ""; tok = all.GetNextPageToken() {
		if seen[tok] {
			return all, fmt.Errorf("the controller sent page token %q twice: stopping rather than listing forever", tok)
		}
		seen[tok] = true
		p, err := list(tok)
		if err != nil {
			return all, err
		}
		merge(all, p)
	}
	return all, nil
}
