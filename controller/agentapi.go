package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
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
	// bootIDRe: a kernel boot id is a UUID; anything else is not stored.
	bootIDRe = regexp.MustCompile(`^[0-9A-Za-z-]{1,64}$`)
)

// Enroll turns a join token and a CSR into a node and its certificate.
func (a *AgentAPI) Enroll(ctx context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	s := a.s
	if !s.enrollLimit.allow(peerAddr(ctx)) {
		err := status.Error(codes.ResourceExhausted, "too many enrollment attempts from this address: wait and retry")
		s.refusals.note(ctx, "enroll rate", peerAddr(ctx), err)
		s.metrics.enrollments.WithLabelValues(codes.ResourceExhausted.String()).Inc()
		return nil, err
	}
	resp, err := a.enroll(ctx, req)
	result := "ok"
	if err != nil {
		result = status.Code(err).String()
		// Sampled, with the caller's fields cut and quoted: an
		// unauthenticated caller must not be able to flood the log.
		s.refusals.note(ctx, "enroll", peerAddr(ctx), err, "token_id", quoted(req.GetTokenId()), "hostname", quoted(req.GetHostname()))
	} else {
		s.auditRecord(ctx, "node.enroll", resp.GetNodeId(), "node_id", resp.GetNodeId(), "hostname", req.GetHostname(), "token_id", req.GetTokenId(), "peer", peerAddr(ctx))
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
	s.machines.enrolled(ctx, tok, nodeID)
	return &agentv1.EnrollResponse{
		NodeId:           nodeID,
		CertificateDer:   cert.Raw,
		CaCertificateDer: s.ca.Cert.Raw,
	}, nil
}

func truncate(v string, n int) string {
	if len(v) <= n {
		return v
	}
	return v[:n] + "..."
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
	// The setup's store reads and writes run on a stack that is given
	// back before the session settles into its loops (onFreshStack).
	var sess *session
	var log *slog.Logger
	err := onFreshStack(func() (err error) {
		sess, log, err = a.begin(ctx, stream, id)
		return err
	})
	if sess != nil {
		defer s.closeSession(sess)
	}
	if err != nil {
		return err
	}
	// Two goroutines per session beside gRPC's own: this handler is the
	// stream's only writer (the send loop), and one goroutine starts the
	// modules and then reads the stream. Modules start before any agent
	// message is handled, while the send loop already drains what they
	// queue. The recv goroutine reports at most once; the buffer lets it
	// exit after the handler is gone (its Recv then fails).
	errc := make(chan error, 1)
	go func() {
		if err := onFreshStack(func() error {
			for _, m := range s.modules {
				if err := m.start(sess.ctx, sess); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			errc <- err
			return
		}
		for {
			msg, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			if err := onFreshStack(func() error { return s.handleAgentMessage(sess, msg) }); err != nil {
				errc <- err
				return
			}
		}
	}()
	err = s.sendLoop(sess, stream, errc)
	sess.cancel(context.Canceled)
	log.InfoContext(ctx, "agent disconnected", "reason", err)
	if errors.Is(err, errSessionReplaced) || errors.Is(err, errNodeDeleted) || errors.Is(err, errShuttingDown) {
		return status.Error(codes.Unavailable, err.Error())
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err
	}
	return nil
}

// onFreshStack runs f on a goroutine of its own and waits for it. A
// session's goroutines live as long as the session and spend it parked in
// Recv or a select, a few hundred bytes deep; what they run between
// (store reads and writes, JSON, logging) is many KiB deep, and a stack
// once grown stays grown until GCs shrink it, halving at most once each.
// With thousands of sessions that is most of their stack memory. A
// goroutine that exits gives a grown stack back at once; one start costs
// about a microsecond, little beside the handling of a message.
func onFreshStack(f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return <-done
}

// begin checks a Connect stream's node and hello, opens its session and
// sends the welcome. The session it returns, even with an error, is open
// and the caller closes it.
func (a *AgentAPI) begin(ctx context.Context, stream agentv1.AgentService_ConnectServer, id Identity) (*session, *slog.Logger, error) {
	s := a.s
	node, err := s.store.GetNode(ctx, id.Name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil, status.Errorf(codes.PermissionDenied, "node %s is not enrolled (deleted?): its certificate is revoked; enroll again with a new join token", id.Name)
		}
		return nil, nil, status.Errorf(codes.Internal, "load node: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	hello := first.GetHello()
	if hello == nil {
		return nil, nil, status.Error(codes.InvalidArgument, "the first message of a session must be a hello")
	}
	if hello.GetNodeId() != node.ID {
		return nil, nil, status.Errorf(codes.InvalidArgument, "hello names node %q but the certificate is for %q", hello.GetNodeId(), node.ID)
	}

	sess, err := s.openSession(ctx, node.ID, peerAddr(ctx), truncate(hello.GetAgentVersion(), 128))
	if err != nil {
		return nil, nil, err
	}
	// The node may have been deleted while we waited for its hello; the
	// delete found no session to end then.
	if _, err := s.store.GetNode(ctx, node.ID); errors.Is(err, store.ErrNotFound) {
		return sess, nil, status.Errorf(codes.PermissionDenied, "node %s was deleted: its certificate is revoked; enroll again with a new join token", node.ID)
	}
	log := s.log.With("node_id", node.ID, "hostname", node.Hostname)
	log.InfoContext(ctx, "agent connected", "peer", sess.peer, "agent_version", hello.GetAgentVersion(), "boot_id", truncate(hello.GetBootId(), 64))
	if err := s.recordBootID(ctx, node, hello.GetBootId()); err != nil {
		return sess, nil, err
	}

	// The welcome goes out before the send loop starts, so it is always the
	// first message the agent reads.
	if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HeartbeatIntervalMs:     s.opts.HeartbeatInterval.Milliseconds(),
		FullInventoryIntervalMs: s.opts.FullInventoryInterval.Milliseconds(),
		Controllers:             s.controllers(),
	}}}); err != nil {
		return sess, nil, err
	}
	return sess, log, nil
}

// recordBootID stores the boot id a hello reports, when it is new: the node
// rebooted (or reports it for the first time). A malformed one is logged
// and not stored.
func (s *Server) recordBootID(ctx context.Context, node store.Node, bootID string) error {
	if bootID == "" || bootID == node.BootID {
		return nil
	}
	if !bootIDRe.MatchString(bootID) {
		s.log.WarnContext(ctx, "ignoring an invalid boot id in a hello", "node_id", node.ID, "boot_id", truncate(bootID, 64))
		return nil
	}
	if _, err := s.store.UpdateNode(ctx, node.ID, func(n *store.Node) error {
		n.BootID = bootID
		return nil
	}); err != nil && !errors.Is(err, store.ErrNotFound) {
		return status.Errorf(codes.Internal, "store boot id: %v", err)
	}
	s.nodeEvent(node.ID) // a campaign may wait for this reboot
	return nil
}

// sendLoop is the only writer of the stream after the welcome. It returns
// why the session ended: the session's cause, a failed send, or what the
// recv goroutine reports on errc.
func (s *Server) sendLoop(sess *session, stream agentv1.AgentService_ConnectServer, errc <-chan error) error {
	for {
		select {
		case <-sess.ctx.Done():
			return context.Cause(sess.ctx)
		case err := <-errc:
			return err
		case m := <-sess.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}
