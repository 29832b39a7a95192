package agent

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/agent/session"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
)

// heartbeat keeps the node Ready on the controller. The SIEM status rides
// on it because the wire has it there.
type heartbeat struct {
	now        func() time.Time
	siemStatus func() *siemv1.Status
}

func (*heartbeat) Name() string                { return "heartbeat" }
func (*heartbeat) Handlers() []session.Handler { return nil }

// Run sends one heartbeat at once and then one every interval the welcome
// set; seq starts again at 1 each session.
func (m *heartbeat) Run(ctx context.Context, s *session.Session) error {
	t := time.NewTicker(s.Welcome().HeartbeatInterval)
	defer t.Stop()
	var seq uint64
	for {
		seq++
		if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{Seq: seq, SentAt: timestamppb.New(m.now()), Siem: m.siemStatus()}}}); err != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
