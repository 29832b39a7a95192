// Package inprocess runs the agent and the controller in one test process,
// over real gRPC and mTLS on loopback: both sides may be imported here, and
// only here and in the other suites under test/.
package inprocess

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent"
	"github.com/bud-ecosystem/budfleet/agent/inventory"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeInventory returns a fixed host.
type fakeInventory struct{ host *hostv1.Inventory }

func (f *fakeInventory) Collect(ctx context.Context) (*hostv1.Inventory, error) {
	return f.host, ctx.Err()
}

// eventually polls cond until it reports true or timeout passes; then it
// fails with cond's last description.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, desc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startController runs controller.Serve on 127.0.0.1:0 with a fresh data dir
// and returns the data dir, the bound address and a stop function that
// waits for Serve to return.
func startController(t *testing.T) (string, net.Addr, func()) {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), "controller")
	if err := controller.Init(controller.InitConfig{DataDir: dataDir}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- controller.Serve(ctx, controller.ServeConfig{
			DataDir: dataDir,
			Listen:  "127.0.0.1:0",
			Logger:  discardLogger(),
			Server: controller.Options{
				HeartbeatInterval: 200 * time.Millisecond,
				HeartbeatGrace:    time.Second,
			},
			Ready:       func(g, _ net.Addr) { ready <- g },
			StopTimeout: 5 * time.Second,
		})
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("controller.Serve returned before listening: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("controller did not start listening")
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("controller.Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("controller.Serve did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return dataDir, addr, stop
}

// fleetClient dials the controller's operator API with the admin config
// written by Init.
func fleetClient(t *testing.T, dataDir string, addr net.Addr) fleetv1.FleetServiceClient {
	t.Helper()
	cfg, err := client.Load(filepath.Join(dataDir, controller.AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server = addr.String()
	conn, err := client.Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return fleetv1.NewFleetServiceClient(conn)
}

func TestSessionEndToEnd(t *testing.T) {
	dataDir, addr, stopController := startController(t)
	fleet := fleetClient(t, dataDir, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	tok, err := fleet.CreateToken(ctx, &fleetv1.CreateTokenRequest{Labels: map[string]string{"env": "test"}, MaxUses: 1})
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}

	st, err := state.Open(filepath.Join(t.TempDir(), "agent"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	nodeID, err := agent.Enroll(ctx, agent.EnrollOptions{
		Controller: addr.String(),
		Token:      tok.GetJoinToken(),
		Hostname:   "node-a",
		MachineID:  "0123456789abcdef0123456789abcdef",
		State:      st,
		Timeout:    30 * time.Second,
	})
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	id, err := st.Identity()
	if err != nil || id.NodeID != nodeID || id.Controller != addr.String() || id.ServerName != "127.0.0.1" {
		t.Fatalf("stored identity %+v, %v", id, err)
	}
	// Enrolling again with the same state is refused before dialing.
	if _, err := agent.Enroll(ctx, agent.EnrollOptions{Controller: addr.String(), Token: tok.GetJoinToken(), Hostname: "node-a", State: st}); !errors.Is(err, agent.ErrAlreadyEnrolled) {
		t.Errorf("second Enroll: %v; want ErrAlreadyEnrolled", err)
	}

	host := &hostv1.Inventory{
		Hostname: "node-a", MachineId: "0123456789abcdef0123456789abcdef", Os: "Test OS 1.0", Kernel: "6.1.0-test",
		Architecture: "amd64", CpuModel: "Test CPU", CpuCores: 4, MemoryBytes: 8 << 30,
		IpAddresses: []string{"10.0.0.5", "2001:db8::5"}, AgentVersion: version.Version,
	}
	inv := &fakeInventory{host: host}
	a, err := agent.New(agent.Options{
		State: st, Inventory: inv, Logger: discardLogger(),
		BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second,
		InventoryCheck: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(agentCtx) }()
	defer func() {
		stopAgent()
		select {
		case <-runDone:
		case <-time.After(30 * time.Second):
			t.Error("Agent.Run did not return after cancel")
		}
	}()

	getNode := func() (*fleetv1.Node, error) {
		r, err := fleet.GetNode(ctx, &fleetv1.GetNodeRequest{Id: nodeID})
		return r.GetNode(), err
	}
	eventually(t, 30*time.Second, "node Ready with inventory", func() (bool, string) {
		n, err := getNode()
		if err != nil {
			return false, err.Error()
		}
		return n.GetStatus() == fleetv1.NodeStatus_NODE_STATUS_READY && n.GetConnected() && n.GetInventory() != nil, n.String()
	})
	n, err := getNode()
	if err != nil {
		t.Fatal(err)
	}
	gi := n.GetInventory()
	if gi.GetHostname() != host.Hostname || gi.GetMachineId() != host.MachineId || gi.GetOs() != host.Os || gi.GetKernel() != host.Kernel ||
		gi.GetArchitecture() != host.Architecture || gi.GetCpuModel() != host.CpuModel || gi.GetCpuCores() != host.CpuCores ||
		gi.GetMemoryBytes() != host.MemoryBytes || !slices.Equal(gi.GetIpAddresses(), host.IpAddresses) || gi.GetAgentVersion() != host.AgentVersion {
		t.Errorf("node inventory = %v, want %+v", gi, host)
	}
	if n.GetHostname() != "node-a" || n.GetLabels()["env"] != "test" || n.GetTokenId() != tok.GetToken().GetId() || n.GetRemoteAddress() == "" || n.GetCertificateSerial() == "" {
		t.Errorf("node = %v", n)
	}

	// A queued command runs once and its result comes back.
	cr, err := fleet.CreateCommand(ctx, &fleetv1.CreateCommandRequest{NodeId: nodeID, Kind: command.InventoryCollect})
	if err != nil {
		t.Fatalf("CreateCommand: %v", err)
	}
	cmdID := cr.GetCommand().GetId()
	var got *fleetv1.Command
	eventually(t, 30*time.Second, "command result", func() (bool, string) {
		r, err := fleet.GetCommand(ctx, &fleetv1.GetCommandRequest{Id: cmdID})
		if err != nil {
			return false, err.Error()
		}
		got = r.GetCommand()
		return got.GetState() == fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || got.GetState() == fleetv1.CommandState_COMMAND_STATE_FAILED, got.String()
	})
	if got.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED || got.GetDeliveries() != 1 {
		t.Fatalf("command = %v; want SUCCEEDED with deliveries 1", got)
	}
	if got.GetOutput()["hostname"] != "node-a" || got.GetOutput()["fingerprint"] != inventory.Fingerprint(host) || got.GetFinishedAt() == nil {
		t.Errorf("command output = %v", got.GetOutput())
	}
	rec, err := st.Command(cmdID)
	if err != nil || !rec.Success || rec.Deliveries != 1 {
		t.Errorf("agent's record of the command = %+v, %v", rec, err)
	}

	// An unknown kind cannot be queued at all.
	if _, err := fleet.CreateCommand(ctx, &fleetv1.CreateCommandRequest{NodeId: nodeID, Kind: "shell.exec"}); err == nil || !strings.Contains(err.Error(), "shell.exec") {
		t.Errorf("CreateCommand(shell.exec) = %v", err)
	}

	// The agent stops: the node goes NotReady once the grace has passed.
	stopAgent()
	select {
	case err := <-runDone:
		if err != nil {
			t.Errorf("Agent.Run returned %v on cancel, want nil", err)
		}
		runDone <- nil // for the deferred wait
	case <-time.After(30 * time.Second):
		t.Fatal("Agent.Run did not return after cancel")
	}
	eventually(t, 30*time.Second, "node NotReady and disconnected", func() (bool, string) {
		n, err := getNode()
		if err != nil {
			return false, err.Error()
		}
		return n.GetStatus() == fleetv1.NodeStatus_NODE_STATUS_NOT_READY && !n.GetConnected(), n.String()
	})

	stopController()
}
