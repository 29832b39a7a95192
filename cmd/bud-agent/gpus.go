package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/gpu"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/internal/cli"
)

func openGPUs(c agent.GPUConfig, hostname string, log *slog.Logger) (gpu.Source, error) {
	backend := c.Backend
	if backend == "" {
		backend = gpu.BackendNVML
	}
	host := hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	opts := gpu.Options{Logger: log, MockEventsPath: c.MockEventsPath, MockSeed: inventory.MachineID("/") + "/" + host}
	if c.IgnoredXIDs != nil {
		opts.IgnoredXIDs = map[uint64]bool{}
		for _, x := range c.IgnoredXIDs {
			opts.IgnoredXIDs[x] = true
		}
	}
	src, err := gpu.Open(backend, opts)
	if err != nil {
		return nil, fmt.Errorf("--gpu-backend: %w", err)
	}
	return src, nil
}

// gpusCmd prints this host's GPU inventory and health once, so the same
// binary can be tried on a GPU machine without a controller.
func gpusCmd() *cobra.Command {
	var backend, output, mockEvents string
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "Print this host's GPU inventory and health once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			log, err := cli.NewLogger(os.Stderr, "text", "warn")
			if err != nil {
				return err
			}
			src, err := openGPUs(agent.GPUConfig{Backend: backend, MockEventsPath: mockEvents}, "", log)
			if err != nil {
				return err
			}
			defer src.Close()
			inv, err := src.Inventory(cmd.Context())
			if err != nil {
				if len(inv.GPUs) == 0 {
					return err
				}
				log.Warn("GPU inventory is partial", "error", err)
			}
			health, err := src.Health(cmd.Context())
			if err != nil {
				return err
			}
			if health == nil {
				health = []gpu.Health{}
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Inventory gpu.Inventory `json:"inventory"`
					Health    []gpu.Health  `json:"health"`
				}{inv, health})
			}
			w := cmd.OutOrStdout()
			if !inv.Available {
				fmt.Fprintf(w, "no GPUs: %s\n", inv.Reason)
				return nil
			}
			fmt.Fprintf(w, "driver %s, CUDA %s, NVML %s\n", inv.DriverVersion, inv.CUDADriverVersion, inv.NVMLVersion)
			states := map[string]gpu.Health{}
			for _, h := range health {
				states[h.UUID] = h
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GPU\tUUID\tPRODUCT\tMEMORY\tPCI\tHEALTH\tREASONS")
			for _, g := range inv.GPUs {
				mem := "-"
				if g.MemoryTotalBytes != nil {
					mem = fmt.Sprintf("%d MiB", *g.MemoryTotalBytes>>20)
				}
				h := states[g.UUID]
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Index, g.UUID, g.Product, mem, g.PCIBusID, h.State, strings.Join(h.Reasons, "; "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&backend, "gpu-backend", gpu.BackendNVML, "GPU backend: "+strings.Join(gpu.Backends(), ", "))
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().StringVar(&mockEvents, "mock-events", "", "file of injected faults for the mock backends")
	return cmd
}
