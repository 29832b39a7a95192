package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/state"
)

// joinCmd enrolls this node with a controller.
func (a *app) joinCmd() *cobra.Command {
	var controllerAddr, token, tokenFile, serverName, hostname string
	join := &cobra.Command{
		Use:   "join",
		Short: "Enroll this node with a controller using a join token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("read --token-file: %w", err)
				}
				token = strings.TrimSpace(string(b))
			}
			if token == "" {
				return errors.New("--token or --token-file is required")
			}
			if controllerAddr == "" {
				return errors.New("--controller is required")
			}
			host := hostname
			if host == "" {
				host, _ = os.Hostname()
			}
			db, err := state.Open(a.stateDir, time.Second)
			if err != nil {
				return err
			}
			defer db.Close()
			id, err := agent.Enroll(cmd.Context(), agent.EnrollOptions{
				Controller: controllerAddr, Token: token, ServerName: serverName,
				Hostname: host, MachineID: inventory.MachineID("/"), State: db,
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled as node %s\n", id)
			return nil
		},
	}
	jf := join.Flags()
	jf.StringVar(&controllerAddr, "controller", "", "controller address, host:port")
	jf.StringVar(&token, "token", "", "join token from 'budctl tokens create'")
	jf.StringVar(&tokenFile, "token-file", "", "read the join token from this file instead")
	jf.StringVar(&serverName, "server-name", "", "name to check in the controller certificate (default: the host in --controller)")
	jf.StringVar(&hostname, "hostname", "", "hostname to enroll as (default: this host's)")
	return join
}
