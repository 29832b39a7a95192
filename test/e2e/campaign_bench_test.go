package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
	maintv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/maint/v1"
)

// BenchmarkCampaign: TestCampaignHundredNodes's fleet (100 kwok Nodes in 10
// racks, agents in this process, a real bud-controller stepping campaigns
// every 250ms) with one pod on each Node to evict (a Deployment bound by
// nodeName), and a campaign with max-unavailable 10 and rack=2 whose task is
// `true`, no reboot. It reports the campaign's wall time against the sum of
// its drains, and what the controller spends per node beyond them. The
// campaign runs once whatever b.N is: use -benchtime=1x.
//
//	go test ./test/e2e/ -run '^$' -bench Campaign -benchtime=1x -count=1
func BenchmarkCampaign(b *testing.B) {
	const nodes, racks, maxUnavailable, perRack = 100, 10, 10, 2
	cp := kubetest.Start(b, kubetest.WithControllerManager(), kubetest.WithKwok())
	c := startController(b, withServeArgs("--maintenance-interval", "250ms"))
	f := startSimFleet(b, cp, c, nodes, racks)

	const ns = "bench"
	cp.CreateNamespace(ns)
	for i := range nodes {
		if _, err := cp.Client.AppsV1().Deployments(ns).Create(b.Context(), appDeployment(ns, fmt.Sprintf("app-%03d", i), f.host(i)), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	eventually(b, 3*time.Minute, func() error {
		pods, err := cp.Client.CoreV1().Pods(ns).List(b.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		running := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		if running < nodes {
			return fmt.Errorf("%d of %d pods running", running, nodes)
		}
		return nil
	})
	task := filepath.Join(b.TempDir(), "task.sh")
	if err := os.WriteFile(task, []byte("true\n"), 0o600); err != nil {
		b.Fatal(err)
	}

	// The controller's CPU with the fleet connected and nothing to do:
	// heartbeats and sessions, which go on during the campaign too.
	pid := c.proc.cmd.Process.Pid
	const idleFor = 5 * time.Second
	idle0, err := procCPU(pid)
	if err != nil {
		b.Skipf("controller CPU: %v", err)
	}
	time.Sleep(idleFor)
	idle1, _ := procCPU(pid)
	idleRate := float64(idle1-idle0) / float64(idleFor)

	b.ResetTimer()
	cpu0, _ := procCPU(pid)
	began := time.Now()
	id := strings.TrimSpace(c.mustBudctl(b, "maintenance", "start", "--selector", "pool=sim", "--max-unavailable", fmt.Sprint(maxUnavailable),
		"--per-domain", fmt.Sprintf("rack=%d", perRack), "--task", task, "--name", "bench"))
	// Polled once a second (each poll a budctl run, which the controller's
	// CPU includes); the wall time is the campaign's own.
	var cm *maintv1.Campaign
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(time.Second) {
		if cm, err = c.getCampaign(id); err == nil && cm.GetState() == maintv1.CampaignState_CAMPAIGN_STATE_COMPLETED {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("campaign not completed within 10m: %v; %s: %d done, %d in progress, %d queued", err, cm.GetState(), cm.GetNodesDone(), cm.GetNodesInProgress(), cm.GetNodesQueued())
		}
	}
	cpu1, _ := procCPU(pid)
	measured := time.Since(began)
	b.StopTimer()
	if cm.GetFailures() != 0 || cm.GetNodesDone() != nodes {
		b.Fatalf("campaign completed with %d failures, %d done: %v", cm.GetFailures(), cm.GetNodesDone(), cm.GetFailedNodes())
	}

	drains, err := drainDurations(c.logPath, id)
	if err != nil {
		b.Fatal(err)
	}
	var sumDrains, beyond time.Duration
	for _, n := range cm.GetNodes() {
		d, ok := drains[n.GetNodeId()]
		if !ok {
			b.Fatalf("no drain of node %s (%s) in the controller's log", n.GetNodeId(), n.GetK8SNode())
		}
		sumDrains += d
		beyond += n.GetFinishedAt().AsTime().Sub(n.GetStartedAt().AsTime()) - d
	}
	// The API's elapsed is rounded to the second; the timestamps are not.
	wall := cm.GetEndedAt().AsTime().Sub(cm.GetStartedAt().AsTime())
	cpu := time.Duration(cpu1 - cpu0)
	cpuIdle := time.Duration(idleRate * float64(measured))
	b.ReportMetric(wall.Seconds(), "campaign-s")
	b.ReportMetric(sumDrains.Seconds(), "sum-of-drains-s")
	b.ReportMetric(wall.Seconds()/sumDrains.Seconds(), "wall/sum-of-drains")
	b.ReportMetric(sumDrains.Seconds()/nodes, "drain-s/node")
	b.ReportMetric(beyond.Seconds()/nodes, "node-s-beyond-drain/node")
	b.ReportMetric(float64(cpu.Milliseconds())/nodes, "controller-cpu-ms/node")
	b.ReportMetric(float64((cpu-cpuIdle).Milliseconds())/nodes, "controller-cpu-ms/node-over-idle")
	b.Logf("%d nodes: campaign %s (polled %s), drains %s in all; controller CPU %s over the campaign, %s of it at its idle rate (%.1f ms/s)",
		nodes, wall.Round(time.Millisecond), measured.Round(time.Millisecond), sumDrains.Round(time.Millisecond),
		cpu.Round(time.Millisecond), cpuIdle.Round(time.Millisecond), idleRate*1e3)
}

// drainDurations reads campaign id's drains from the controller's log: per
// node, the time from the runner's "draining" line to its "drained" line
// (the drain helper's evictions and its wait for the pods to be gone), summed
// over attempts.
func drainDurations(logPath, id string) (map[string]time.Duration, error) {
	fh, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	began := map[string]time.Time{}
	out := map[string]time.Duration{}
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l struct {
			Time     time.Time `json:"time"`
			Msg      string    `json:"msg"`
			Campaign string    `json:"campaign_id"`
			Node     string    `json:"node_id"`
			Attempt  int       `json:"attempt"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Campaign != id {
			continue
		}
		k := l.Node + "#" + strconv.Itoa(l.Attempt)
		switch l.Msg {
		case "draining":
			began[k] = l.Time
		case "drained":
			t0, ok := began[k]
			if !ok {
				return nil, fmt.Errorf("%s: node %s drained (attempt %d) with no draining line", logPath, l.Node, l.Attempt)
			}
			out[l.Node] += l.Time.Sub(t0)
		}
	}
	return out, sc.Err()
}

// procCPU is pid's user and system CPU time (utime+stime of /proc/PID/stat,
// in clock ticks of 10ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The name (field 2) is in parentheses and may hold spaces; the
	// fields after it start with field 3, so utime and stime (14 and 15)
	// are the 12th and 13th.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}
