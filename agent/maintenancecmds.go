package agent

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/maintenance"
	"github.com/bud-ecosystem/budfleet/command"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// maintenanceCommands are the handlers of maintenance.task and
// maintenance.reboot, the node's part of a maintenance campaign. Like
// every command they run at most once per id (commands.execute).
type maintenanceCommands struct {
	runner        *maintenance.Runner
	nodeID        string
	hostname      string
	rebootCommand []string
	rebootDelay   time.Duration
	bootID        func() string
	log           *slog.Logger
}

var outputStreams = map[maintenance.Stream]agentv1.OutputStream{
	maintenance.Stdout: agentv1.OutputStream_OUTPUT_STREAM_STDOUT,
	maintenance.Stderr: agentv1.OutputStream_OUTPUT_STREAM_STDERR,
}

// task runs a maintenance.task script, streaming its output while it runs;
// the result's output has the exit code and the tail of each stream, and
// it fails when the script exits non-zero, times out or is stopped.
func (m *maintenanceCommands) task(ctx context.Context, c *call) (map[string]string, error) {
	p, err := command.ParseMaintenanceTask(c.params)
	if err != nil {
		return nil, err
	}
	name := p.NodeName
	if name == "" {
		name = m.hostname
	}
	t := maintenance.Task{Script: p.Script, Timeout: p.Timeout, CommandID: c.id, NodeID: m.nodeID, NodeName: name, CampaignID: p.CampaignID}
	if err := maintenance.Check(t); err != nil {
		return nil, err
	}
	m.log.Info("running maintenance task", "command_id", c.id, "campaign_id", p.CampaignID, "script_bytes", len(p.Script), "timeout", p.Timeout)
	res, err := m.runner.Run(ctx, t, func(ch maintenance.Chunk) {
		c.progress(&agentv1.CommandProgress{CommandId: c.id, Stream: outputStreams[ch.Stream], Data: ch.Data, Seq: ch.Seq, Offset: ch.Offset})
	})
	if res.Duration == 0 && err != nil {
		return nil, err // it never ran
	}
	return res.Map(), err
}

// reboot records "reboot started" as the command's result and, once that
// is recorded and on its way, runs the reboot command detached. The record
// comes first so that the reboot is not repeated: delivered again after
// the node comes back, the command reports the stored result. The output
// has the boot id from before the reboot; the node's next one differs.
func (m *maintenanceCommands) reboot(_ context.Context, c *call) (map[string]string, error) {
	p, err := command.ParseMaintenanceReboot(c.params)
	if err != nil {
		return nil, err
	}
	argv := append([]string(nil), m.rebootCommand...)
	if err := maintenance.CheckRebootCommand(argv); err != nil {
		return nil, err
	}
	c.message = "reboot started"
	c.after = func() {
		// The result is queued on the session; give it a moment to leave
		// the node before the reboot takes the agent down.
		time.Sleep(m.rebootDelay)
		log := m.log.With("command_id", c.id, "campaign_id", p.CampaignID, "reboot_command", argv)
		log.Warn("rebooting the node")
		err := maintenance.StartReboot(argv, func(err error) {
			if err != nil {
				log.Error("the reboot command failed; the node may not reboot", "error", err)
			}
		})
		if err != nil {
			log.Error("could not start the reboot command; the node will not reboot", "error", err)
		}
	}
	return map[string]string{"boot_id": m.bootID(), "reboot_command": strings.Join(argv, " ")}, nil
}
