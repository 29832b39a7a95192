package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/pki"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// parseTTL reads a duration that may also be given in days ("90d").
func parseTTL(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("--ttl %q: want a positive number of days (90d) or a duration (36h)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--ttl %q: want a positive number of days (90d) or a duration (36h)", s)
	}
	return d, nil
}

func (a *app) operatorsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "operators", Short: "Issue, list, renew and revoke operator credentials (roles: " + strings.Join(pki.Roles, ", ") + ")"}

	var role, ttlFlag, out string
	issue := &cobra.Command{
		Use:   "issue NAME --role ROLE -o FILE",
		Short: "Issue an operator credential and write a ready budctl config (the key is made here; only a CSR is sent)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("-o FILE is required: the budctl config to write")
			}
			if !pki.ValidRole(role) {
				return fmt.Errorf("--role %q: one of %s", role, strings.Join(pki.Roles, ", "))
			}
			ttl, err := parseTTL(ttlFlag)
			if err != nil {
				return err
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s exists: refusing to overwrite a credential", out)
			}
			key, err := pki.NewKey()
			if err != nil {
				return err
			}
			csr, err := pki.NewCSR(key, args[0])
			if err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.IssueOperator, &fleetv1.IssueOperatorRequest{
				Name: args[0], Role: role, Ttl: durationpb.New(ttl), Csr: csr,
			})
			if err != nil {
				return err
			}
			keyPEM, err := pki.EncodeKey(key)
			if err != nil {
				return err
			}
			me, err := client.Load(a.configPath)
			if err != nil {
				return err
			}
			server := me.Server
			if a.server != "" {
				server = a.server
			}
			bc := client.Config{Server: server, ServerName: me.ServerName, CA: resp.GetCa(), Certificate: resp.GetCertificate(), Key: string(keyPEM)}
			if err := bc.Save(out); err != nil {
				return err
			}
			o := resp.GetOperator()
			fmt.Fprintf(cmd.OutOrStdout(), "operator %s (%s) issued, expires %s: budctl config written to %s (mode 0600)\n",
				o.GetName(), o.GetRole(), o.GetExpiresAt().AsTime().UTC().Format(time.RFC3339), out)
			return nil
		},
	}
	issue.Flags().StringVar(&role, "role", "", "role: "+strings.Join(pki.Roles, ", "))
	issue.Flags().StringVar(&ttlFlag, "ttl", "90d", "lifetime (days as 90d, or a duration); at most 365d")
	issue.Flags().StringVarP(&out, "output-file", "o", "", "budctl config file to write (refused when it exists)")

	var listOut outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List operator credentials",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listOut.check(); err != nil {
				return err
			}
			resp, err := allPages(func(tok string) (*fleetv1.ListOperatorsResponse, error) {
				return fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.ListOperators, &fleetv1.ListOperatorsRequest{PageToken: tok})
			}, func(all, p *fleetv1.ListOperatorsResponse) {
				all.Operators, all.NextPageToken = append(all.Operators, p.GetOperators()...), p.GetNextPageToken()
			})
			if err != nil {
				return err
			}
			now := time.Now()
			return listOut.print(cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tROLE\tSTATE\tEXPIRES\tSERIAL")
				for _, o := range resp.GetOperators() {
					st := "valid"
					switch {
					case o.GetRevoked():
						st = "revoked"
					case !o.GetExpiresAt().AsTime().After(now):
						st = "expired"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", safe(o.GetName()), safe(o.GetRole()), st, age(o.GetExpiresAt(), now), o.GetSerial())
				}
			})
		},
	}
	listOut.add(list)

	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an operator: its certificates are refused from the next call on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.RevokeOperator, &fleetv1.RevokeOperatorRequest{Name: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "operator %s revoked\n", args[0])
			return nil
		},
	}

	var rotate bool
	renew := &cobra.Command{
		Use:   "renew",
		Short: "Renew this config's own certificate before it expires (same name and role) and rewrite the config",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			me, err := client.Load(a.configPath)
			if err != nil {
				return err
			}
			key, err := pki.DecodeKey([]byte(me.Key))
			if err != nil {
				return fmt.Errorf("%s: key: %w", a.configPath, err)
			}
			if rotate {
				if key, err = pki.NewKey(); err != nil {
					return err
				}
			}
			csr, err := pki.NewCSR(key, "operator")
			if err != nil {
				return err
			}
			resp, err := fleetCall(a, cmd.Context(), fleetv1.FleetServiceClient.RenewOperator, &fleetv1.RenewOperatorRequest{Csr: csr, RotateKey: rotate})
			if err != nil {
				return err
			}
			keyPEM, err := pki.EncodeKey(key)
			if err != nil {
				return err
			}
			me.Certificate, me.Key = resp.GetCertificate(), string(keyPEM)
			if err := me.Save(a.configPath); err != nil {
				return fmt.Errorf("the controller renewed the certificate but %s could not be rewritten (the old one works for a few minutes more): %w", a.configPath, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "renewed: expires %s\n", resp.GetOperator().GetExpiresAt().AsTime().UTC().Format(time.RFC3339))
			return nil
		},
	}
	renew.Flags().BoolVar(&rotate, "rotate-key", false, "make a new key as well (otherwise the key stays)")
	cmd.AddCommand(issue, list, revoke, renew)
	return cmd
}
