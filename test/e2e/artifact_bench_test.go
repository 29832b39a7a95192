package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// BenchmarkArtifactTransfer: one artifact of 512 MiB pushed with budctl to
// a real bud-controller, then fetched by a real bud-agent with
// artifact.fetch, over mutual TLS on loopback. Push: budctl's wall time,
// the process's start included. Fetch: the command's delivery to its
// result, the agent's whole-file SHA-256, fsync and rename included. CPU
// is each daemon's utime+stime over its part. It runs once whatever b.N
// is: use -benchtime=1x.
//
//	go test ./test/e2e/ -run '^$' -bench ArtifactTransfer -benchtime=1x -count=1
func BenchmarkArtifactTransfer(b *testing.B) {
	const size = 512 << 20
	const mib = float64(size) / (1 << 20)
	c := startController(b)
	ag := joinAgent(b, c, c.createToken(b), "node-bench")
	ag.start(b)
	ag.waitReady(b)
	file, digest := randomFile(b, b.TempDir(), "bundle.tar", size)

	b.ResetTimer()
	ctlPid := c.proc.cmd.Process.Pid
	cpu0, err := procCPU(ctlPid)
	if err != nil {
		b.Skipf("controller CPU: %v", err)
	}
	began := time.Now()
	if got, _ := c.push(b, file, "--name", "bundle", "--version", "1", "--kind", "image"); got != digest {
		b.Fatalf("pushed as %s; the file is %s", got, digest)
	}
	pushed := time.Since(began)
	cpu1, _ := procCPU(ctlPid)
	if err := os.Remove(file); err != nil { // the disk is shared
		b.Fatal(err)
	}

	agPid := ag.proc.cmd.Process.Pid
	agCPU0, _ := procCPU(agPid)
	id := strings.TrimSpace(c.mustBudctl(b, "commands", "create", "artifact.fetch", "--node", ag.nodeID, "--param", "digest="+digest))
	cmd := c.waitCommandDone(b, id, 5*time.Minute)
	agCPU1, _ := procCPU(agPid)
	cpu2, _ := procCPU(ctlPid)
	b.StopTimer()
	if cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
		b.Fatalf("artifact.fetch: %s: %s", cmd.GetState(), cmd.GetMessage())
	}
	if got := fileDigest(b, cmd.GetOutput()["path"]); got != digest {
		b.Fatalf("fetched %s; want %s", got, digest)
	}
	fetched := cmd.GetFinishedAt().AsTime().Sub(cmd.GetDeliveredAt().AsTime())
	gib := float64(size) / (1 << 30)
	b.ReportMetric(mib/pushed.Seconds(), "push-MiB/s")
	b.ReportMetric(mib/fetched.Seconds(), "fetch-MiB/s")
	b.ReportMetric(time.Duration(cpu1-cpu0).Seconds()/gib, "controller-cpu-s/GiB-pushed")
	b.ReportMetric(time.Duration(cpu2-cpu1).Seconds()/gib, "controller-cpu-s/GiB-served")
	b.ReportMetric(time.Duration(agCPU1-agCPU0).Seconds()/gib, "agent-cpu-s/GiB-fetched")
	b.Logf("%d MiB: push %s, fetch %s", size>>20, pushed.Round(time.Millisecond), fetched.Round(time.Millisecond))
}
