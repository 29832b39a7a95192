package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bud-ecosystem/budfleet/client"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func loadAdminConfig(t *testing.T, path string) *client.Config {
	t.Helper()
	cfg, err := client.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func saveConfig(t *testing.T, cfg *client.Config, path string) {
	t.Helper()
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
}

// TestForeignClientCertificateRejected: operator credentials from another
// controller's CA get nowhere, nor does a caller without any certificate,
// while the health check stays open to all.
func TestForeignClientCertificateRejected(t *testing.T) {
	t.Parallel()
	c := startController(t)
	dir := t.TempDir()
	otherDir := filepath.Join(dir, "other")
	initDataDir(t, otherDir, c.addr()) // its admin config already points here
	other := loadAdminConfig(t, filepath.Join(otherDir, "admin.budctl.yaml"))
	mine := loadAdminConfig(t, c.adminConfig)

	// 1. Another controller's whole admin config: the client does not trust
	// this server, and this server would not trust the client.
	foreign := filepath.Join(dir, "foreign.yaml")
	saveConfig(t, other, foreign)
	// 2. This controller's CA (so the client trusts the server) with the
	// other controller's admin certificate: only the server can refuse it.
	hybrid := filepath.Join(dir, "hybrid.yaml")
	h := *other
	h.CA = mine.CA
	saveConfig(t, &h, hybrid)

	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{"foreign config", foreign, []string{"authentication handshake failed", "certificate signed by unknown authority"}},
		// Under TLS 1.3 the client finishes its side of the handshake
		// before the server has checked its certificate, so the server's
		// alert can lose the race with the client's first write: the
		// error is then a reset connection.
		{"foreign client certificate", hybrid, []string{"Unavailable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{{"tokens", "create"}, {"nodes", "list"}} {
				stdout, stderr, err := runBudctl(tc.config, args...)
				if err == nil {
					t.Fatalf("budctl %s succeeded with %s:\n%s", strings.Join(args, " "), tc.name, stdout)
				}
				if stdout != "" {
					t.Errorf("budctl %s printed %q on stdout", strings.Join(args, " "), stdout)
				}
				for _, w := range tc.want {
					if !strings.Contains(stderr, w) {
						t.Errorf("budctl %s: error %q does not mention %q", strings.Join(args, " "), strings.TrimSpace(stderr), w)
					}
				}
				if config := tc.config; config == hybrid {
					ok := false
					for _, w := range []string{"tls: unknown certificate authority", "broken pipe", "connection reset by peer"} {
						ok = ok || strings.Contains(stderr, w)
					}
					if !ok {
						t.Errorf("budctl %s: error %q: want the server's TLS alert (unknown certificate authority) or a connection it reset", strings.Join(args, " "), strings.TrimSpace(stderr))
					}
				}
			}
		})
	}
	// Nothing changed.
	if ts, err := c.listTokens(); err != nil || len(ts) != 0 {
		t.Errorf("tokens after the refused calls: %v %v; want none", ts, err)
	}
	if strings.Contains(readLog(c.logPath), "operator action") {
		t.Error("the controller logged an operator action")
	}

	// A raw TLS client without a certificate: the operator API and
	// reflection say Unauthenticated.
	caPath := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, c.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := grpcurl("-cacert", caPath,
		"-import-path", filepath.Join(repoRoot, "proto"), "-proto", "budfleet/fleet/v1/fleet.proto",
		"-d", "{}", c.addr(), "budfleet.fleet.v1.FleetService/ListNodes")
	if err == nil {
		t.Errorf("grpcurl ListNodes without a client certificate succeeded:\n%s", stdout)
	} else if !strings.Contains(stderr, "Unauthenticated") {
		t.Errorf("grpcurl ListNodes without a client certificate: %v\n%s%s; want Unauthenticated", err, stdout, stderr)
	}
	stdout, stderr, err = grpcurl("-cacert", caPath,
		"-import-path", filepath.Join(repoRoot, "proto"), "-proto", "budfleet/fleet/v1/fleet.proto",
		"-d", `{"description": "sneaky"}`, c.addr(), "budfleet.fleet.v1.FleetService/CreateToken")
	if err == nil || !strings.Contains(stderr, "Unauthenticated") {
		t.Errorf("grpcurl CreateToken without a client certificate: %v\n%s%s; want Unauthenticated", err, stdout, stderr)
	}
	stdout, stderr, err = grpcurl("-cacert", caPath, c.addr(), "list")
	if err == nil || !strings.Contains(stdout+stderr, "Unauthenticated") {
		t.Errorf("grpcurl list (reflection) without a client certificate: %v\n%s%s; want Unauthenticated", err, stdout, stderr)
	}
	if ts, err := c.listTokens(); err != nil || len(ts) != 0 {
		t.Errorf("tokens after the unauthenticated calls: %v %v; want none", ts, err)
	}

	// The same kind of client gets a health answer.
	conn := c.dialNoCert(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check without a client certificate: %v %v; want SERVING", resp, err)
	}
	// And the same connection is refused the operator API.
	_, err = fleetv1.NewFleetServiceClient(conn).ListNodes(ctx, &fleetv1.ListNodesRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListNodes without a client certificate: %v; want Unauthenticated", err)
	}
}

