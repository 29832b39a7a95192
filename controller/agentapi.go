package controller

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// AgentAPI serves the agent protocol.
type AgentAPI struct {
	agentv1.UnimplementedAgentServiceServer
	s *Server
}

// AgentAPI returns the agent service of s.
func (s *Server) AgentAPI() *AgentAPI { return &AgentAPI{s: s} }

var (
	hostnameRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)
	machineIDRe = regexp.MustCompile(`^[0-9A-Za-z-]{0,64}$`)
)

// Enroll turns a join token and a CSR into a node and its certificate.
func (a *AgentAPI) Enroll(ctx context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	s := a.s
	resp, err := a.enroll(ctx, req)
	result := "ok"
	if err != nil {
		result = status.Code(err).String()
		s.log.WarnContext(ctx, "enrollment refused", "token_id", req.GetTokenId(), "hostname", req.GetHostname(), "peer", peerAddr(ctx), "error", err)
	}
	s.metrics.enrollments.WithLabelValues(result).Inc()
	return resp, err
}

func (a *AgentAPI) enroll(ctx context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	s := a.s
	// Everything that can be checked without the store is checked first, so
	// bad input never spends a token use.
	if !pki.ValidTokenID(req.GetTokenId()) {
		return nil, status.Error(codes.InvalidArgument, "token id must be 12 hex digits")
	}
	if !hostnameRe.MatchString(req.GetHostname()) {
		return nil, status.Errorf(codes.InvalidArgument, "hostname %q is not a valid host name", truncate(req.GetHostname(), 64))
	}
	if !machineIDRe.MatchString(req.GetMachineId()) {
		return nil, status.Error(codes.InvalidArgument, "machine id must be at most 64 letters, digits or dashes")
	}
	if _, err := pki.ParseCSR(req.GetCsrDer()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := s.opts.Now()
	// A cheap read-only check first, so a caller without a valid token
	// costs no signature and no write transaction; store.Enroll checks
	// again atomically.
	if t, err := s.store.GetToken(ctx, req.GetTokenId()); err != nil || !ca.SecretMatches(req.GetTokenSecret(), t.SecretHash) {
		return nil, status.Error(codes.PermissionDenied, "join token is not valid: unknown token or wrong secret")
	} else if err := t.Usable(now); err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	nodeID := uuid.NewString()
	cert, err := s.ca.SignNodeCSR(req.GetCsrDer(), nodeID, now, s.opts.AgentCertTTL)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	node := store.Node{
		ID:            nodeID,
		Hostname:      req.GetHostname(),
		MachineID:     req.GetMachineId(),
		TokenID:       req.GetTokenId(),
		EnrolledAt:    now,
		CertSerial:    cert.SerialNumber.Text(16),
		CertExpiresAt: cert.NotAfter,
	}
	tok, err := s.store.Enroll(ctx, req.GetTokenId(), func(t store.Token) error {
		if !ca.SecretMatches(req.GetTokenSecret(), t.SecretHash) {
			return fmt.Errorf("%w: unknown token or wrong secret", store.ErrTokenInvalid)
		}
		if err := t.Usable(now); err != nil {
			return err
		}
		return nil
	}, node)
	if err != nil {
		if errors.Is(err, store.ErrTokenInvalid) {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		return nil, status.Errorf(codes.Internal, "store enrollment: %v", err)
	}
	s.log.InfoContext(ctx, "node enrolled", "node_id", nodeID, "hostname", node.Hostname, "token_id", tok.ID, "peer", peerAddr(ctx))
	return &agentv1.EnrollResponse{
		NodeId:           nodeID,
		CertificateDer:   cert.Raw,
		CaCertificateDer: s.ca.Cert.Raw,
	}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// Connect runs one agent session.
func (a *AgentAPI) Connect(stream agentv1.AgentService_ConnectServer) error {
	s := a.s
	ctx := stream.Context()
	id, ok := IdentityFrom(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no node identity")
	}
	node, err := s.store.GetNode(ctx, id.Name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return status.Errorf(codes.PermissionDenied, "node %s is not enrolled (deleted?): its certificate is revoked; enroll again with a new join token", id.Name)
		}
		return status.Errorf(codes.Internal, "load node: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "the first message of a session must be a hello")
	}
	if hello.GetNodeId() != node.ID {
		return status.Errorf(codes.InvalidArgument, "hello names node %q but the certificate is for %q", hello.GetNodeId(), node.ID)
	}

	sess, err := s.openSession(ctx, node.ID, peerAddr(ctx))
	if err != nil {
		return err
	}
	defer s.closeSession(sess)
	// The node may have been deleted while we waited for its hello; the
	// delete found no session to end then.
	if _, err := s.store.GetNode(ctx, node.ID); errors.Is(err, store.ErrNotFound) {
		return status.Errorf(codes.PermissionDenied, "node %s was deleted: its certificate is revoked; enroll again with a new join token", node.ID)
	}
	log := s.log.With("node_id", node.ID, "hostname", node.Hostname)
	log.InfoContext(ctx, "agent connected", "peer", sess.peer, "agent_version", hello.GetAgentVersion())

	// The welcome goes out before the send loop starts, so it is always the
	// first message the agent reads.
	if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HeartbeatIntervalMs:     s.opts.HeartbeatInterval.Milliseconds(),
		FullInventoryIntervalMs: s.opts.FullInventoryInterval.Milliseconds(),
	}}}); err != nil {
		return err
	}
	// Both goroutines report once; the buffer lets the loser exit too.
	errc := make(chan error, 2)
	sendDone := make(chan struct{})
	go func() { defer close(sendDone); errc <- s.sendLoop(sess, stream) }()
	// The handler must not return while the send loop may still write to
	// the stream.
	defer func() { sess.cancel(context.Canceled); <-sendDone }()
	sess.wake()
	s.pushSIEM(sess, true)

	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			if err := s.handleAgentMessage(sess, msg); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err = <-errc:
	case <-sess.ctx.Done():
		err = context.Cause(sess.ctx)
	}
	log.InfoContext(ctx, "agent disconnected", "reason", err)
	if errors.Is(err, errSessionReplaced) || errors.Is(err, errNodeDeleted) || errors.Is(err, errShuttingDown) {
		return status.Error(codes.Unavailable, err.Error())
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err
	}
	return nil
}

