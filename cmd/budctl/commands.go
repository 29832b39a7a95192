package main

import (
	"encoding/base64"
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

	var node, scriptFile string
	var params []string
	var createOut outputFlag
	create := &cobra.Command{
		Use:   "create KIND --node ID",
		Short: "Queue a command for a node (kinds: " + strings.Join(command.KindNames(), ", ") + ")",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := createOut.check(); err != nil {
				return err
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
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.CreateCommand, &fleetv1.CreateCommandRequest{NodeId: node, Kind: args[0], Params: p})
			if err != nil {
				return err
			}
			return createOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, resp.GetCommand().GetId())
			})
		},
	}
	create.Flags().StringVar(&node, "node", "", "node id")
	create.Flags().StringArrayVar(&params, "param", nil, "parameter k=v (repeatable)")
	create.Flags().StringVar(&scriptFile, "script", "", "maintenance.task: the script file, sent base64 as param script (at most 256 KiB)")
	_ = create.MarkFlagRequired("node")
	createOut.add(create)

	var listNode string
	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List commands",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allCommands(a, cmd.Context(), listNode)
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
	cmd.AddCommand(create, list, get)
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
