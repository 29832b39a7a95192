package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/command"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func commandState(s fleetv1.CommandState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "COMMAND_STATE_"))
}

func (a *app) commandsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "commands", Short: "Queue and inspect node commands"}

	var nodes []string
	var scriptFile, selector string
	var allNodes bool
	var params []string
	var createOut outputFlag
	create := &cobra.Command{
		Use:   "create KIND --node ID... | --selector SEL | --all",
		Short: "Queue a command for a node, or for many at once (kinds: " + strings.Join(command.KindNames(), ", ") + ")",
		Long: `Queue a command. With one --node it is that node's command and its id is
printed. With several --node, a --selector (Kubernetes label selector syntax,
over the nodes' labels) or --all it is a fan-out: one command per chosen node,
queued together as a batch whose id is printed; follow it with
'budctl commands batch ID -w'. A selector that matches no node is refused
and nothing is queued.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := createOut.check(); err != nil {
				return err
			}
			ways := 0
			for _, set := range []bool{len(nodes) > 0, selector != "", allNodes} {
				if set {
					ways++
				}
			}
			if ways != 1 {
				return errors.New("choose the nodes with exactly one of --node, --selector or --all")
			}
			p, err := parseLabels(params)
			if err != nil {
				return err
			}
			if scriptFile != "" {
				if p, err = addScript(p, scriptFile); err != nil {
					return err
				}
			}
			if len(nodes) == 1 {
				resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.CreateCommand, &fleetv1.CreateCommandRequest{NodeId: nodes[0], Kind: args[0], Params: p})
				if err != nil {
					return err
				}
				return createOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, resp.GetCommand().GetId())
				})
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.CreateCommands, &fleetv1.CreateCommandsRequest{
				Kind: args[0], Params: p, NodeIds: nodes, LabelSelector: selector, AllNodes: allNodes,
			})
			if err != nil {
				return err
			}
			return createOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "%s\t%d commands\n", resp.GetBatchId(), resp.GetCount())
			})
		},
	}
	create.Flags().StringArrayVar(&nodes, "node", nil, "node id (repeatable: several make a fan-out)")
	create.Flags().StringVar(&selector, "selector", "", "fan-out: every node whose labels match this label selector (e.g. rack=r1,gpu!=none)")
	create.Flags().BoolVar(&allNodes, "all", false, "fan-out: every enrolled node")
	create.Flags().StringArrayVar(&params, "param", nil, "parameter k=v (repeatable)")
	create.Flags().StringVar(&scriptFile, "script", "", "maintenance.task: the script file, sent base64 as param script (at most 256 KiB)")
	createOut.add(create)

	var batchWatch bool
	var batchOut outputFlag
	batch := &cobra.Command{
		Use:   "batch ID",
		Short: "Count a fan-out's commands by state (-w: until every one has a result)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := batchOut.check(); err != nil {
				return err
			}
			var last string
			for {
				resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.GetCommandBatch, &fleetv1.GetCommandBatchRequest{BatchId: args[0]})
				if err != nil {
					return err
				}
				open := resp.GetPending() + resp.GetDelivered()
				line := fmt.Sprint(resp.GetTotal(), resp.GetPending(), resp.GetDelivered(), resp.GetSucceeded(), resp.GetFailed())
				if !batchWatch || line != last {
					if err := batchOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
						if last == "" {
							fmt.Fprintln(tw, "BATCH\tKIND\tTOTAL\tPENDING\tDELIVERED\tSUCCEEDED\tFAILED")
						}
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", resp.GetBatchId(), resp.GetKind(), resp.GetTotal(), resp.GetPending(), resp.GetDelivered(), resp.GetSucceeded(), resp.GetFailed())
					}); err != nil {
						return err
					}
					last = line
				}
				if !batchWatch || open == 0 {
					if resp.GetFailed() > 0 {
						return fmt.Errorf("%d of %d commands failed (see 'budctl commands list --batch %s')", resp.GetFailed(), resp.GetTotal(), resp.GetBatchId())
					}
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(time.Second):
				}
			}
		},
	}
	batch.Flags().BoolVarP(&batchWatch, "watch", "w", false, "print the counts on every change until no command is pending or delivered")
	batchOut.add(batch)

	var listNode, listBatch string
	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List commands",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allCommands(a, cmd.Context(), listNode, listBatch)
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tNODE\tKIND\tSTATE\tDELIVERIES\tAGE\tMESSAGE")
				for _, c := range resp.GetCommands() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", c.GetId(), c.GetNodeId(), c.GetKind(), commandState(c.GetState()), c.GetDeliveries(), age(c.GetCreatedAt(), now), safe(c.GetMessage()))
				}
			})
		},
	}
	list.Flags().StringVar(&listNode, "node", "", "only this node's commands")
	list.Flags().StringVar(&listBatch, "batch", "", "only the commands of this fan-out")
	listOut.add(list)

	var getOut outputFlag
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show one command and its result",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := getOut.check(); err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.GetCommand, &fleetv1.GetCommandRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return getOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				printCommand(tw, cmd.OutOrStdout(), resp.GetCommand(), time.Now())
			})
		},
	}
	getOut.add(get)
	cmd.AddCommand(create, batch, list, get)
	return cmd
}

// addScript reads a maintenance.task script into the script parameter.
func addScript(p map[string]string, path string) (map[string]string, error) {
	if _, ok := p[command.ParamScript]; ok {
		return nil, fmt.Errorf("give the script either as --script or as --param %s=..., not both", command.ParamScript)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("task script: %w", err)
	}
	if fi.Size() > command.MaxScriptBytes {
		return nil, fmt.Errorf("task script %s is %d bytes; the limit is %d (256 KiB): fetch larger payloads from the script", path, fi.Size(), command.MaxScriptBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("task script: %w", err)
	}
	if p == nil {
		p = map[string]string{}
	}
	p[command.ParamScript] = base64.StdEncoding.EncodeToString(b)
	return p, nil
}

// printCommand shows one command: its fields and one-line outputs as a
// table, then multi-line outputs (a task's stdout and stderr) as blocks,
// and while it runs the tail of what it has streamed.
func printCommand(tw *tabwriter.Writer, w io.Writer, c *fleetv1.Command, now time.Time) {
	fmt.Fprintf(tw, "ID:\t%s\nNode:\t%s\nKind:\t%s\nState:\t%s\nDeliveries:\t%d\nMessage:\t%s\n", c.GetId(), c.GetNodeId(), c.GetKind(), commandState(c.GetState()), c.GetDeliveries(), safe(c.GetMessage()))
	keys := make([]string, 0, len(c.GetOutput()))
	for k := range c.GetOutput() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var blocks []string
	for _, k := range keys {
		v := c.GetOutput()[k]
		if strings.Contains(v, "\n") {
			blocks = append(blocks, k)
			continue
		}
		fmt.Fprintf(tw, "Output %s:\t%s\n", safe(k), safe(v))
	}
	done := c.GetState() == fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || c.GetState() == fleetv1.CommandState_COMMAND_STATE_FAILED
	tail := c.GetOutputTail()
	_, hasStdout := c.GetOutput()["stdout"]
	showTail := tail != nil && (!done || !hasStdout)
	if showTail {
		fmt.Fprintf(tw, "Streamed:\tstdout %d bytes, stderr %d bytes, updated %s ago\n", tail.GetStdoutBytes(), tail.GetStderrBytes(), age(tail.GetUpdatedAt(), now))
	}
	_ = tw.Flush()
	for _, k := range blocks {
		printBlock(w, "Output "+k, c.GetOutput()[k])
	}
	if showTail {
		for _, s := range []struct {
			name, text string
			total      uint64
		}{{"stdout", tail.GetStdout(), tail.GetStdoutBytes()}, {"stderr", tail.GetStderr(), tail.GetStderrBytes()}} {
			if s.text == "" {
				continue
			}
			title := "Streamed " + s.name
			if uint64(len(s.text)) < s.total {
				title += fmt.Sprintf(" (the last %d of %d bytes)", len(s.text), s.total)
			}
			printBlock(w, title, s.text)
		}
	}
}

func printBlock(w io.Writer, title, text string) {
	fmt.Fprintf(w, "%s:\n", title)
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fmt.Fprintf(w, "    %s\n", safe(line))
	}
}
