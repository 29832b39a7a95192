package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/artifact"
	"github.com/bud-ecosystem/budfleet/agent/session"
	"github.com/bud-ecosystem/budfleet/agent/state"
	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/version"
)

// An upgrade (command agent.upgrade) goes:
//
//  1. the running agent fetches the artifact, checks its digest, copies
//     itself to <binary>.prev, installs the new binary over <binary>,
//     writes STATE_DIR/upgrade.json (from, to, the deadline), and leaves
//     the command unfinished: it starts the rollback watch (the kept
//     binary, `bud-agent upgrade-watch`, outside the agent's service) and
//     the restart command;
//  2. the new binary, finding upgrade.json, is on trial: once a session
//     with the controller is up it confirms by renaming upgrade.json to
//     upgrade.confirmed.json, and reports the command succeeded;
//  3. the watch, and the trial agent too, take the deadline: whoever first
//     renames upgrade.json to upgrade.rollback.json puts the kept binary
//     back; a trial agent that sees the rollback exits (non-zero, so its
//     supervisor starts the restored binary), which reports the command
//     failed, rolled back.
//
// The renames decide: confirm and rollback cannot both happen. A binary
// that exits at once never runs this code; the watch rolls it back. The
// command's result is the outcome, from whichever binary runs after it.

// Files of an upgrade in the state dir.
const (
	upgradePending   = "upgrade.json"
	upgradeConfirmed = "upgrade.confirmed.json"
	upgradeRollback  = "upgrade.rollback.json"
)

// DefaultRestartCommand restarts the agent's systemd service. --no-block:
// the restart stops the service, and this command with it.
var DefaultRestartCommand = []string{"systemctl", "--no-block", "restart", "bud-agent.service"}

// ErrRolledBack ends Run of a new binary that did not connect within its
// upgrade's time: the previous binary is back in place, and the agent's
// supervisor (systemd's Restart=) starts it.
var ErrRolledBack = errors.New("upgrade rolled back: this binary did not connect to the controller in time; the previous binary is back in place and starts next")

// UpgradeOptions configure agent.upgrade.
type UpgradeOptions struct {
	// StateDir holds the upgrade's record; an agent without one refuses
	// upgrades.
	StateDir string
	// Executable is the binary an upgrade replaces (os.Executable when
	// empty).
	Executable string
	// RestartCommand restarts the agent (DefaultRestartCommand when nil).
	// It runs detached, with BUD_AGENT_PID set to the agent's pid.
	RestartCommand []string
	// WatchPrefix runs the rollback watch outside the agent's service, so
	// that restarting the service does not end it. Nil means systemd-run
	// when systemd is PID 1, nothing otherwise.
	WatchPrefix []string
	// RestartDelay lets the command's result leave the node before the
	// restart (default 1s, as a reboot's).
	RestartDelay time.Duration
}

// upgradeRecord is upgrade.json.
type upgradeRecord struct {
	CommandID  string    `json:"command_id"`
	From       string    `json:"from"`
	To         string    `json:"to"`
	Executable string    `json:"executable"`
	Previous   string    `json:"previous"`
	Deadline   time.Time `json:"deadline"`
}

// upgrader is the agent.upgrade handler and, as a session module, the
// trial's confirmation.
type upgrader struct {
	opts    UpgradeOptions
	fetcher artifact.Source
	now     func() time.Time
	log     *slog.Logger
	// report settles and sends an upgrade's command once its outcome is
	// known (commands.report).
	report func(s *session.Session, id string)
}

func (*upgrader) Name() string                { return "upgrade" }
func (*upgrader) Handlers() []session.Handler { return nil }

func (u *upgrader) path(name string) string { return filepath.Join(u.opts.StateDir, name) }

