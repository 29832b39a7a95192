// Package transport opens the agent's Connect streams: GRPC to the
// controller over mutual TLS, Fake in memory for tests.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
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

// streamWindowBytes is the agent's flow-control window per stream.
const streamWindowBytes = 4 << 20

// FlowControl is the agent's HTTP/2 flow control toward the controller:
// static windows. grpc-go's dynamic ones answer every data frame received
// while no BDP ping is out with a window update and a ping, so each
// command the controller sends cost a ping round trip. 4 MiB a stream
// keeps an artifact download's pipe full at 400 MB/s over a 10 ms round
// trip. The artifact fetcher's benchmark dials with these too.
func FlowControl() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithStaticStreamWindowSize(streamWindowBytes),
		grpc.WithStaticConnWindowSize(2 * streamWindowBytes),
	}
}

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

	// learned is the controller set of the last welcome; order is the
	// candidates in the random order being tried, next the one to try.
	learned []string
	order   []string
	next    int
}

// Learn takes the controller set a welcome named (several controllers on
// one store): later connects try those and the configured address in a
// random order, each failed or ended session moving on to the next.
func (g *GRPC) Learn(addrs []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if slices.Equal(addrs, g.learned) {
		return
	}
	g.learned = slices.Clone(addrs)
	g.order = nil
}

// candidates is the configured address (or those, comma-separated) and the
// learned ones, each once.
func (g *GRPC) candidates(stored string) []string {
	base := stored
	if g.Controller != "" {
		base = g.Controller
	}
	var out []string
	for _, a := range append(strings.Split(base, ","), g.learned...) {
		if a = strings.TrimSpace(a); a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// pick returns the next controller address to dial.
func (g *GRPC) pick(stored string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.candidates(stored)
	switch len(c) {
	case 0:
		return stored
	case 1:
		return c[0]
	}
	if g.order == nil || g.next >= len(g.order) || !sameSet(g.order, c) {
		last := ""
		if g.order != nil && g.next > 0 && g.next <= len(g.order) {
			last = g.order[g.next-1]
		}
		g.order = slices.Clone(c)
		rand.Shuffle(len(g.order), func(i, j int) { g.order[i], g.order[j] = g.order[j], g.order[i] })
		if g.order[0] == last { // never the one just left first again
			g.order[0], g.order[len(g.order)-1] = g.order[len(g.order)-1], g.order[0]
		}
		g.next = 0
	}
	a := g.order[g.next]
	g.next++
	return a
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
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
	addr := g.pick(id.Controller)
	serverName := id.ServerName
	if g.ServerName != "" {
		serverName = g.ServerName
	} else if addr != id.Controller || g.Controller != "" {
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
	return grpc.NewClient(addr, append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	}, FlowControl()...)...)
}
