package agent

import (
	"context"
	"sync/atomic"

	"github.com/bud-ecosystem/budfleet/agent/kubelet"
	"github.com/bud-ecosystem/budfleet/command"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
)

// kubeletJoin is the handler of kubelet.join: the join runs in
// agent/kubelet, and each phase it enters is streamed as a line of the
// command's stdout (command.JoinPhaseLine), which the controller reads
// back for 'budctl nodes get'; the result's output has the last phase.
type kubeletJoin struct {
	module *kubelet.Module
}

func (k *kubeletJoin) join(ctx context.Context, c *call) (map[string]string, error) {
	spec, err := command.ParseKubeletJoin(c.params)
	if err != nil {
		return map[string]string{command.OutputJoinPhase: command.JoinFailed, command.OutputJoinReason: err.Error()}, err
	}
	var seq, offset atomic.Uint64
	res, err := k.module.Join(ctx, spec, func(phase, detail string) {
		line := []byte(command.JoinPhaseLine(phase, detail))
		c.progress(&agentv1.CommandProgress{
			CommandId: c.id,
			Stream:    agentv1.OutputStream_OUTPUT_STREAM_STDOUT,
			Data:      line,
			Seq:       seq.Add(1),
			Offset:    offset.Add(uint64(len(line))) - uint64(len(line)),
		})
	})
	if err == nil {
		c.message = "Node " + res.NodeName + " is Ready in cluster " + res.Cluster
		if res.Already {
			c.message = "Node " + res.NodeName + " was already joined to cluster " + res.Cluster + " and Ready; left as it is"
		}
	}
	return res.Map(), err
}
