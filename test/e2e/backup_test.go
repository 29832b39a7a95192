package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func restoreCmd(args ...string) (string, string, error) {
	return runCmd(60*time.Second, filepath.Join(binDir, "bud-controller"), append([]string{"restore"}, args...)...)
}

// checkRestoredFleet: the node, its token's uses and its command are as they
// were at the backup, and the agent is back with its certificate.
func checkRestoredFleet(t *testing.T, c *controller, a *agent, tokenUses map[string]uint32, cmdID string) {
	t.Helper()
	a.waitReady(t)
	if got := c.tokenUses(t); len(got) != len(tokenUses) {
		t.Errorf("tokens after the restore: %v, want %v", got, tokenUses)
	} else {
		for id, n := range tokenUses {
			if got[id] != n {
				t.Errorf("token %s has %d uses after the restore, want %d", id, got[id], n)
			}
		}
	}
	cmd, err := c.getCommand(cmdID)
	if err != nil || cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Errorf("command %s after the restore: %v, %v", cmdID, cmd.GetState(), err)
	}
}

// A bbolt controller: backup (with the CA, encrypted), wipe the data dir,
// restore, and the agent comes back with its certificate to a controller
// that has every node, token and command of the backup. A truncated, a
// foreign file and a backup of another fleet are refused.
func TestBackupWipeRestoreBolt(t *testing.T) {
	c := startController(t)
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "bk-0")
	a.start(t)
	a.waitReady(t)
	cmdID := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", a.nodeID))
	eventually(t, 20*time.Second, func() error {
		cmd, err := c.getCommand(cmdID)
		if err == nil && cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			return os.ErrDeadlineExceeded
		}
		return err
	})
	uses := c.tokenUses(t)

	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "fleet.backup")
	start := time.Now()
	c.mustBudctl(t, "backup", "create", "-o", file, "--include-ca", "--passphrase-file", pass)
	t.Logf("backup of a one-node fleet: %s", time.Since(start).Round(time.Millisecond))
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "PRIVATE KEY") {
		t.Fatal("the backup holds a private key in the clear")
	}

	c.stop(t)
	if err := os.RemoveAll(c.dataDir); err != nil {
		t.Fatal(err)
	}

	// Damaged and foreign files first: refused, nothing written.
	trunc := filepath.Join(dir, "truncated.backup")
	if err := os.WriteFile(trunc, raw[:len(raw)*2/3], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := restoreCmd("--from", trunc, "--data-dir", c.dataDir, "--passphrase-file", pass); err == nil || !strings.Contains(stderr, "truncated or damaged") {
		t.Errorf("restore of a truncated backup: %v %s", err, stderr)
	}
	foreign := filepath.Join(dir, "foreign")
	if err := os.WriteFile(foreign, []byte("SQLite format 3\x00 and so on"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := restoreCmd("--from", foreign, "--data-dir", c.dataDir); err == nil || !strings.Contains(stderr, "not a budfleet controller backup") {
		t.Errorf("restore of a foreign file: %v %s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(c.dataDir, "controller.db")); err == nil {
		t.Error("a refused restore left a controller.db")
	}
	other := filepath.Join(dir, "other")
	initDataDir(t, other, "127.0.0.1:1")
	if _, stderr, err := restoreCmd("--from", file, "--data-dir", other); err == nil || !strings.Contains(stderr, "another fleet") {
		t.Errorf("restore into another fleet's data dir: %v %s", err, stderr)
	}

	start = time.Now()
	if stdout, stderr, err := restoreCmd("--from", file, "--data-dir", c.dataDir, "--passphrase-file", pass); err != nil {
		t.Fatalf("restore: %v\n%s%s", err, stdout, stderr)
	}
	c.restart(t)
	checkRestoredFleet(t, c, a, uses, cmdID)
	t.Logf("restore, restart and the agent back: %s", time.Since(start).Round(time.Millisecond))
}

// Controllers on etcd: backup of the prefix, the prefix wiped, restore into
// it, and the agents come back with everything as of the backup.
func TestBackupWipeRestoreEtcd(t *testing.T) {
	f := startFleetOnEtcd(t, 1, 1)
	c := f.controllers[0]
	tok := c.createToken(t)
	a := joinAgent(t, c, tok, "bke-0")
	a.start(t)
	a.waitReady(t)
	cmdID := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "inventory.collect", "--node", a.nodeID))
	eventually(t, 20*time.Second, func() error {
		cmd, err := c.getCommand(cmdID)
		if err == nil && cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
			return os.ErrDeadlineExceeded
		}
		return err
	})
	uses := c.tokenUses(t)
	file := filepath.Join(t.TempDir(), "fleet.backup")
	c.mustBudctl(t, "backup", "create", "-o", file)

	c.kill(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.etcd.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, "/e2e/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}

	args := []string{"--from", file, "--data-dir", c.dataDir, "--store", "etcd", "--etcd-endpoints", strings.Join(f.etcd.Endpoints(), ","), "--etcd-prefix", "/e2e"}
	if stdout, stderr, err := restoreCmd(args...); err != nil {
		t.Fatalf("restore: %v\n%s%s", err, stdout, stderr)
	}
	if _, stderr, err := restoreCmd(args...); err == nil || !strings.Contains(stderr, "already holds a fleet's state") {
		t.Errorf("a second restore into the same prefix: %v %s", err, stderr)
	}
	c.restart(t)
	checkRestoredFleet(t, c, a, uses, cmdID)
}
