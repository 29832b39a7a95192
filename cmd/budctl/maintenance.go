package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// maintCall dials the controller (once) and makes one call of method, a
// MaintenanceServiceClient method expression.
func maintCall[Req, Resp any](a *app, ctx context.Context, method func(maintv1.MaintenanceServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	if _, err := a.fleet(); err != nil {
		var zero Resp
		return zero, err
	}
	c := maintv1.NewMaintenanceServiceClient(a.conn)
	return call(a, ctx, func(ctx context.Context, req Req, opts ...grpc.CallOption) (Resp, error) {
		return method(c, ctx, req, opts...)
	}, req)
}

var drainPolicyFlag = map[string]maintv1.DrainFailurePolicy{
	"uncordon": maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_UNCORDON,
	"cordon":   maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_CORDON,
	"proceed":  maintv1.DrainFailurePolicy_DRAIN_FAILURE_POLICY_PROCEED,
}

// startFlags are the flags of 'maintenance start'.
type startFlags struct {
	selectors      []string
	maxUnavailable int
	perDomain      string
	drainTimeout   time.Duration
	drainAttempts  int
	gracePeriod    time.Duration
	onDrainFailure string
	task           string
	taskTimeout    time.Duration
	reboot         bool
	rebootTimeout  time.Duration
	healthTimeout  time.Duration
	window         string
	maxFailures    int
	name           string
	dryRun         bool
}

// request checks what budctl can check alone and builds the request; the
// controller checks everything again.
func (f *startFlags) request() (*maintv1.StartCampaignRequest, error) {
	sel, err := maintenance.ParseSelector(f.selectors)
	if err != nil {
		return nil, err
	}
	if len(sel) == 0 {
		return nil, errors.New("give at least one --selector key=value: a campaign never takes the whole fleet by default")
	}
	if f.maxUnavailable < 0 || f.maxFailures < 0 || f.drainAttempts < 0 {
		return nil, errors.New("--max-unavailable, --max-failures and --drain-attempts must not be negative")
	}
	req := &maintv1.StartCampaignRequest{
		Selector:       sel,
		MaxUnavailable: uint32(f.maxUnavailable),
		DrainAttempts:  uint32(f.drainAttempts),
		Reboot:         f.reboot,
		Window:         f.window,
		MaxFailures:    uint32(f.maxFailures),
		Name:           f.name,
		DryRun:         f.dryRun,
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
		to   **durationpb.Duration
	}{
		{"--drain-timeout", f.drainTimeout, &req.DrainTimeout},
		{"--grace-period", f.gracePeriod, &req.GracePeriod},
		{"--task-timeout", f.taskTimeout, &req.TaskTimeout},
		{"--reboot-timeout", f.rebootTimeout, &req.RebootTimeout},
		{"--health-timeout", f.healthTimeout, &req.HealthTimeout},
	} {
		switch {
		case d.v < 0:
			return nil, fmt.Errorf("%s must not be negative", d.flag)
		case d.v > 0:
			*d.to = durationpb.New(d.v)
		}
	}
	if f.perDomain != "" {
		d, err := maintenance.ParseDomainLimit(f.perDomain)
		if err != nil {
			return nil, err
		}
		req.PerDomain = &maintv1.DomainLimit{Label: d.Label, Max: uint32(d.Max)}
	}
	if f.onDrainFailure != "" {
		p, ok := drainPolicyFlag[f.onDrainFailure]
		if !ok {
			return nil, fmt.Errorf("--on-drain-failure %q: want uncordon, cordon or proceed", f.onDrainFailure)
		}
		req.OnDrainFailure = p
	}
	if f.task != "" {
		b, err := readTask(f.task)
		if err != nil {
			return nil, err
		}
		req.Task = b
	}
	if len(req.Task) == 0 && !req.Reboot {
		return nil, errors.New("nothing to do: give --task FILE, --reboot, or both")
	}
	return req, nil
}

// readTask reads the task script, refusing a missing, empty or too large
// file before anything is sent.
func readTask(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--task: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("--task %s is not a regular file", path)
	}
	if fi.Size() > maintenance.MaxTaskBytes {
		return nil, fmt.Errorf("--task %s is %d bytes; the limit is %d (64 KiB): keep the script small and fetch larger payloads from it", path, fi.Size(), maintenance.MaxTaskBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--task: %w", err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("--task %s is empty", path)
	}
	return b, nil
}

func (a *app) maintenanceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "maintenance", Aliases: []string{"maint"}, Short: "Run maintenance campaigns: cordon, drain, a task, a reboot and uncordon across nodes"}

	var f startFlags
	var startOut outputFlag
	start := &cobra.Command{
		Use:   "start --selector k=v --max-unavailable N [--task FILE] [--reboot]",
		Short: "Start a campaign; prints its id",
		Long: `Start a maintenance campaign over the nodes whose labels match every --selector.
Per node: take a slot (--max-unavailable across the campaign, --per-domain
LABEL=K per failure domain), cordon, drain, run the --task script on the
node, --reboot and wait for it to come back, wait for the Node Ready and its
GPUs as before, uncordon. New nodes start only inside --window. After
--max-failures failed nodes the campaign stops by itself, leaving the failed
nodes cordoned. Prints the campaign id alone (with --dry-run, the nodes it
would take, storing nothing).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := startOut.check(); err != nil {
				return err
			}
			req, err := f.request()
			if err != nil {
				return err
			}
			resp, err := maintCall(a, cmd.Context(), maintv1.MaintenanceServiceClient.StartCampaign, req)
			if err != nil {
				return err
			}
			if f.dryRun || startOut.format != "table" {
				return startOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
					printCampaign(tw, resp.GetCampaign())
				})
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetId())
			return nil
		},
	}
	fl := start.Flags()
	fl.StringArrayVar(&f.selectors, "selector", nil, "node label k=v the nodes must have (repeatable; all must match)")
	fl.IntVar(&f.maxUnavailable, "max-unavailable", 0, "the most nodes out of service at once, failed ones left cordoned included")
	fl.StringVar(&f.perDomain, "per-domain", "", "LABEL=K: at most K nodes at once per value of the node label, such as rack=2")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", maintenance.DefaultDrainTimeout, "the limit on one drain attempt")
	fl.IntVar(&f.drainAttempts, "drain-attempts", maintenance.DefaultDrainAttempts, "drain attempts per node before its drain has failed")
	fl.DurationVar(&f.gracePeriod, "grace-period", 0, "override the pods' termination grace period (0 keeps each pod's own)")
	fl.StringVar(&f.onDrainFailure, "on-drain-failure", "uncordon", "after the last failed drain: uncordon (and fail the node), cordon (fail it, left cordoned) or proceed (run the task anyway)")
	fl.StringVar(&f.task, "task", "", "a shell script the agent runs on each node (at most 64 KiB), with BUD_NODE_ID, BUD_NODE_NAME and BUD_CAMPAIGN_ID set")
	fl.DurationVar(&f.taskTimeout, "task-timeout", maintenance.DefaultTaskTimeout, "the limit on the task (at most 24h)")
	fl.BoolVar(&f.reboot, "reboot", false, "reboot each node after its task and wait for a new boot id")
	fl.DurationVar(&f.rebootTimeout, "reboot-timeout", maintenance.DefaultRebootTimeout, "the wait for the agent to come back from the reboot")
	fl.DurationVar(&f.healthTimeout, "health-timeout", maintenance.DefaultHealthTimeout, "the wait for the Node Ready, the agent connected and the GPUs as before")
	fl.StringVar(&f.window, "window", "", `when new nodes may start, such as "Sat 02:00-06:00" or "Mon-Fri 22:00-04:00 Europe/Berlin" (always when empty)`)
	fl.IntVar(&f.maxFailures, "max-failures", maintenance.DefaultMaxFailures, "stop the campaign after this many failed nodes (the circuit breaker)")
	fl.StringVar(&f.name, "name", "", "a name for the campaign")
	fl.BoolVar(&f.dryRun, "dry-run", false, "check everything and show the nodes the campaign would take; store nothing")
	_ = start.MarkFlagRequired("selector")
	_ = start.MarkFlagRequired("max-unavailable")
	startOut.add(start)

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List campaigns",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allPages(func(tok string) (*maintv1.ListCampaignsResponse, error) {
				return maintCall(a, cmd.Context(), maintv1.MaintenanceServiceClient.ListCampaigns, &maintv1.ListCampaignsRequest{PageToken: tok})
			}, func(all, p *maintv1.ListCampaignsResponse) {
				all.Campaigns, all.NextPageToken = append(all.Campaigns, p.GetCampaigns()...), p.GetNextPageToken()
			})
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tNAME\tSTATE\tDONE\tIN PROGRESS\tFAILED\tELAPSED\tAGE\tREASON")
				for _, c := range resp.GetCampaigns() {
					reason := c.GetStateReason()
					if c.GetWaiting() != "" {
						reason = c.GetWaiting()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\t%s\t%s\n", c.GetId(), dash(c.GetName()), campaignState(c.GetState()),
						c.GetNodesDone(), len(c.GetNodes()), c.GetNodesInProgress(), c.GetNodesFailed(), duration(c.GetElapsed()), age(c.GetCreatedAt(), now), dash(reason))
				}
			})
		},
	}
	listOut.add(list)

	var getOut outputFlag
	var watch bool
	get := &cobra.Command{
		Use:   "get ID [-w]",
		Short: "Show a campaign and each node's progress; -w redraws it until the campaign ends",
		Long: `Show a campaign and each node's progress: its step, how long it has been
in it and in the campaign, and why it failed. With -w (--watch) the view is
redrawn on every change until the campaign ends; then budctl exits 0 if it
completed without a failure, 1 otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := getOut.check(); err != nil {
				return err
			}
			if watch {
				return a.watchCampaign(cmd.Context(), cmd.OutOrStdout(), args[0], &getOut)
			}
			resp, err := maintCall(a, cmd.Context(), maintv1.MaintenanceServiceClient.GetCampaign, &maintv1.GetCampaignRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return getOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				printCampaign(tw, resp.GetCampaign())
			})
		},
	}
	get.Flags().BoolVarP(&watch, "watch", "w", false, "redraw on every change until the campaign ends")
	getOut.add(get)

	change := func(use, short, did string, method func(context.Context, string) (*maintv1.Campaign, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use + " ID",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := method(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "campaign %s %s: %s\n", c.GetId(), did, campaignState(c.GetState()))
				// The failed nodes it holds stay cordoned whatever is done
				// to the campaign: name them, they are the operator's now.
				for _, n := range c.GetNodes() {
					if n.GetStep() == maintv1.NodeStep_NODE_STEP_FAILED && n.GetCordonedByCampaign() {
						fmt.Fprintf(w, "left cordoned, failed: node %s (Kubernetes Node %s): %s\n", n.GetNodeId(), n.GetK8SNode(), n.GetError())
					}
				}
				return nil
			},
		}
	}
	pause := change("pause", "Start no new node; nodes in progress finish", "paused", func(ctx context.Context, id string) (*maintv1.Campaign, error) {
		r, err := maintCall(a, ctx, maintv1.MaintenanceServiceClient.PauseCampaign, &maintv1.PauseCampaignRequest{Id: id})
		return r.GetCampaign(), err
	})
	resume := change("resume", "Start nodes again after a pause, or after the circuit breaker stopped the campaign", "resumed", func(ctx context.Context, id string) (*maintv1.Campaign, error) {
		r, err := maintCall(a, ctx, maintv1.MaintenanceServiceClient.ResumeCampaign, &maintv1.ResumeCampaignRequest{Id: id})
		return r.GetCampaign(), err
	})
	abort := change("abort", "End the campaign: nodes not yet at their task are uncordoned, failed ones stay cordoned", "aborted", func(ctx context.Context, id string) (*maintv1.Campaign, error) {
		r, err := maintCall(a, ctx, maintv1.MaintenanceServiceClient.AbortCampaign, &maintv1.AbortCampaignRequest{Id: id})
		return r.GetCampaign(), err
	})
	cmd.AddCommand(start, list, get, pause, resume, abort)
	return cmd
}

