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
	"sigs.k8s.io/yaml"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	machinev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/machine/v1"
	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// machineCall is fleetCall for the MachineService.
func machineCall[Req, Resp any](a *app, ctx context.Context, method func(machinev1.MachineServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	if _, err := a.fleet(); err != nil { // dials once
		var zero Resp
		return zero, err
	}
	c := machinev1.NewMachineServiceClient(a.conn)
	return call(a, ctx, func(ctx context.Context, req Req, opts ...grpc.CallOption) (Resp, error) {
		return method(c, ctx, req, opts...)
	}, req)
}

func (a *app) providersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "providers",
		Short: "See the controller's provider plugins (bud-controller serve --providers FILE)",
	}
	var out outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List providers: version, health and last error (none is started by this)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			resp, err := machineCall(a, cmd.Context(), machinev1.MachineServiceClient.ListProviders, &machinev1.ListProvidersRequest{})
			if err != nil {
				return err
			}
			now := time.Now()
			return out.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tPLUGIN\tVERSION\tHEALTH\tRESTARTS\tLAST ERROR")
				for _, p := range resp.GetProviders() {
					last := "-"
					if p.GetLastError() != "" {
						last = age(p.GetLastErrorAt(), now) + " ago: " + p.GetLastError()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", p.GetName(), dash(p.GetPlugin()), dash(p.GetVersion()), healthName(p.GetHealth()), p.GetRestarts(), last)
				}
			})
		},
	}
	out.add(list)
	cmd.AddCommand(list)
	return cmd
}

func healthName(h machinev1.ProviderHealth) string {
	return strings.ToLower(strings.TrimPrefix(h.String(), "PROVIDER_HEALTH_"))
}

func machineStateName(s machinev1.MachineState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "MACHINE_STATE_"))
}

func powerName(s providerv1.PowerState) string {
	if s == providerv1.PowerState_POWER_STATE_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "POWER_STATE_"))
}

// nodeColumn is a machine's linked node and its status.
func nodeColumn(m *machinev1.Machine) string {
	n := m.GetNode()
	switch {
	case n == nil:
		return "-"
	case n.GetDeleted():
		return n.GetId() + " (deleted)"
	}
	return fmt.Sprintf("%s (%s, %s)", n.GetId(), n.GetHostname(), statusWord(n.GetStatus()))
}

