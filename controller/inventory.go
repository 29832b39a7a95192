package controller

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// hostInventory stores the host inventory nodes report.
type hostInventory struct{ srv *Server }

func (*hostInventory) name() string                          { return "inventory" }
func (m *hostInventory) handlers() []handler                 { return []handler{on(m.handleInventory)} }
func (*hostInventory) start(context.Context, *session) error { return nil }

func (m *hostInventory) handleInventory(ctx context.Context, sess *session, msg *agentv1.ConnectRequest_Inventory) error {
	s := m.srv
	inv := capInventory(msg.Inventory)
	if !hostnameRe.MatchString(inv.Hostname) {
		// Enrollment checked the hostname; a report does not get to
		// bypass that (names end up in terminals and logs).
		s.log.WarnContext(ctx, "ignoring an invalid hostname in an inventory report", "node_id", sess.nodeID, "hostname", truncate(inv.Hostname, 64))
		inv.Hostname = ""
	}
	now := s.opts.Now()
	if _, err := s.store.UpdateNode(ctx, sess.nodeID, func(n *store.Node) error {
		n.Inventory = inv
		n.InventoryUpdateAt = now
		if inv.Hostname != "" {
			n.Hostname = inv.Hostname
		}
		if inv.BootId != "" {
			n.BootID = inv.BootId
		}
		return nil
	}); err != nil {
		return status.Errorf(codes.Internal, "store inventory: %v", err)
	}
	return nil
}

// capInventory bounds what a node's report may store: an inventory is a few
// KiB, whatever the agent sends.
func capInventory(p *hostv1.Inventory) *hostv1.Inventory {
	inv := &hostv1.Inventory{
		Hostname:     p.GetHostname(),
		MachineId:    p.GetMachineId(),
		Os:           p.GetOs(),
		Kernel:       p.GetKernel(),
		Architecture: p.GetArchitecture(),
		CpuModel:     p.GetCpuModel(),
		CpuCores:     p.GetCpuCores(),
		MemoryBytes:  p.GetMemoryBytes(),
		AgentVersion: p.GetAgentVersion(),
	}
	if bootIDRe.MatchString(p.GetBootId()) {
		inv.BootId = p.GetBootId()
	}
	for _, f := range []*string{&inv.MachineId, &inv.Os, &inv.Kernel, &inv.Architecture, &inv.CpuModel, &inv.AgentVersion} {
		*f = truncate(*f, 256)
	}
	ips := p.GetIpAddresses()
	if len(ips) > 64 {
		ips = ips[:64]
	}
	for _, ip := range ips {
		inv.IpAddresses = append(inv.IpAddresses, truncate(ip, 64))
	}
	return inv
}