// watchCampaign follows a campaign with WatchCampaign. The table is
// redrawn on every change, and every second on a terminal (the elapsed
// times move); json and yaml print each snapshot as it comes.
func (a *app) watchCampaign(ctx context.Context, w io.Writer, id string, out *outputFlag) error {
	if _, err := a.fleet(); err != nil {
		return err
	}
	stream, err := maintv1.NewMaintenanceServiceClient(a.conn).WatchCampaign(ctx, &maintv1.WatchCampaignRequest{Id: id})
	if err != nil {
		return plainErr(err)
	}
	snaps := make(chan *maintv1.Campaign)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case snaps <- m.GetCampaign():
			case <-ctx.Done():
				return
			}
		}
	}()
	tty := isTerminal(w)
	var last *maintv1.Campaign
	var lastAt time.Time
	draw := func() error {
		if last == nil {
			return nil
		}
		if out.format != "table" {
			return out.print(w, &maintv1.WatchCampaignResponse{Campaign: last}, nil)
		}
		if tty {
			fmt.Fprint(w, "\x1b[H\x1b[2J") // home, clear
		}
		c := advance(last, time.Since(lastAt))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		printCampaign(tw, c)
		if err := tw.Flush(); err != nil {
			return err
		}
		if !tty {
			fmt.Fprintln(w)
		}
		return nil
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c := <-snaps:
			last, lastAt = c, time.Now()
			if err := draw(); err != nil {
				return err
			}
		case <-tick.C:
			if tty && out.format == "table" {
				if err := draw(); err != nil {
					return err
				}
			}
		case err := <-errc:
			if !errors.Is(err, io.EOF) {
				return plainErr(err)
			}
			if last == nil {
				return errors.New("the controller ended the watch without sending the campaign")
			}
			if last.GetState() != maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED || last.GetFailures() > 0 {
				return fmt.Errorf("campaign %s ended %s: %s", last.GetId(), campaignState(last.GetState()), last.GetStateReason())
			}
			return nil
		}
	}
}

