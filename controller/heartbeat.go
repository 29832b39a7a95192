package controller

import (
	"context"

	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
)

// heartbeats keeps nodes Ready: each heartbeat moves the node's last-seen
// time, which the grace period runs from. The SIEM status rides on the
// heartbeat because the wire has it there; it is handed on as it arrives.
type heartbeats struct {
	srv        *Server
	siemStatus func(sess *session, st *siemv1.Status)
}

func (*heartbeats) name() string                          { return "heartbeat" }
func (m *heartbeats) handlers() []handler                 { return []handler{on(m.handleHeartbeat)} }
func (*heartbeats) start(context.Context, *session) error { return nil }

func (m *heartbeats) handleHeartbeat(_ context.Context, sess *session, msg *agentv1.ConnectRequest_Heartbeat) error {
	s := m.srv
	s.sawHeartbeat(sess.nodeID)
	s.metrics.heartbeats.Inc()
	if st := msg.Heartbeat.GetSiem(); st != nil {
		m.siemStatus(sess, st)
	}
	return nil
}
