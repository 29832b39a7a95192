package main

import (
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func sortStrings(s []string) { sort.Strings(s) }

func (a *app) tokensCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Manage join tokens"}

	var ttl time.Duration
	var uses uint32
	var labels []string
	var desc string
	create := &cobra.Command{
		Use:   "create",
		Short: "Mint a join token and print it alone on stdout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.CreateToken, &fleetv1.CreateTokenRequest{
				Ttl: durationpb.New(ttl), MaxUses: uses, Labels: l, Description: desc,
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetJoinToken())
			if uses == 1 {
				fmt.Fprintln(cmd.ErrOrStderr(), "single-use token (one node may join with it); for more nodes mint one with --uses N, or --uses 0 for unlimited")
			}
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	create.Flags().Uint32Var(&uses, "uses", 1, "how many nodes may join with it (default a single one; 0: unlimited)")
	create.Flags().StringArrayVar(&labels, "label", nil, "label k=v applied to nodes that join with it (repeatable)")
	create.Flags().StringVar(&desc, "description", "", "free text shown in 'tokens list'")

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allPages(func(tok string) (*fleetv1.ListTokensResponse, error) {
				return fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.ListTokens, &fleetv1.ListTokensRequest{PageToken: tok})
			}, func(all, p *fleetv1.ListTokensResponse) {
				all.Tokens, all.NextPageToken = append(all.Tokens, p.GetTokens()...), p.GetNextPageToken()
			})
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tSTATE\tUSES\tEXPIRES\tLABELS\tDESCRIPTION")
				for _, t := range resp.GetTokens() {
					st := "valid"
					switch {
					case t.GetRevoked():
						st = "revoked"
					case !t.GetExpiresAt().AsTime().After(now):
						st = "expired"
					case t.GetMaxUses() > 0 && t.GetUses() >= t.GetMaxUses():
						st = "used-up"
					}
					max := "∞"
					if t.GetMaxUses() > 0 {
						max = fmt.Sprint(t.GetMaxUses())
					}
					fmt.Fprintf(tw, "%s\t%s\t%d/%s\t%s\t%s\t%s\n", t.GetId(), st, t.GetUses(), max, age(t.GetExpiresAt(), now), labelString(t.GetLabels()), t.GetDescription())
				}
			})
		},
	}
	listOut.add(list)

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token (nodes it enrolled stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.RevokeToken, &fleetv1.RevokeTokenRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