func (a *app) machinesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "machines",
		Short: "Make, enroll, power and delete machines through provider plugins",
		Long: `Each machine gets a single-use join token that its agent enrolls with on first
boot; the machine is then linked to its node ('machines list' shows it).`,
	}

	var provider, specFile, name string
	var count uint32
	var labels []string
	var createOut outputFlag
	create := &cobra.Command{
		Use:   "create --provider NAME [--count N] [--spec FILE] [--name PREFIX]",
		Short: "Ask a provider for machines; each boots and joins the fleet by itself",
		Long: `The spec file is YAML with the provider's own keys (for vSphere: cpus,
memory_mb, disk_gb...), handed to the plugin as JSON. With --count 1 --name is the
machine's name; otherwise names are NAME-1, NAME-2... (NAME defaults to the
provider's). Machines are made one at a time; the command exits 1 if any failed,
and a failed one leaves nothing behind. The call's time limit (--timeout) is 30m
unless set.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := createOut.check(); err != nil {
				return err
			}
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			var spec []byte
			if specFile != "" {
				b, err := os.ReadFile(specFile)
				if err != nil {
					return fmt.Errorf("--spec: %w", err)
				}
				if spec, err = yaml.YAMLToJSON(b); err != nil {
					return fmt.Errorf("--spec %s: %w", specFile, err)
				}
			}
			if !cmd.Flags().Changed("timeout") {
				a.timeout = 30 * time.Minute
			}
			resp, err := machineCall(a, cmd.Context(), machinev1.MachineServiceClient.CreateMachines, &machinev1.CreateMachinesRequest{
				Provider: provider, Count: count, Name: name, Spec: spec, Labels: l,
			})
			if err != nil {
				return err
			}
			if err := createOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				for _, m := range resp.GetMachines() {
					fmt.Fprintf(tw, "machine %s created: %s (%s %s)\n", m.GetId(), m.GetName(), m.GetProvider(), m.GetProviderId())
				}
			}); err != nil {
				return err
			}
			if f := resp.GetFailures(); len(f) > 0 {
				for _, x := range f {
					fmt.Fprintf(cmd.ErrOrStderr(), "machine %s not created: %s\n", x.GetName(), x.GetError())
				}
				return fmt.Errorf("%d of %d machines not created", len(f), len(f)+len(resp.GetMachines()))
			}
			return nil
		},
	}
	create.Flags().StringVar(&provider, "provider", "", "provider name (see 'budctl providers list')")
	create.Flags().Uint32Var(&count, "count", 1, "how many machines")
	create.Flags().StringVar(&specFile, "spec", "", "YAML file with the provider's machine spec")
	create.Flags().StringVar(&name, "name", "", "the machine's name, or the prefix of their names with --count")
	create.Flags().StringArrayVar(&labels, "label", nil, "label k=v for the machines' nodes (repeatable)")
	_ = create.MarkFlagRequired("provider")
	createOut.add(create)

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List machines with their linked node and its status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allPages(func(tok string) (*machinev1.ListMachinesResponse, error) {
				return machineCall(a, cmd.Context(), machinev1.MachineServiceClient.ListMachines, &machinev1.ListMachinesRequest{PageToken: tok})
			}, func(all, p *machinev1.ListMachinesResponse) {
				all.Machines, all.NextPageToken = append(all.Machines, p.GetMachines()...), p.GetNextPageToken()
			})
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tNAME\tPROVIDER\tPROVIDER ID\tSTATE\tPOWER\tADDRESSES\tNODE\tAGE")
				for _, m := range resp.GetMachines() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.GetId(), m.GetName(), m.GetProvider(), dash(m.GetProviderId()),
						machineStateName(m.GetState()), powerName(m.GetPowerState()), dash(strings.Join(m.GetAddresses(), ",")), nodeColumn(m), age(m.GetCreatedAt(), now))
				}
			})
		},
	}
	listOut.add(list)

	var getOut outputFlag
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show one machine, refreshed from its provider",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := getOut.check(); err != nil {
				return err
			}
			resp, err := machineCall(a, cmd.Context(), machinev1.MachineServiceClient.GetMachine, &machinev1.GetMachineRequest{Id: args[0]})
			if err != nil {
				return err
			}
			now := time.Now()
			return getOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				m := resp.GetMachine()
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				row("ID", m.GetId())
				row("Name", m.GetName())
				row("Provider", m.GetProvider()+" "+dash(m.GetProviderId()))
				row("State", machineStateName(m.GetState()))
				if m.GetError() != "" {
					row("Error", m.GetError())
				}
				row("Power", powerName(m.GetPowerState()))
				row("Addresses", dash(strings.Join(m.GetAddresses(), ", ")))
				row("Node", nodeColumn(m))
				row("Labels", labelString(m.GetLabels()))
				row("Spec", dash(string(m.GetSpec())))
				row("Token", m.GetTokenId())
				row("Created", age(m.GetCreatedAt(), now)+" ago by "+dash(m.GetCreatedBy()))
				if resp.GetProviderError() != "" {
					row("Not refreshed", resp.GetProviderError())
				}
			})
		},
	}
	getOut.add(get)

	remove := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a machine at its provider, with its node (refused while the node is in a maintenance campaign)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("timeout") {
				a.timeout = 30 * time.Minute
			}
			if _, err := machineCall(a, cmd.Context(), machinev1.MachineServiceClient.DeleteMachine, &machinev1.DeleteMachineRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "machine %s deleted\n", args[0])
			return nil
		},
	}

	var powerOut outputFlag
	power := &cobra.Command{
		Use:   "power ID on|off|reset|pxe",
		Short: "Power a machine on or off, reset it, or boot it once from the network",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := powerOut.check(); err != nil {
				return err
			}
			action, err := sdk.ParsePowerAction(args[1])
			if err != nil {
				return fmt.Errorf("power action %q: want on, off, reset or pxe", args[1])
			}
			resp, err := machineCall(a, cmd.Context(), machinev1.MachineServiceClient.PowerMachine, &machinev1.PowerMachineRequest{Id: args[0], Action: powerActions[action]})
			if err != nil {
				return err
			}
			return powerOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "machine %s: %s, power %s\n", args[0], action, powerName(resp.GetMachine().GetPowerState()))
			})
		},
	}
	powerOut.add(power)

	cmd.AddCommand(create, list, get, remove, power)
	return cmd
}

var powerActions = map[sdk.PowerAction]providerv1.PowerAction{
	sdk.PowerActionOn:    providerv1.PowerAction_POWER_ACTION_ON,
	sdk.PowerActionOff:   providerv1.PowerAction_POWER_ACTION_OFF,
	sdk.PowerActionReset: providerv1.PowerAction_POWER_ACTION_RESET,
	sdk.PowerActionPXE:   providerv1.PowerAction_POWER_ACTION_PXE,
}
