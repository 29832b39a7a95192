package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

var digestLine = regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`)

// randomFile writes n random bytes to a file in dir and returns its path
// and digest.
func randomFile(t testing.TB, dir, name string, n int64) (string, string) {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	return path, "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func fileDigest(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// push runs 'budctl artifacts push', which must print the digest alone.
func (c *controller) push(t testing.TB, file string, args ...string) (digest, stderr string) {
	t.Helper()
	stdout, stderr, err := c.budctl(append([]string{"artifacts", "push", file}, args...)...)
	if err != nil {
		t.Fatalf("budctl artifacts push %s: %v\n%s", file, err, stderr)
	}
	if !digestLine.MatchString(stdout) {
		t.Fatalf("artifacts push printed %q on stdout; want the digest alone", stdout)
	}
	return strings.TrimSpace(stdout), stderr
}

func (c *controller) listArtifacts(t testing.TB) []*artifactv1.Artifact {
	t.Helper()
	var resp artifactv1.ListArtifactsResponse
	if err := c.budctlJSON(&resp, "artifacts", "list"); err != nil {
		t.Fatal(err)
	}
	return resp.GetArtifacts()
}

// storedFiles lists the controller's artifact directory: blobs and temp
// files.
func (c *controller) storedFiles(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"sha256", "tmp"} {
		ents, err := os.ReadDir(filepath.Join(c.dataDir, "artifacts", sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, sub+"/"+e.Name())
		}
	}
	return out
}

// waitCommandDone waits for a command's result.
func (c *controller) waitCommandDone(t testing.TB, id string, timeout time.Duration) *fleetv1.Command {
	t.Helper()
	var cmd *fleetv1.Command
	eventually(t, timeout, func() error {
		var err error
		if cmd, err = c.getCommand(id); err != nil {
			return err
		}
		if s := cmd.GetState(); s != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED && s != fleetv1.CommandState_COMMAND_STATE_FAILED {
			return fmt.Errorf("command %s is %s", id, s)
		}
		return nil
	})
	return cmd
}

// TestArtifactsPushListGet: budctl pushes a multi-MiB file and reads it
// back in every output form; bad input (a missing file, a wrong --expected,
// another content under a taken name, a push cut by killing budctl, a node
// certificate pushing or removing) is refused and stores nothing; a node
// certificate may fetch; rm removes the content.
func TestArtifactsPushListGet(t *testing.T) {
	t.Parallel()
	c := startController(t)
	dir := t.TempDir()
	file, want := randomFile(t, dir, "kubelet", 12<<20+345)

	digest, stderr := c.push(t, file, "--name", "kubelet", "--version", "v1.37.2", "--kind", "binary")
	if digest != want {
		t.Fatalf("push printed %s; the file's digest is %s", digest, want)
	}
	// stderr is not a terminal here: one plain line, no bar.
	if !strings.HasPrefix(stderr, "pushed kubelet@v1.37.2 (linux/amd64, binary): 12.0 MiB in ") || strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "\r") {
		t.Errorf("push stderr = %q; want one final line", stderr)
	}
	if again, stderr := c.push(t, file, "--name", "kubelet", "--version", "v1.37.2", "--kind", "binary"); again != digest || !strings.Contains(stderr, "already stored; nothing changed") {
		t.Errorf("second push = %s, %q; want the same digest, already stored", again, stderr)
	}

	list := c.listArtifacts(t)
	if len(list) != 1 {
		t.Fatalf("artifacts list = %v; want one", list)
	}
	a := list[0]
	if a.GetDigest() != digest || a.GetName() != "kubelet" || a.GetVersion() != "v1.37.2" || a.GetPlatform() != "linux/amd64" ||
		a.GetKind() != artifactv1.ArtifactKind_ARTIFACT_KIND_BINARY || a.GetSize() != 12<<20+345 || a.GetPushedBy() != "admin" || a.GetCreatedAt() == nil {
		t.Errorf("listed artifact = %v", a)
	}
	for _, ref := range []string{digest, "kubelet@v1.37.2"} {
		var got artifactv1.GetArtifactResponse
		if err := c.budctlJSON(&got, "artifacts", "get", ref); err != nil || got.GetArtifact().GetDigest() != digest {
			t.Errorf("artifacts get %s -o json = %v, %v", ref, got.GetArtifact(), err)
		}
	}
	table := c.mustBudctl(t, "artifacts", "list")
	if !regexp.MustCompile(`(?m)^kubelet\s+v1\.37\.2\s+linux/amd64\s+binary\s+12\.0 MiB\s+` + regexp.QuoteMeta(digest[:19]) + `\s`).MatchString(table) {
		t.Errorf("artifacts list table:\n%s", table)
	}
	if y := c.mustBudctl(t, "artifacts", "get", "kubelet@v1.37.2", "-o", "yaml"); !strings.Contains(y, "digest: "+digest) {
		t.Errorf("artifacts get -o yaml:\n%s", y)
	}
	stored := c.storedFiles(t)
	if len(stored) != 1 || stored[0] != "sha256/"+strings.TrimPrefix(digest, "sha256:") {
		t.Fatalf("stored files = %v; want only the blob", stored)
	}

	// Bad input: a clear error, nothing stored.
	other, otherDigest := randomFile(t, dir, "other", 1<<20)
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{filepath.Join(dir, "missing"), "--name", "x", "--version", "1"}, "no such file or directory"},
		{[]string{other, "--name", "x", "--version", "1", "--expected", want}, "hashes to " + otherDigest + ", not the expected " + want},
		{[]string{other, "--name", "kubelet", "--version", "v1.37.2"}, "AlreadyExists: artifact kubelet@v1.37.2 (linux/amd64) is already bound to other content, " + digest},
		{[]string{file, "--name", "kubelet", "--version", "v1.37.3"}, "is already stored as kubelet@v1.37.2 (linux/amd64)"},
		{[]string{other, "--name", "x", "--version", "1", "--kind", "tarball"}, `--kind "tarball": want binary, image or file`},
		{[]string{other, "--name", "../x", "--version", "1"}, `InvalidArgument: invalid artifact: name "../x"`},
		{[]string{other, "--name", "x", "--version", "1", "--platform", "amd64"}, `platform "amd64": want os/arch`},
	} {
		stdout, stderr, err := c.budctl(append([]string{"artifacts", "push"}, tc.args...)...)
		if err == nil || stdout != "" || !strings.Contains(stderr, tc.says) {
			t.Errorf("artifacts push %v = %v, stdout %q, stderr %q; want a failure saying %q", tc.args, err, stdout, stderr, tc.says)
		}
	}

	// A push cut by killing budctl half way: the controller keeps nothing,
	// not even a temp file.
	big, _ := randomFile(t, dir, "big", 256<<20)
	p := startProc(t, t, "budctl push", filepath.Join(dir, "push.log"), filepath.Join(binDir, "budctl"), "--config", c.adminConfig, "artifacts", "push", big, "--name", "big", "--version", "1")
	eventually(t, 30*time.Second, func() error {
		ents, _ := os.ReadDir(filepath.Join(c.dataDir, "artifacts", "tmp"))
		if len(ents) == 0 {
			return errors.New("no push in progress yet")
		}
		return nil
	})
	p.kill(t)
	eventually(t, 10*time.Second, func() error {
		if got := c.storedFiles(t); len(got) != 1 {
			return fmt.Errorf("stored files after a cut push = %v; want only the first blob", got)
		}
		return nil
	})

	// A node certificate: no push, no removal, but a fetch.
	ag := joinAgent(t, c, c.createToken(t), "node-art")
	conn := nodeConn(t, ag)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	api := artifactv1.NewArtifactServiceClient(conn)
	stream, err := api.PushArtifact(ctx)
	if err == nil {
		err = stream.Send(&artifactv1.PushArtifactRequest{Msg: &artifactv1.PushArtifactRequest_Metadata{Metadata: &artifactv1.PushMetadata{Name: "evil", Version: "1", Size: 4}}})
		if err == nil {
			_ = stream.Send(&artifactv1.PushArtifactRequest{Msg: &artifactv1.PushArtifactRequest_Chunk{Chunk: []byte("evil")}})
		}
		_, err = stream.CloseAndRecv()
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "operator certificate") {
		t.Errorf("a push with a node certificate = %v; want PermissionDenied", err)
	}
	if _, err := api.RemoveArtifact(ctx, &artifactv1.RemoveArtifactRequest{Ref: &artifactv1.ArtifactRef{Ref: digest}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a removal with a node certificate = %v; want PermissionDenied", err)
	}
	if _, err := api.ListArtifacts(ctx, &artifactv1.ListArtifactsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a list with a node certificate = %v; want PermissionDenied", err)
	}
	fetch, err := artifactv1.NewNodeArtifactServiceClient(conn).Fetch(ctx, &artifactv1.FetchRequest{Digest: digest, Offset: 12 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var tailBytes []byte
	for {
		m, err := fetch.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Fetch with a node certificate: %v", err)
		}
		tailBytes = append(tailBytes, m.GetData()...)
	}
	whole, _ := os.ReadFile(file)
	if string(tailBytes) != string(whole[12<<20:]) {
		t.Errorf("Fetch from offset %d brought %d bytes; want the last %d of the file", 12<<20, len(tailBytes), len(whole)-12<<20)
	}
	if got := c.listArtifacts(t); len(got) != 1 {
		t.Errorf("artifacts after the refused pushes = %v; want only kubelet", got)
	}
	if got := c.storedFiles(t); len(got) != 1 {
		t.Errorf("stored files after the refused pushes = %v; want only the first blob", got)
	}

	if out := c.mustBudctl(t, "artifacts", "rm", "kubelet@v1.37.2"); out != "artifact kubelet@v1.37.2 (linux/amd64) removed: "+digest+"\n" {
		t.Errorf("artifacts rm printed %q", out)
	}
	if got := c.storedFiles(t); len(got) != 0 {
		t.Errorf("stored files after rm = %v; want none", got)
	}
	if _, stderr, err := c.budctl("artifacts", "get", digest); err == nil || !strings.Contains(stderr, "NotFound") {
		t.Errorf("artifacts get of a removed artifact = %v, %q; want NotFound", err, stderr)
	}
}

// TestArtifactsStageOnAgent: artifact.fetch stages a pushed artifact onto
// a real agent at a path with a mode; the bytes are the pushed ones. An
// unknown digest fails the command saying so.
func TestArtifactsStageOnAgent(t *testing.T) {
	t.Parallel()
	c := startController(t)
	ag := joinAgent(t, c, c.createToken(t), "node-stage")
	ag.start(t)
	ag.waitReady(t)
	file, _ := randomFile(t, t.TempDir(), "tool", 9<<20+1)
	digest, _ := c.push(t, file, "--name", "tool", "--version", "2.0", "--kind", "binary")

	dst := filepath.Join(t.TempDir(), "opt", "bin", "tool")
	id := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "artifact.fetch", "--node", ag.nodeID, "--param", "digest="+digest, "--param", "path="+dst, "--param", "mode=0750"))
	cmd := c.waitCommandDone(t, id, 60*time.Second)
	if cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("artifact.fetch %s: %s", cmd.GetState(), cmd.GetMessage())
	}
	out := cmd.GetOutput()
	if out["path"] != dst || out["digest"] != digest || out["size"] != strconv.Itoa(9<<20+1) || out["cached"] != "false" || !strings.HasPrefix(out["cache_path"], ag.stateDir) {
		t.Errorf("artifact.fetch output = %v", out)
	}
	if got := fileDigest(t, dst); got != digest {
		t.Errorf("the staged file hashes to %s; want %s", got, digest)
	}
	if st, err := os.Stat(dst); err != nil || st.Mode().Perm() != 0o750 {
		t.Errorf("staged file mode = %v, %v; want 0750", st.Mode(), err)
	}

	unknown := "sha256:" + strings.Repeat("0", 64)
	id = strings.TrimSpace(c.mustBudctl(t, "commands", "create", "artifact.fetch", "--node", ag.nodeID, "--param", "digest="+unknown))
	cmd = c.waitCommandDone(t, id, 60*time.Second)
	if cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_FAILED || !strings.Contains(cmd.GetMessage(), "artifact not found on the controller: "+unknown) {
		t.Errorf("artifact.fetch of an unknown digest: %s %q; want failed, not found", cmd.GetState(), cmd.GetMessage())
	}
	// Bad parameters are refused when queued.
	if _, stderr, err := c.budctl("commands", "create", "artifact.fetch", "--node", ag.nodeID, "--param", "digest="+digest, "--param", "path=relative/x"); err == nil || !strings.Contains(stderr, "clean absolute file path") {
		t.Errorf("artifact.fetch with a relative path = %v, %q", err, stderr)
	}
}

var resumeLine = regexp.MustCompile(`"msg":"artifact fetch resumed".*"offset":(\d+)`)

// TestArtifactsFetchResumesAfterControllerKill: the controller is SIGKILLed
// while an agent fetches a large artifact; after the restart the agent goes
// on from where the transfer stopped, not from the start, and the staged
// bytes are the pushed ones.
func TestArtifactsFetchResumesAfterControllerKill(t *testing.T) {
	t.Parallel()
	c := startController(t)
	ag := joinAgent(t, c, c.createToken(t), "node-resume")
	ag.start(t)
	ag.waitReady(t)
	const size = 384 << 20
	file, digest := randomFile(t, t.TempDir(), "image.tar", size)
	c.push(t, file, "--name", "bundle", "--version", "1", "--kind", "image")
	if err := os.Remove(file); err != nil { // the disk is shared
		t.Fatal(err)
	}

	partial := filepath.Join(ag.stateDir, "artifacts", "sha256", strings.TrimPrefix(digest, "sha256:")+".partial")
	id := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "artifact.fetch", "--node", ag.nodeID, "--param", "digest="+digest))
	var cutAt int64
	eventually(t, 60*time.Second, func() error {
		st, err := os.Stat(partial)
		if err != nil || st.Size() == 0 {
			return errors.New("the transfer has not started")
		}
		if st.Size() >= size {
			t.Fatalf("the transfer finished before the controller could be killed (%d bytes); make the artifact larger", st.Size())
		}
		cutAt = st.Size()
		return nil
	})
	c.kill(t)
	t.Logf("controller SIGKILLed with %d of %d bytes on the node", cutAt, size)
	c.restart(t)

	cmd := c.waitCommandDone(t, id, 2*time.Minute)
	if cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("artifact.fetch after the restart: %s: %s", cmd.GetState(), cmd.GetMessage())
	}
	out := cmd.GetOutput()
	resumed, err := strconv.ParseInt(strings.Split(out["resumed_from"], ",")[0], 10, 64)
	if err != nil || resumed < cutAt || resumed >= size {
		t.Fatalf("artifact.fetch output %v: want resumed_from at or past the %d bytes seen before the kill and before the end", out, cutAt)
	}
	received, _ := strconv.ParseInt(out["received"], 10, 64)
	if received >= 2*size || received < size {
		t.Errorf("received %d bytes for %d; want the whole once and what was cut at most once more", received, size)
	}
	// The restarted controller served the rest from the agent's offset.
	m := resumeLine.FindStringSubmatch(readLog(c.logPath))
	if m == nil || m[1] != strconv.FormatInt(resumed, 10) {
		t.Errorf("controller log: resume line %v; want one at offset %d", m, resumed)
	}
	// Its metrics say the same: one fetch from an offset, the rest sent.
	exp := c.metrics(t)
	if got := metricSamples(exp, "bud_controller_artifact_fetches_total"); !slices.Contains(got, `bud_controller_artifact_fetches_total{result="resumed_complete"} 1`) {
		t.Errorf("fetch metrics after the restart = %v; want one resumed_complete", got)
	}
	got := metricSamples(exp, "bud_controller_artifact_bytes_served_total")
	if served, err := strconv.ParseFloat(strings.TrimPrefix(strings.Join(got, ""), "bud_controller_artifact_bytes_served_total "), 64); err != nil || served != float64(size-resumed) {
		t.Errorf("bytes served after the restart = %v; want %d", got, size-resumed)
	}
	t.Logf("resumed from %d of %d bytes; %d received in all", resumed, size, received)
	if got := fileDigest(t, out["path"]); got != digest {
		t.Errorf("the fetched file hashes to %s; want %s", got, digest)
	}
	if _, err := os.Stat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the partial file is still there: %v", err)
	}
}