// upgrade installs the artifact's binary and asks for the restart.
func (u *upgrader) upgrade(ctx context.Context, c *call) (map[string]string, error) {
	p, err := command.ParseAgentUpgrade(c.params)
	if err != nil {
		return nil, err
	}
	if p.Version == version.Version {
		c.message = "already running " + version.Version
		return map[string]string{"from_version": version.Version, "to_version": p.Version}, nil
	}
	if u.opts.StateDir == "" {
		return nil, errors.New("this agent has no state dir to keep an upgrade's record in: it cannot roll back, so it does not upgrade")
	}
	if _, err := os.Stat(u.path(upgradePending)); err == nil {
		return nil, fmt.Errorf("another upgrade is pending (%s): wait for it to be confirmed or rolled back", u.path(upgradePending))
	}
	exe := u.opts.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the running binary: %w", err)
		}
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return nil, fmt.Errorf("find the running binary: %w", err)
	}
	cached, err := u.fetcher.Fetch(ctx, p.Digest)
	if err != nil {
		return nil, err
	}
	// The fetch checked the digest as it wrote the cache; the cache may
	// have changed since, and this file is about to run as root.
	if got, err := fileSHA256(cached); err != nil {
		return nil, err
	} else if got != p.Digest {
		return nil, fmt.Errorf("the cached artifact %s hashes to %s, not %s: remove it and queue the upgrade again", cached, got, p.Digest)
	}
	prev := exe + ".prev"
	if err := copyInto(exe, prev, 0o755); err != nil {
		return nil, fmt.Errorf("keep the running binary for a rollback: %w", err)
	}
	if err := copyInto(cached, exe, 0o755); err != nil {
		return nil, fmt.Errorf("install the new binary: %w", err)
	}
	delay := u.opts.RestartDelay
	if delay == 0 {
		delay = time.Second
	}
	rec := upgradeRecord{CommandID: c.id, From: version.Version, To: p.Version, Executable: exe, Previous: prev, Deadline: u.now().Add(delay + p.Timeout).UTC()}
	if err := writeJSON(u.path(upgradePending), rec); err != nil {
		// Nothing will confirm or roll back: put the binary back now.
		if rerr := copyInto(prev, exe, 0o755); rerr != nil {
			return nil, fmt.Errorf("record the upgrade: %w; and putting the previous binary back failed too: %v", err, rerr)
		}
		return nil, fmt.Errorf("record the upgrade (the previous binary is back): %w", err)
	}
	restart := u.opts.RestartCommand
	if restart == nil {
		restart = DefaultRestartCommand
	}
	watch := u.opts.WatchPrefix
	if watch == nil && systemdRunning() {
		watch = []string{"systemd-run", "--quiet", "--collect", "--unit", fmt.Sprintf("bud-agent-upgrade-%d", u.now().Unix())}
	}
	watch = append(append([]string(nil), watch...), prev, "upgrade-watch", "--state-dir", u.opts.StateDir)
	c.after = func() {
		time.Sleep(delay)
		log := u.log.With("command_id", c.id, "to_version", p.Version)
		if err := startDetached(watch, nil); err != nil {
			log.Error("could not start the rollback watch; the new binary rolls itself back if it runs but does not connect", "error", err)
		}
		log.Warn("restarting into the new binary", "restart_command", restart)
		if err := startDetached(restart, []string{"BUD_AGENT_PID=" + strconv.Itoa(os.Getpid())}); err != nil {
			log.Error("could not start the restart command; the new binary starts at the agent's next restart", "error", err)
		}
	}
	u.log.Info("installed the new binary; restarting into it", "to_version", p.Version, "previous", prev, "deadline", rec.Deadline)
	return nil, errResultAfterRestart
}

// settle gives the result of an upgrade command that its handler left
// unfinished: known once the upgrade was confirmed or rolled back.
func (u *upgrader) settle(rec state.CommandRecord) (state.CommandRecord, bool, bool) {
	if rec.Kind != command.AgentUpgrade || u.opts.StateDir == "" {
		return rec, false, false
	}
	if up, err := readUpgrade(u.path(upgradePending)); err == nil && up.CommandID == rec.ID {
		return rec, true, false
	}
	rec.FinishedAt = u.now()
	if up, err := readUpgrade(u.path(upgradeConfirmed)); err == nil && up.CommandID == rec.ID {
		rec.Success = true
		rec.Message = fmt.Sprintf("upgraded from %s to %s (the previous binary is kept at %s)", up.From, up.To, up.Previous)
		rec.Output = map[string]string{"from_version": up.From, "to_version": up.To, "previous": up.Previous, "executable": up.Executable}
		return rec, true, true
	}
	if up, err := readUpgrade(u.path(upgradeRollback)); err == nil && up.CommandID == rec.ID {
		rec.Message = fmt.Sprintf("rolled back to %s: %s did not connect to the controller by %s", up.From, up.To, up.Deadline.Format(time.RFC3339))
		rec.Output = map[string]string{"from_version": up.From, "to_version": up.To, "executable": up.Executable, "rolled_back": "true"}
		return rec, true, true
	}
	return rec, false, false // stopped before its record: reported as interrupted
}

