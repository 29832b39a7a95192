// Package agent is the node agent: it enrolls with a join token, then holds
// one dial-out session with the controller that carries heartbeats,
// inventory, command results and certificate renewals.
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// EnrollOptions configure Enroll.
type EnrollOptions struct {
	Controller string // host:port
	Token      string
	// ServerName is checked in the controller's certificate; by default the
	// host part of Controller.
	ServerName string
	Hostname   string
	MachineID  string
	State      *state.DB
	Timeout    time.Duration
}

// ErrAlreadyEnrolled is returned when the state already holds an identity.
var ErrAlreadyEnrolled = errors.New("agent is already enrolled")

// Enroll exchanges a join token for a node identity and stores it. The
// controller is trusted only if its CA matches the hash in the token; the
// handshake fails before anything secret is sent otherwise.
func Enroll(ctx context.Context, o EnrollOptions) (string, error) {
	if o.State == nil {
		return "", errors.New("enroll: State must be set")
	}
	if id, err := o.State.Identity(); err == nil {
		return id.NodeID, fmt.Errorf("%w as node %s (controller %s): 'bud-agent run' uses it; to join again, stop the agent and use an empty --state-dir", ErrAlreadyEnrolled, id.NodeID, id.Controller)
	}
	tok, err := pki.ParseJoinToken(o.Token)
	if err != nil {
		return "", err
	}
	serverName, err := serverNameFor(o.Controller, o.ServerName)
	if err != nil {
		return "", err
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	key, err := pki.NewKey()
	if err != nil {
		return "", err
	}
	csr, err := pki.NewCSR(key, o.Hostname)
	if err != nil {
		return "", err
	}
	var pin pki.Pin
	conn, err := grpc.NewClient(o.Controller, grpc.WithTransportCredentials(credentials.NewTLS(pki.PinnedTLS(tok.CAHash, serverName, &pin))))
	if err != nil {
		return "", fmt.Errorf("controller address %q: %w", o.Controller, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	resp, err := agentv1.NewAgentServiceClient(conn).Enroll(ctx, &agentv1.EnrollRequest{
		TokenId:     tok.ID,
		TokenSecret: tok.Secret,
		CsrDer:      csr,
		Hostname:    o.Hostname,
		MachineId:   o.MachineID,
	})
	if err != nil {
		// The transport reports a refused handshake only as text; the
		// pin keeps the typed error.
		if perr := pin.Err(); perr != nil {
			return "", fmt.Errorf("enroll with %s: %w", o.Controller, perr)
		}
		return "", fmt.Errorf("enroll with %s: %w", o.Controller, describe(err))
	}
	cert, err := x509.ParseCertificate(resp.GetCertificateDer())
	if err != nil {
		return "", fmt.Errorf("controller returned a bad certificate: %w", err)
	}
	respCA, err := x509.ParseCertificate(resp.GetCaCertificateDer())
	if err != nil || pki.PublicKeyHash(respCA) != tok.CAHash {
		return "", errors.New("controller returned a CA that does not match the join token")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pki.Pool(respCA), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", fmt.Errorf("controller returned a certificate that does not verify: %w", err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return "", err
	}
	if err := o.State.SaveIdentity(state.Identity{
		NodeID:     resp.GetNodeId(),
		Controller: o.Controller,
		ServerName: serverName,
		KeyPEM:     keyPEM,
		CertDER:    cert.Raw,
		CADER:      respCA.Raw,
		Hostname:   o.Hostname,
	}); err != nil {
		return "", fmt.Errorf("save identity: %w", err)
	}
	return resp.GetNodeId(), nil
}

func serverNameFor(addr, override string) (string, error) {
	if override != "" {
		return override, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("controller address %q must be host:port: %w", addr, err)
	}
	return host, nil
}