// plainErr turns a gRPC status into a plain error, as call does.
func plainErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// advance moves the elapsed times of a snapshot on by d, for redraws
// between snapshots; finished nodes and an ended campaign keep theirs.
func advance(c *maintv1.Campaign, d time.Duration) *maintv1.Campaign {
	d = d.Truncate(time.Second)
	if d <= 0 {
		return c
	}
	add := func(p *durationpb.Duration) *durationpb.Duration {
		if p == nil {
			return nil
		}
		return durationpb.New(p.AsDuration() + d)
	}
	out := proto.Clone(c).(*maintv1.Campaign)
	if c.GetEndedAt() == nil {
		out.Elapsed = add(c.GetElapsed())
	}
	for _, n := range out.GetNodes() {
		if n.GetFinishedAt() == nil {
			n.Elapsed, n.StepElapsed = add(n.GetElapsed()), add(n.GetStepElapsed())
		}
	}
	return out
}

func campaignState(s maintv1.CampaignState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CAMPAIGN_STATE_"))
}

func nodeStep(s maintv1.NodeStep) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STEP_"))
}

func duration(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return d.AsDuration().Round(time.Second).String()
}

// printCampaign shows a campaign and a row per node.
func printCampaign(tw *tabwriter.Writer, c *maintv1.Campaign) {
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", dash(c.GetId()))
	if c.GetName() != "" {
		row("Name", c.GetName())
	}
	row("State", campaignState(c.GetState()))
	if c.GetStateReason() != "" {
		row("Reason", c.GetStateReason())
	}
	if c.GetWaiting() != "" {
		row("Waiting", c.GetWaiting())
	}
	sp := c.GetSpec()
	limits := fmt.Sprintf("max-unavailable %d", sp.GetMaxUnavailable())
	if d := sp.GetPerDomain(); d != nil {
		limits += fmt.Sprintf(", per-domain %s=%d", d.GetLabel(), d.GetMax())
	}
	limits += fmt.Sprintf(", max-failures %d", sp.GetMaxFailures())
	row("Selector", labelString(sp.GetSelector()))
	row("Limits", limits)
	what := []string{"drain " + duration(sp.GetDrainTimeout())}
	if u := sp.GetAgentUpgrade(); u != nil {
		what = []string{fmt.Sprintf("upgrade the agents to %s (rolled back unless connected within %s)", u.GetVersion(), duration(u.GetTimeout()))}
	}
	if sp.GetTaskBytes() > 0 {
		what = append(what, fmt.Sprintf("task %d bytes (sha256 %.12s), timeout %s", sp.GetTaskBytes(), sp.GetTaskSha256(), duration(sp.GetTaskTimeout())))
	}
	if sp.GetReboot() {
		what = append(what, "reboot")
	}
	row("Does", strings.Join(what, ", "))
	if sp.GetWindow() != "" {
		row("Window", sp.GetWindow())
	}
	if c.GetCreatedBy() != "" {
		row("Started by", c.GetCreatedBy())
	}
	row("Elapsed", duration(c.GetElapsed()))
	row("Nodes", fmt.Sprintf("%d done, %d in progress, %d queued, %d failed, %d skipped, of %d",
		c.GetNodesDone(), c.GetNodesInProgress(), c.GetNodesQueued(), c.GetNodesFailed(), c.GetNodesSkipped(), len(c.GetNodes())))
	if len(c.GetFailedNodes()) > 0 {
		row("Failed nodes", strings.Join(c.GetFailedNodes(), ", "))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tKUBERNETES NODE\tDOMAIN\tSTEP\tIN STEP\tELAPSED\tCORDONED\tERROR")
	for _, n := range c.GetNodes() {
		step := nodeStep(n.GetStep())
		if n.GetStep() == maintv1.NodeStep_NODE_STEP_DRAIN && n.GetDrainAttempt() > 1 {
			step += fmt.Sprintf(" (attempt %d)", n.GetDrainAttempt())
		}
		if n.GetVersionAfter() != "" && n.GetVersionAfter() != n.GetVersionBefore() {
			step += fmt.Sprintf(" (%s -> %s)", n.GetVersionBefore(), n.GetVersionAfter())
		}
		cordoned := "-"
		if n.GetCordonedByCampaign() {
			cordoned = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.GetNodeId(), dash(n.GetK8SNode()), dash(n.GetDomain()), step,
			duration(n.GetStepElapsed()), duration(n.GetElapsed()), cordoned, dash(n.GetError()))
	}
}