func (s *Server) handleAgentMessage(sess *session, msg *agentv1.ConnectRequest) error {
	ctx := sess.ctx
	switch m := msg.Msg.(type) {
	case *agentv1.ConnectRequest_Heartbeat:
		s.sawHeartbeat(sess.nodeID)
		s.metrics.heartbeats.Inc()
		if st := m.Heartbeat.GetSiem(); st != nil {
			s.recordSIEMStatus(sess, st)
		}
	case *agentv1.ConnectRequest_Inventory:
		inv := capInventory(m.Inventory)
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
			return nil
		}); err != nil {
			return status.Errorf(codes.Internal, "store inventory: %v", err)
		}
	case *agentv1.ConnectRequest_GpuInventory:
		if err := s.recordGPUInventory(ctx, sess.nodeID, m.GpuInventory); err != nil {
			return status.Errorf(codes.Internal, "store GPU inventory: %v", err)
		}
	case *agentv1.ConnectRequest_GpuHealth:
		if err := s.recordGPUHealth(ctx, sess.nodeID, m.GpuHealth); err != nil {
			return status.Errorf(codes.Internal, "store GPU health: %v", err)
		}
	case *agentv1.ConnectRequest_CommandResult:
		return s.recordResult(ctx, sess, m.CommandResult)
	case *agentv1.ConnectRequest_RenewRequest:
		sess.send(s.renew(ctx, sess.nodeID, m.RenewRequest))
	case *agentv1.ConnectRequest_Hello:
		return status.Error(codes.InvalidArgument, "hello sent twice")
	default:
		return status.Error(codes.InvalidArgument, "unknown message")
	}
	return nil
}

