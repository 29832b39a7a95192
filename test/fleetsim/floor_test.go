package fleetsim

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bud-ecosystem/budfleet/pki"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// TestFloorStreamsOverMutualTLS runs the floor's server and clients over
// real TLS on loopback: every stream arrives and heartbeats, a client
// without a certificate of the floor's CA is refused, and the PKI made on
// the first load is the one loaded again.
func TestFloorStreamsOverMutualTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := LoadFloorPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadFloorPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CA.Equal(p.CA) {
		t.Fatal("a second LoadFloorPKI made a new CA")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- ServeFloor(ctx, lis, mlis, p) }()
	clients := make(chan error, 1)
	cctx, stopClients := context.WithCancel(ctx)
	go func() {
		clients <- RunFloorClients(cctx, FloorClientOptions{Server: lis.Addr().String(), PKI: p, Count: 5, Heartbeat: 100 * time.Millisecond})
	}()

	url := "http://" + mlis.Addr().String() + "/metrics"
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := scrapeMetrics(url)
		if err == nil && m["floor_streams"] == 5 && m["floor_heartbeats_total"] >= 15 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("floor metrics after 30s: %v (err %v); want 5 streams and 15 heartbeats", m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The floor's P3: one command to every stream, each answered once.
	resp, err := http.Post("http://"+mlis.Addr().String()+"/fanout", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var fan FanoutResult
	err = json.NewDecoder(resp.Body).Decode(&fan)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fanout: %s, %v", resp.Status, err)
	}
	if fan.Sent != 5 || len(fan.LatencyNS) != 5 {
		t.Fatalf("fanout sent %d commands and timed %d results, want 5 and 5", fan.Sent, len(fan.LatencyNS))
	}
	for _, ns := range fan.LatencyNS {
		if ns <= 0 {
			t.Fatalf("fanout latency %d ns", ns)
		}
	}

	// No client certificate: the handshake is refused.
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(p.CA, nil, "127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(sctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if err == nil {
		t.Fatal("a client without a certificate opened a floor stream")
	}

	stopClients()
	if err := <-clients; err != nil {
		t.Fatalf("RunFloorClients: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("ServeFloor: %v", err)
	}
}
