package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestHappyPath: init, serve, mint a labelled token, join, run, and look at
// the node every way budctl can show it.
func TestHappyPath(t *testing.T) {
	t.Parallel()
	c := startController(t)

	tok := c.createToken(t, "--label", "rack=r1", "--description", "e2e happy path")
	caHash, tokenID, _ := tokenParts(t, tok)
	if caHash != c.caHash {
		t.Errorf("token CA hash %s; 'bud-controller init' printed %s", caHash, c.caHash)
	}

	a := joinAgent(t, c, tok, "node-happy-1")
	a.start(t)
	a.waitReady(t)

	// The inventory arrives right after the session opens.
	var n *fleetv1.Node
	eventually(t, 10*time.Second, func() error {
		ns, err := c.listNodes()
		if err != nil {
			return err
		}
		if len(ns) != 1 {
			return fmt.Errorf("%d nodes listed, want 1", len(ns))
		}
		n = ns[0]
		if n.GetInventory() == nil {
			return fmt.Errorf("node %s has no inventory yet", n.GetId())
		}
		return nil
	})
	if n.GetId() != a.nodeID {
		t.Errorf("listed node id %s; join printed %s", n.GetId(), a.nodeID)
	}
	if n.GetHostname() != a.hostname {
		t.Errorf("hostname %q, want %q", n.GetHostname(), a.hostname)
	}
	if n.GetStatus() != fleetv1.NodeStatus_NODE_STATUS_READY || !n.GetConnected() {
		t.Errorf("status %s connected %v, want READY and connected", n.GetStatus(), n.GetConnected())
	}
	if got := n.GetLabels(); len(got) != 1 || got["rack"] != "r1" {
		t.Errorf("labels %v, want rack=r1 from the token", got)
	}
	if n.GetTokenId() != tokenID {
		t.Errorf("tokenId %q, want %q", n.GetTokenId(), tokenID)
	}
	inv := n.GetInventory()
	if inv.GetHostname() != a.hostname {
		t.Errorf("inventory hostname %q, want %q", inv.GetHostname(), a.hostname)
	}
	if inv.GetKernel() == "" {
		t.Error("inventory has no kernel")
	}
	if inv.GetMemoryBytes() == 0 {
		t.Error("inventory has no memoryBytes")
	}
	if n.GetCertificateSerial() == "" || n.GetCertificateExpiresAt() == nil {
		t.Errorf("certificate serial %q expires %v: want both set", n.GetCertificateSerial(), n.GetCertificateExpiresAt())
	}

	// nodes get, JSON and YAML.
	got := c.mustGetNode(t, a.nodeID)
	if got.GetId() != a.nodeID || got.GetHostname() != a.hostname {
		t.Errorf("nodes get -o json: id %s hostname %s", got.GetId(), got.GetHostname())
	}
	y := c.mustBudctl(t, "nodes", "get", a.nodeID, "-o", "yaml")
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("nodes get -o yaml is not YAML: %v\n%s", err, y)
	}
	var gy fleetv1.GetNodeResponse
	if err := protojson.Unmarshal(j, &gy); err != nil {
		t.Fatalf("nodes get -o yaml is not a GetNodeResponse: %v\n%s", err, y)
	}
	if gy.GetNode().GetId() != a.nodeID || gy.GetNode().GetHostname() != a.hostname || gy.GetNode().GetLabels()["rack"] != "r1" {
		t.Errorf("nodes get -o yaml: %v", gy.GetNode())
	}

	// The table: a header and one row whose STATUS column says Ready.
	table := c.mustBudctl(t, "nodes", "list", "-o", "table")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("nodes list -o table:\n%s\nwant a header and one row", table)
	}
	row := strings.Fields(lines[1])
	if len(row) < 3 || row[0] != a.nodeID || row[1] != a.hostname || row[2] != "Ready" {
		t.Errorf("nodes list -o table row %q: want id, hostname %s, status Ready", lines[1], a.hostname)
	}
	// The default output is the table too.
	if def := c.mustBudctl(t, "nodes", "list"); !strings.Contains(def, a.hostname) || !strings.Contains(def, "Ready") {
		t.Errorf("nodes list (default output):\n%s", def)
	}
	if tbl := c.mustBudctl(t, "nodes", "get", a.nodeID); !strings.Contains(tbl, a.hostname) || !strings.Contains(tbl, "Ready") || !strings.Contains(tbl, "rack=r1") {
		t.Errorf("nodes get (table):\n%s", tbl)
	}

	// The token was used once.
	ts, err := c.listTokens()
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].GetId() != tokenID || ts[0].GetUses() != 1 || ts[0].GetLabels()["rack"] != "r1" || ts[0].GetDescription() != "e2e happy path" {
		t.Errorf("tokens list -o json: %v; want token %s with uses 1, label rack=r1", ts, tokenID)
	}
	if tbl := c.mustBudctl(t, "tokens", "list"); !strings.Contains(tbl, tokenID) || !strings.Contains(tbl, "1/∞") {
		t.Errorf("tokens list (table):\n%s", tbl)
	}

	// An unknown output format is refused before anything is called.
	for _, args := range [][]string{{"nodes", "list"}, {"nodes", "get", a.nodeID}, {"tokens", "list"}} {
		stdout, stderr, err := c.budctl(append(args, "-o", "xml")...)
		if err == nil {
			t.Errorf("budctl %s -o xml succeeded:\n%s", strings.Join(args, " "), stdout)
			continue
		}
		if !strings.Contains(stderr, `"xml"`) || !strings.Contains(stderr, "table, json or yaml") {
			t.Errorf("budctl %s -o xml: stderr %q; want it to name the bad format and the good ones", strings.Join(args, " "), stderr)
		}
		if stdout != "" {
			t.Errorf("budctl %s -o xml printed %q on stdout", strings.Join(args, " "), stdout)
		}
	}

	// A command round trip, for good measure: queued, delivered, succeeded.
	out := c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", a.nodeID)
	cmdID := strings.TrimSpace(out)
	if len(cmdID) != 36 || strings.Contains(cmdID, "\n") {
		t.Fatalf("commands create printed %q; want the command id", out)
	}
	eventually(t, 10*time.Second, func() error {
		cm, err := c.getCommand(cmdID)
		if err != nil {
			return err
		}
		if cm.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			return fmt.Errorf("command %s: %s %q", cmdID, cm.GetState(), cm.GetMessage())
		}
		if cm.GetOutput()["hostname"] != a.hostname || cm.GetDeliveries() != 1 {
			return fmt.Errorf("command %s: output %v deliveries %d", cmdID, cm.GetOutput(), cm.GetDeliveries())
		}
		return nil
	})

	// The metrics agree.
	m := c.metrics(t)
	for _, want := range []string{`bud_controller_enrollments_total{result="ok"} 1`, "bud_controller_connected_agents 1", "bud_controller_ready_nodes 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, strings.Join(metricSamples(m, strings.Fields(strings.Split(want, "{")[0])[0]), "\n"))
		}
	}
	if hb := metricSamples(m, "bud_controller_heartbeats_total"); len(hb) != 1 || strings.HasSuffix(hb[0], " 0") {
		t.Errorf("heartbeats metric %v; want a count above zero", hb)
	} else if v, err := strconv.ParseFloat(strings.Fields(hb[0])[1], 64); err != nil || v < 1 {
		t.Errorf("heartbeats metric %q", hb[0])
	}
}
