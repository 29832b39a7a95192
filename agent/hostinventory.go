package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/session"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// InventorySource collects the host inventory.
type InventorySource interface {
	Collect(ctx context.Context) (*hostv1.Inventory, error)
}

// hostInventory reports the host's inventory on change, not on every
// heartbeat.
type hostInventory struct {
	source InventorySource
	check  time.Duration
	now    func() time.Time
	log    *slog.Logger
	// collected carries an inventory.collect command's snapshot to the
	// session, to send now; it outlives sessions like the command does.
	collected chan *hostv1.Inventory
}

func (*hostInventory) Name() string                { return "inventory" }
func (*hostInventory) Handlers() []session.Handler { return nil }

// Run sends the inventory at the start of a session, then when it changes,
// and in full every interval the welcome set.
func (m *hostInventory) Run(ctx context.Context, s *session.Session) error {
	fullEvery := s.Welcome().FullInventoryInterval
	t := time.NewTicker(m.check)
	defer t.Stop()
	var last string
	var lastFull time.Time
	for {
		h, err := m.source.Collect(ctx)
		if err != nil && ctx.Err() == nil {
			m.log.Warn("collect inventory", "error", err)
		}
		now := m.now()
		if err == nil && (inventory.Fingerprint(h) != last || now.Sub(lastFull) >= fullEvery) {
			if s.Send(inventoryMessage(h)) != nil {
				return nil
			}
			last, lastFull = inventory.Fingerprint(h), now
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case h := <-m.collected:
			if s.Send(inventoryMessage(h)) != nil {
				return nil
			}
			last, lastFull = inventory.Fingerprint(h), m.now()
		}
	}
}

func inventoryMessage(h *hostv1.Inventory) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Inventory{Inventory: h}}
}

// collectCommand is the inventory.collect command: it collects now and hands
// the snapshot to the session to send.
func (m *hostInventory) collectCommand(ctx context.Context, _ map[string]string) (map[string]string, error) {
	h, err := m.source.Collect(ctx)
	if err != nil {
		return nil, err
	}
	// Replace a queued snapshot rather than block: the newest wins.
	select {
	case <-m.collected:
	default:
	}
	m.collected <- h
	return map[string]string{"hostname": h.Hostname, "fingerprint": inventory.Fingerprint(h)}, nil
}
