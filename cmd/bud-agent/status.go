package main

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/agent/state"
)

// statusCmd prints this node's enrollment.
func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Print this node's enrollment: node id, controller and certificate expiry (exit 1 when not enrolled)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := state.Open(a.stateDir, time.Second)
			if err != nil {
				return err
			}
			defer db.Close()
			id, err := db.Identity()
			if err != nil {
				return err
			}
			cert, err := x509.ParseCertificate(id.CertDER)
			if err != nil {
				return fmt.Errorf("stored certificate: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node_id: %s\ncontroller: %s\ncertificate_expires: %s\n", id.NodeID, id.Controller, cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
}
