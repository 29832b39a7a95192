// Package transport opens the agent's Connect streams: GRPC to the
// controller over mutual TLS, Fake in memory for tests.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// ErrCertExpired means the node's certificate expired: the controller will
// refuse the node until it joins again.
var ErrCertExpired = errors.New("certificate expired")

// GRPC dials the controller with the identity stored at enrollment. It reads
// the identity on every Connect: a renewal replaces the certificate while
// the agent runs.
type GRPC struct {
	State *state.DB
	// Controller and ServerName override what was stored at enrollment.
	Controller string
	ServerName string
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// The open session's connection, which Conn hands to the agent's other
	// calls; changed is closed (and replaced) when it is set.
	mu      sync.Mutex
	conn    *grpc.ClientConn
	changed chan struct{}
}

var _ session.Transport = (*GRPC)(nil)

// Connect dials and opens one Connect stream.
func (g *GRPC) Connect(ctx context.Context) (session.Stream, error) {
	conn, err := g.dial()
	if err != nil {
		return nil, err
	}
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		conn.Close()
		return nil, err
	}
	g.setConn(conn)
	return grpcStream{stream, conn, g}, nil
}

type grpcStream struct {
	agentv1.AgentService_ConnectClient
	conn *grpc.ClientConn
	g    *GRPC
}

func (s grpcStream) Close() error {
	s.g.mu.Lock()
	if s.g.conn == s.conn {
		s.g.conn = nil
	}
	s.g.mu.Unlock()
	return s.conn.Close()
}

func (g *GRPC) setConn(conn *grpc.ClientConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conn = conn
	if g.changed != nil {
		close(g.changed)
	}
	g.changed = make(chan struct{})
}

// Conn returns the connection of the open session, waiting until one is
// open or ctx ends: the agent's other calls to the controller (artifact
// fetches) share the session's mutual-TLS connection rather than dial
// their own. The connection closes with its session; a call cut by that
// takes Conn again for the next session's.
func (g *GRPC) Conn(ctx context.Context) (grpc.ClientConnInterface, error) {
	for {
		g.mu.Lock()
		conn := g.conn
		if g.changed == nil {
			g.changed = make(chan struct{})
		}
		changed := g.changed
		g.mu.Unlock()
		if conn != nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no session with the controller: %w", ctx.Err())
		case <-changed:
		}
	}
}

func (g *GRPC) dial() (*grpc.ClientConn, error) {
	id, err := g.State.Identity()
	if err != nil {
		return nil, err
	}
	addr := id.Controller
	if g.Controller != "" {
		addr = g.Controller
	}
	serverName := id.ServerName
	if g.ServerName != "" {
		serverName = g.ServerName
	} else if g.Controller != "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("controller address %q must be host:port: %w", addr, err)
		}
		serverName = host
	}
	key, err := pki.DecodeKey(id.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("stored key: %w", err)
	}
	cert, err := x509.ParseCertificate(id.CertDER)
	if err != nil {
		return nil, fmt.Errorf("stored certificate: %w", err)
	}
	now := time.Now
	if g.Now != nil {
		now = g.Now
	}
	if now().After(cert.NotAfter) {
		return nil, fmt.Errorf("%w: the node certificate expired at %s (the agent was offline longer than its lifetime); join again with a new token and an empty --state-dir", ErrCertExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	ca, err := x509.ParseCertificate(id.CADER)
	if err != nil {
		return nil, fmt.Errorf("stored CA: %w", err)
	}
	tc := pki.ClientTLS(ca, &tls.Certificate{Certificate: [][]byte{id.CertDER}, PrivateKey: key, Leaf: cert}, serverName)
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	)
}