func (s *Server) recordResult(ctx context.Context, sess *session, r *agentv1.CommandResult) error {
	now := s.opts.Now()
	c, err := s.store.UpdateCommand(ctx, r.GetCommandId(), func(c *store.Command) error {
		if c.NodeID != sess.nodeID {
			return fmt.Errorf("%w: command belongs to another node", store.ErrNotFound)
		}
		if c.State.Done() {
			return errAlreadyDone
		}
		c.State = store.CommandFailed
		if r.GetSuccess() {
			c.State = store.CommandSucceeded
		}
		c.Message = r.GetMessage()
		c.Output = r.GetOutput()
		c.FinishedAt = now
		if r.GetFinishedAt() != nil {
			c.FinishedAt = r.GetFinishedAt().AsTime()
		}
		return nil
	})
	switch {
	case errors.Is(err, errAlreadyDone):
		return nil // a duplicate report after a redelivery
	case errors.Is(err, store.ErrNotFound):
		s.log.WarnContext(ctx, "result for an unknown command", "node_id", sess.nodeID, "command_id", r.GetCommandId())
		return nil
	case err != nil:
		return status.Errorf(codes.Internal, "store command result: %v", err)
	}
	s.metrics.cmdLatency.Observe(now.Sub(c.CreatedAt).Seconds())
	s.metrics.cmdResults.WithLabelValues(c.Kind, string(c.State)).Inc()
	s.log.InfoContext(ctx, "command finished", "node_id", sess.nodeID, "command_id", c.ID, "kind", c.Kind, "state", c.State, "message", c.Message)
	return nil
}

var errAlreadyDone = errors.New("command already has a result")

func (s *Server) renew(ctx context.Context, nodeID string, r *agentv1.RenewRequest) *agentv1.ConnectResponse {
	fail := func(err error) *agentv1.ConnectResponse {
		s.log.WarnContext(ctx, "certificate renewal refused", "node_id", nodeID, "error", err)
		return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: &agentv1.RenewResponse{Error: err.Error()}}}
	}
	now := s.opts.Now()
	cert, err := s.ca.SignNodeCSR(r.GetCsrDer(), nodeID, now, s.opts.AgentCertTTL)
	if err != nil {
		return fail(err)
	}
	if _, err := s.store.UpdateNode(ctx, nodeID, func(n *store.Node) error {
		n.CertSerial = cert.SerialNumber.Text(16)
		n.CertExpiresAt = cert.NotAfter
		return nil
	}); err != nil {
		return fail(err)
	}
	s.metrics.renewals.Inc()
	s.log.InfoContext(ctx, "node certificate renewed", "node_id", nodeID, "expires", cert.NotAfter)
	return &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_RenewResponse{RenewResponse: &agentv1.RenewResponse{CertificateDer: cert.Raw}}}
}

// sendLoop is the only writer of the stream: queued messages, and pending
// commands whenever the session is woken.
func (s *Server) sendLoop(sess *session, stream agentv1.AgentService_ConnectServer) error {
	sent := map[string]bool{}
	for {
		select {
		case <-sess.ctx.Done():
			return context.Cause(sess.ctx)
		case m := <-sess.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-sess.wakeC:
			if err := s.deliverPending(sess, stream, sent); err != nil {
				return err
			}
		}
	}
}

func (s *Server) deliverPending(sess *session, stream agentv1.AgentService_ConnectServer, sent map[string]bool) error {
	ctx := sess.ctx
	pending, err := s.store.PendingCommands(ctx, sess.nodeID)
	if err != nil {
		return status.Errorf(codes.Internal, "load pending commands: %v", err)
	}
	for _, c := range pending {
		if sent[c.ID] {
			continue
		}
		now := s.opts.Now()
		// Marked delivered before sending: a crash in between shows as one
		// more delivery than happened, never as a command that was lost.
		c, err = s.store.UpdateCommand(ctx, c.ID, func(c *store.Command) error {
			c.Deliveries++
			c.DeliveredAt = now
			if c.State == store.CommandPending {
				c.State = store.CommandDelivered
			}
			return nil
		})
		if err != nil {
			return status.Errorf(codes.Internal, "mark command delivered: %v", err)
		}
		if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Command{Command: &agentv1.Command{
			Id:        c.ID,
			Kind:      c.Kind,
			Params:    c.Params,
			CreatedAt: timestamppb.New(c.CreatedAt),
		}}}); err != nil {
			return err
		}
		sent[c.ID] = true
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
