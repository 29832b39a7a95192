package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/version"
)

// fileSource serves one cached file for any digest.
type fileSource struct{ path string }

func (f fileSource) Fetch(context.Context, string) (string, error) { return f.path, nil }

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// setVersion makes this test binary report v until the test ends.
func setVersion(t *testing.T, v string) {
	old := version.Version
	version.Version = v
	t.Cleanup(func() { version.Version = old })
}

// TestUpgradeInstallConfirmRollback runs agent.upgrade's handler on a
// stand-in binary: it keeps the old binary, installs the new one, leaves
// the command unfinished, and restarts; the result is then what happens
// next: confirmed by the new binary once connected (succeeded), or rolled
// back by the watch at the deadline (the old binary back; failed).
func TestUpgradeInstallConfirmRollback(t *testing.T) {
	setVersion(t, "v1")
	dir := t.TempDir()
	exe, cached, marker := filepath.Join(dir, "bud-agent"), filepath.Join(dir, "cached"), filepath.Join(dir, "restarted")
	os.WriteFile(exe, []byte("old binary"), 0o755)
	os.WriteFile(cached, []byte("new binary"), 0o600)
	now := time.Now()
	var reported []string
	u := &upgrader{
		opts: UpgradeOptions{StateDir: dir, Executable: exe, WatchPrefix: []string{"/bin/true"}, RestartDelay: time.Millisecond,
			RestartCommand: []string{"/bin/sh", "-c", `echo "$BUD_AGENT_PID" > ` + marker}},
		fetcher: fileSource{cached}, now: func() time.Time { return now }, log: slog.Default(),
		report: func(_ *session.Session, id string) { reported = append(reported, id) },
	}
	params := command.AgentUpgradeParams{Digest: digestOf([]byte("new binary")), Version: "v2", Timeout: time.Minute}.Params()
	c := &call{id: "cmd-1", params: params}
	if _, err := u.upgrade(t.Context(), c); !errors.Is(err, errResultAfterRestart) {
		t.Fatalf("upgrade: %v; want the result left for after the restart", err)
	}
	if got := mustRead(t, exe); got != "new binary" {
		t.Errorf("installed %q", got)
	}
	if got := mustRead(t, exe+".prev"); got != "old binary" {
		t.Errorf("kept %q", got)
	}
	if fi, _ := os.Stat(exe); fi.Mode().Perm() != 0o755 {
		t.Errorf("installed with mode %v", fi.Mode())
	}
	c.after()
	eventually(t, "the restart command ran", func() bool { b, _ := os.ReadFile(marker); return strings.TrimSpace(string(b)) != "" })

	rec := state.CommandRecord{ID: "cmd-1", Kind: command.AgentUpgrade}
	if _, mine, done := u.settle(rec); !mine || done {
		t.Fatalf("settle while pending: mine %v, done %v; want mine, not done", mine, done)
	}
	// A second upgrade is refused while one is pending.
	if _, err := u.upgrade(t.Context(), &call{id: "cmd-2", params: params}); err == nil || !strings.Contains(err.Error(), "another upgrade is pending") {
		t.Errorf("a second upgrade: %v", err)
	}

	t.Run("confirmed", func(t *testing.T) {
		setVersion(t, "v2")
		if err := u.Run(t.Context(), nil); err != nil {
			t.Fatal(err)
		}
		out, mine, done := u.settle(rec)
		if !mine || !done || !out.Success || out.Message != "upgraded from v1 to v2 (the previous binary is kept at "+exe+".prev)" {
			t.Errorf("settled %+v (mine %v, done %v)", out, mine, done)
		}
		if len(reported) != 1 || reported[0] != "cmd-1" {
			t.Errorf("reported %v", reported)
		}
		if err := u.trial(t.Context()); err != nil {
			t.Errorf("trial after the confirmation: %v", err)
		}
	})

	t.Run("rolled back", func(t *testing.T) {
		now = now.Add(-time.Hour) // the deadline has passed
		c := &call{id: "cmd-3", params: params}
		os.WriteFile(exe, []byte("old binary"), 0o755)
		if _, err := u.upgrade(t.Context(), c); !errors.Is(err, errResultAfterRestart) {
			t.Fatal(err)
		}
		if err := WatchUpgrade(t.Context(), dir, slog.Default()); err != nil {
			t.Fatal(err)
		}
		if got := mustRead(t, exe); got != "old binary" {
			t.Errorf("after the rollback the binary is %q", got)
		}
		out, mine, done := u.settle(state.CommandRecord{ID: "cmd-3", Kind: command.AgentUpgrade})
		if !mine || !done || out.Success || !strings.HasPrefix(out.Message, "rolled back to v1: v2 did not connect") {
			t.Errorf("settled %+v (mine %v, done %v)", out, mine, done)
		}
		if _, err := os.Stat(filepath.Join(dir, upgradePending)); err == nil {
			t.Fatal("still pending after the rollback")
		}
	})

	t.Run("bad digest", func(t *testing.T) {
		os.WriteFile(exe, []byte("old binary"), 0o755)
		bad := command.AgentUpgradeParams{Digest: digestOf([]byte("other")), Version: "v3"}.Params()
		if _, err := u.upgrade(t.Context(), &call{id: "cmd-4", params: bad}); err == nil || !strings.Contains(err.Error(), "hashes to") {
			t.Errorf("a cached file of another digest: %v", err)
		}
		if got := mustRead(t, exe); got != "old binary" {
			t.Errorf("a refused upgrade changed the binary to %q", got)
		}
	})
}

// TestTrialRollsBackAtDeadline: a new binary that runs but never
// connects rolls itself back at the deadline and ends the agent.
func TestTrialRollsBackAtDeadline(t *testing.T) {
	setVersion(t, "v2")
	dir := t.TempDir()
	exe := filepath.Join(dir, "bud-agent")
	os.WriteFile(exe, []byte("new binary"), 0o755)
	os.WriteFile(exe+".prev", []byte("old binary"), 0o755)
	if err := writeJSON(filepath.Join(dir, upgradePending), upgradeRecord{CommandID: "cmd-1", From: "v1", To: "v2", Executable: exe, Previous: exe + ".prev", Deadline: time.Now().Add(300 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	u := &upgrader{opts: UpgradeOptions{StateDir: dir}, now: time.Now, log: slog.Default()}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := u.trial(ctx); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("trial: %v; want ErrRolledBack", err)
	}
	if got := mustRead(t, exe); got != "old binary" {
		t.Errorf("after the rollback the binary is %q", got)
	}
}
