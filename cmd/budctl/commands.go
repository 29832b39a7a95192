package main

import (
	"fmt"
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

	var node string
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
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.ListCommands, &fleetv1.ListCommandsRequest{NodeId: listNode})
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tNODE\tKIND\tSTATE\tDELIVERIES\tAGE\tMESSAGE")
				for _, c := range resp.GetCommands() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", c.GetId(), c.GetNodeId(), c.GetKind(), commandState(c.GetState()), c.GetDeliveries(), age(c.GetCreatedAt(), now), c.GetMessage())
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
				c := resp.GetCommand()
				fmt.Fprintf(tw, "ID:\t%s\nNode:\t%s\nKind:\t%s\nState:\t%s\nDeliveries:\t%d\nMessage:\t%s\n", c.GetId(), c.GetNodeId(), c.GetKind(), commandState(c.GetState()), c.GetDeliveries(), c.GetMessage())
				for k, v := range c.GetOutput() {
					fmt.Fprintf(tw, "Output %s:\t%s\n", k, v)
				}
			})
		},
	}
	getOut.add(get)
	cmd.AddCommand(create, list, get)
	return cmd
}
