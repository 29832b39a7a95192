package controller

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

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
	if err := checkNodeText(msg.Inventory); err != nil {
		// Refused whole: text from a node ends up in terminals and logs.
		s.refusals.note(ctx, "inventory", sess.nodeID, err)
		return nil
	}
	inv := capInventory(msg.Inventory)
	if !hostnameRe.MatchString(inv.Hostname) {
		// Enrollment checked the hostname; a report does not get to
		// bypass that (names end up in terminals and logs).
		s.log.WarnContext(ctx, "ignoring an invalid hostname in an inventory report", "node_id", sess.nodeID, "hostname", truncate(inv.Hostname, 64))
		inv.Hostname = ""
	}
	// Stored at most once per report interval; a flood keeps the latest.
	return s.reports.submit(ctx, sess.nodeID, "inventory", func(ctx context.Context) error {
		now := s.opts.Now()
		// A hostname change must not take another node's name (operators and
		// campaigns address nodes by it).
		var renamedFrom, conflict string
		if inv.Hostname != "" {
			cur, err := s.store.GetNode(ctx, sess.nodeID)
			if err != nil {
				return status.Errorf(codes.Internal, "load node: %v", err)
			}
			if cur.Hostname != inv.Hostname {
				all, err := s.store.ListNodes(ctx)
				if err != nil {
					return status.Errorf(codes.Internal, "list nodes: %v", err)
				}
				for _, o := range all {
					if o.ID != sess.nodeID && strings.EqualFold(o.Hostname, inv.Hostname) {
						conflict = fmt.Sprintf("hostname change to %q refused: node %s has that name", inv.Hostname, o.ID)
						break
					}
				}
				if conflict == "" {
					renamedFrom = cur.Hostname
				}
			}
		}
		if _, err := s.store.UpdateNode(ctx, sess.nodeID, func(n *store.Node) error {
			n.Inventory = inv
			n.InventoryUpdateAt = now
			n.HostnameConflict = conflict
			if conflict != "" {
				n.Inventory.Hostname = n.Hostname
			} else if inv.Hostname != "" {
				n.Hostname = inv.Hostname
			}
			if inv.BootId != "" {
				n.BootID = inv.BootId
			}
			return nil
		}); err != nil {
			return status.Errorf(codes.Internal, "store inventory: %v", err)
		}
		switch {
		case conflict != "":
			s.log.WarnContext(ctx, "node hostname change refused", "node_id", sess.nodeID, "hostname", inv.Hostname, "reason", conflict)
			s.auditRecord(ctx, "node.rename_refused", sess.nodeID, "node_id", sess.nodeID, "hostname", inv.Hostname, "reason", conflict)
		case renamedFrom != "":
			s.log.InfoContext(ctx, "node renamed", "node_id", sess.nodeID, "from", renamedFrom, "to", inv.Hostname)
			s.auditRecord(ctx, "node.rename", sess.nodeID, "node_id", sess.nodeID, "from", renamedFrom, "to", inv.Hostname)
		}
		return nil
	})
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
		if validAddress(ip) {
			inv.IpAddresses = append(inv.IpAddresses, ip)
		}
	}
	return inv
}

// validAddress: an IP address, or one with a prefix length (10.0.0.5/24).
func validAddress(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	_, err := netip.ParsePrefix(s)
	return err == nil
}