// Run confirms a pending upgrade to this binary once a session is up, and
// reports the outcome of the last upgrade if it is not yet.
func (u *upgrader) Run(ctx context.Context, s *session.Session) error {
	if u.opts.StateDir == "" {
		return nil
	}
	if rec, err := readUpgrade(u.path(upgradePending)); err == nil && rec.To == version.Version {
		if err := os.Rename(u.path(upgradePending), u.path(upgradeConfirmed)); err == nil {
			u.log.Info("upgrade confirmed: connected on the new binary", "from_version", rec.From, "to_version", rec.To, "command_id", rec.CommandID)
		} else if !errors.Is(err, os.ErrNotExist) { // not exist: rolled back first, and the trial ends the agent
			u.log.Error("confirm the upgrade", "error", err)
		}
	}
	for _, name := range []string{upgradeConfirmed, upgradeRollback} {
		if rec, err := readUpgrade(u.path(name)); err == nil {
			u.report(s, rec.CommandID)
		}
	}
	return nil
}

// trial watches a pending upgrade of a binary other than the one it came
// from: it returns ErrRolledBack once the upgrade was rolled back (by the
// watch, or by itself at the deadline), nil once confirmed, when none is
// pending, or when ctx ends.
func (u *upgrader) trial(ctx context.Context) error {
	if u.opts.StateDir == "" {
		return nil
	}
	rec, err := readUpgrade(u.path(upgradePending))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			u.log.Warn("read the pending upgrade; it is left to the rollback watch", "error", err)
		}
		return nil
	}
	if rec.From == version.Version {
		return nil // the binary it came from: the restart has not happened
	}
	if rec.To != version.Version {
		u.log.Error("this binary reports another version than the upgrade expected; it will not confirm, and is rolled back at the deadline", "version", version.Version, "expected", rec.To, "deadline", rec.Deadline)
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(u.path(upgradePending)); errors.Is(err, os.ErrNotExist) {
			if back, err := readUpgrade(u.path(upgradeRollback)); err == nil && back.CommandID == rec.CommandID {
				return ErrRolledBack
			}
			return nil
		}
		if !u.now().Before(rec.Deadline) {
			if err := rollback(u.opts.StateDir, u.log); err != nil {
				u.log.Error("roll back the upgrade", "error", err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// WatchUpgrade is `bud-agent upgrade-watch`: it waits for the pending
// upgrade in stateDir to be confirmed and rolls it back at its deadline.
// It returns at once when none is pending.
func WatchUpgrade(ctx context.Context, stateDir string, log *slog.Logger) error {
	pending := filepath.Join(stateDir, upgradePending)
	rec, err := readUpgrade(pending)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	log.Info("watching the upgrade", "command_id", rec.CommandID, "to_version", rec.To, "deadline", rec.Deadline)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for time.Now().Before(rec.Deadline) {
		if _, err := os.Stat(pending); errors.Is(err, os.ErrNotExist) {
			log.Info("the upgrade was confirmed or rolled back", "command_id", rec.CommandID)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return rollback(stateDir, log)
}

// rollback claims the pending upgrade (the rename that a confirmation
// would otherwise make) and puts the kept binary back.
func rollback(stateDir string, log *slog.Logger) error {
	pending, claimed := filepath.Join(stateDir, upgradePending), filepath.Join(stateDir, upgradeRollback)
	rec, err := readUpgrade(pending)
	if err != nil {
		return nil // confirmed or rolled back meanwhile
	}
	if err := os.Rename(pending, claimed); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := copyInto(rec.Previous, rec.Executable, 0o755); err != nil {
		return fmt.Errorf("put the previous binary %s back at %s: %w; copy it by hand", rec.Previous, rec.Executable, err)
	}
	log.Warn("upgrade rolled back: the new binary did not connect in time; the previous one is back", "from_version", rec.From, "to_version", rec.To, "executable", rec.Executable)
	return nil
}

func readUpgrade(path string) (upgradeRecord, error) {
	var rec upgradeRecord
	b, err := os.ReadFile(path)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s: %w", path, err)
	}
	return rec, nil
}

// writeJSON writes v to path through a synced temp file and a rename.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// startDetached starts argv in a session of its own, so that it outlives
// the agent, with env added to the agent's environment.
func startDetached(argv, env []string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

// systemdRunning reports whether systemd is PID 1 (sd_booted's test).
func systemdRunning() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}