// TestGrpcurlWithAdminCredential: the admin credential of admin.budctl.yaml
// works with a stock gRPC tool through server reflection.
func TestGrpcurlWithAdminCredential(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t, "--label", "zone=z1")
	_, tokenID, _ := tokenParts(t, tok)
	a := joinAgent(t, c, tok, "node-grpcurl")

	cfg := loadAdminConfig(t, c.adminConfig)
	caPath, certPath, keyPath := writePEMFiles(t, t.TempDir(), cfg.CA, cfg.Certificate, cfg.Key)
	creds := []string{"-cacert", caPath, "-cert", certPath, "-key", keyPath}

	stdout, stderr, err := grpcurl(append(creds, c.addr(), "list")...)
	if err != nil {
		t.Fatalf("grpcurl list: %v\n%s%s", err, stdout, stderr)
	}
	services := strings.Fields(stdout)
	for _, want := range []string{"budfleet.fleet.v1.FleetService", "budfleet.agent.v1.AgentService", "grpc.health.v1.Health"} {
		found := false
		for _, s := range services {
			found = found || s == want
		}
		if !found {
			t.Errorf("grpcurl list: %q lacks %s", services, want)
		}
	}

	stdout, stderr, err = grpcurl(append(creds, c.addr(), "describe", "budfleet.fleet.v1.FleetService")...)
	if err != nil || !strings.Contains(stdout, "rpc ListNodes") {
		t.Errorf("grpcurl describe FleetService: %v\n%s%s", err, stdout, stderr)
	}

	stdout, stderr, err = grpcurl(append(creds, "-d", "{}", c.addr(), "budfleet.fleet.v1.FleetService/ListNodes")...)
	if err != nil {
		t.Fatalf("grpcurl ListNodes: %v\n%s%s", err, stdout, stderr)
	}
	if !json.Valid([]byte(stdout)) {
		t.Fatalf("grpcurl ListNodes printed no JSON:\n%s", stdout)
	}
	var nodes fleetv1.ListNodesResponse
	if err := protojson.Unmarshal([]byte(stdout), &nodes); err != nil {
		t.Fatalf("grpcurl ListNodes: %v\n%s", err, stdout)
	}
	if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetId() != a.nodeID || nodes.GetNodes()[0].GetLabels()["zone"] != "z1" {
		t.Errorf("grpcurl ListNodes: %v; want node %s with zone=z1", nodes.GetNodes(), a.nodeID)
	}

	stdout, stderr, err = grpcurl(append(creds, "-d", "{}", c.addr(), "budfleet.fleet.v1.FleetService/ListTokens")...)
	if err != nil {
		t.Fatalf("grpcurl ListTokens: %v\n%s%s", err, stdout, stderr)
	}
	var tokens fleetv1.ListTokensResponse
	if err := protojson.Unmarshal([]byte(stdout), &tokens); err != nil {
		t.Fatalf("grpcurl ListTokens: %v\n%s", err, stdout)
	}
	if len(tokens.GetTokens()) != 1 || tokens.GetTokens()[0].GetId() != tokenID || tokens.GetTokens()[0].GetUses() != 1 {
		t.Errorf("grpcurl ListTokens: %v; want token %s with one use", tokens.GetTokens(), tokenID)
	}
}

// TestMalformedEnrollRequests: a hand-made client without a certificate
// sends bad Enroll requests; each is refused with the right code and spends
// nothing, and the token still works afterwards.
func TestMalformedEnrollRequests(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	_, id, secret := tokenParts(t, tok)
	conn := c.dialNoCert(t)
	api := agentv1.NewAgentServiceClient(conn)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	// A CSR whose signature does not match its content.
	tampered := append([]byte(nil), csr...)
	tampered[len(tampered)-5] ^= 0xff

	cases := []struct {
		name string
		req  *agentv1.EnrollRequest
		code codes.Code
	}{
		{"garbage CSR", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: []byte("this is not DER"), Hostname: "node-ok"}, codes.InvalidArgument},
		{"empty CSR", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, Hostname: "node-ok"}, codes.InvalidArgument},
		{"CSR with a bad signature", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: tampered, Hostname: "node-ok"}, codes.InvalidArgument},
		{"2 MiB hostname", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: csr, Hostname: strings.Repeat("a", 2<<20)}, codes.ResourceExhausted},
		{"invalid hostname", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: csr, Hostname: "bad host/name;"}, codes.InvalidArgument},
		{"empty hostname", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: csr}, codes.InvalidArgument},
		{"long hostname", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: csr, Hostname: strings.Repeat("a", 300)}, codes.InvalidArgument},
		{"invalid machine id", &agentv1.EnrollRequest{TokenId: id, TokenSecret: secret, CsrDer: csr, Hostname: "node-ok", MachineId: "../../etc"}, codes.InvalidArgument},
		{"invalid token id", &agentv1.EnrollRequest{TokenId: "../" + id, TokenSecret: secret, CsrDer: csr, Hostname: "node-ok"}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := api.Enroll(ctx, tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("Enroll: %v, %v; want %s", resp, err, tc.code)
			}
			if uses := c.tokenUses(t); uses[id] != 0 {
				t.Errorf("token uses %d after a refused request, want 0", uses[id])
			}
		})
	}
	if ns := c.mustListNodes(t); len(ns) != 0 {
		t.Errorf("%d nodes after refused requests, want none", len(ns))
	}
	// The controller is still up and the token still usable.
	if err := c.health(); err != nil {
		t.Fatalf("controller unhealthy after bad requests: %v", err)
	}
	a := joinAgent(t, c, tok, "node-after-garbage")
	a.start(t)
	a.waitReady(t)
	if uses := c.tokenUses(t); uses[id] != 1 {
		t.Errorf("token uses %d after the good join, want 1", uses[id])
	}
}
