package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// TestBundle makes a key pair and a bundle with budctl (a kubelet binary, an
// image tarball and a package), verifies it, and checks that a tampered,
// truncated or wrongly keyed copy fails verify and push naming what is
// wrong, with nothing loaded; a manifest naming a missing file writes no
// bundle. The good bundle is pushed (its artifacts stored with their
// digests), pushed again (all skipped), and pushed to a controller that
// holds one of its artifacts already (that one skipped); a node then
// stages the bundle's kubelet with artifact.fetch.
func TestBundle(t *testing.T) {
	t.Parallel()
	c := startController(t)
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "site.key"), filepath.Join(dir, "site.pub")
	if out := c.mustBudctl(t, "bundle", "keygen", "--private", key, "--public", pub); !strings.Contains(out, "key sha256:") {
		t.Errorf("keygen printed %q", out)
	}
	if _, stderr, err := c.budctl("bundle", "keygen", "--private", key, "--public", filepath.Join(dir, "x.pub")); err == nil || !strings.Contains(stderr, "never overwrites") {
		t.Errorf("keygen over a key: %v %q", err, stderr)
	}
	_, kubeletDigest := randomFile(t, dir, "kubelet", 6<<20)
	_, imagesDigest := randomFile(t, dir, "bud-images.tar.gz", 3<<20+7)
	_, debDigest := randomFile(t, dir, "bud-agent_1.2.3_amd64.deb", 1<<20)
	manifest := filepath.Join(dir, "bundle.yaml")
	if err := os.WriteFile(manifest, []byte(`packages:
  - {name: bud-agent.deb, version: 1.2.3, path: bud-agent_1.2.3_amd64.deb}
artifacts:
  - {name: kubelet, version: v1.37.2, platform: linux/amd64, kind: binary, path: ./kubelet}
  - {name: bud-images, version: v1.2.3, kind: image, path: ./bud-images.tar.gz}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "site.tar")
	c.mustBudctl(t, "bundle", "create", "--manifest", manifest, "--key", key, "-o", good)
	if out := c.mustBudctl(t, "bundle", "verify", good, "--key", pub); !strings.Contains(out, "verified: 3 files") {
		t.Errorf("verify printed %q", out)
	}

	// Bad copies, each refused by verify and by push, naming the fault.
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	kubelet, _ := os.ReadFile(filepath.Join(dir, "kubelet"))
	at := bytes.Index(b, kubelet[:4096])
	tampered := bytes.Clone(b)
	tampered[at+5<<20] ^= 1
	indexAt := bytes.Index(b, []byte(`"files"`))
	badIndex := bytes.Clone(b)
	badIndex[indexAt+1] = 'F'
	otherKey, otherPub := filepath.Join(dir, "other.key"), filepath.Join(dir, "other.pub")
	c.mustBudctl(t, "bundle", "keygen", "--private", otherKey, "--public", otherPub)
	for _, bad := range []struct {
		name string
		b    []byte
		key  string
		want string
	}{
		{"tampered file", tampered, pub, "files/kubelet/v1.37.2/linux-amd64/kubelet has sha256"},
		{"bad signature", badIndex, pub, "index.sig does not verify"},
		{"wrong key", b, otherPub, "was signed by key"},
		{"truncated", b[:at+1<<20], pub, "files/kubelet/v1.37.2/linux-amd64/kubelet ends after"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(bad.name, " ", "-")+".tar")
		if err := os.WriteFile(p, bad.b, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"verify", "push"} {
			_, stderr, err := c.budctl("bundle", cmd, p, "--key", bad.key)
			if err == nil || !strings.Contains(stderr, bad.want) {
				t.Errorf("%s: bundle %s = %v, %q; want a failure naming %q", bad.name, cmd, err, stderr, bad.want)
			}
			if cmd == "push" && !strings.Contains(stderr, "nothing was loaded") {
				t.Errorf("%s: push says %q; want it to say nothing was loaded", bad.name, stderr)
			}
		}
	}
	if got := c.listArtifacts(t); len(got) != 0 {
		t.Fatalf("after refused pushes the controller holds %v; want nothing", got)
	}
	missing := filepath.Join(dir, "missing.yaml")
	os.WriteFile(missing, []byte("artifacts:\n  - {name: kubelet, version: v1, path: ./not-built}\n"), 0o644)
	if _, stderr, err := c.budctl("bundle", "create", "--manifest", missing, "--key", key, "-o", filepath.Join(dir, "m.tar")); err == nil || !strings.Contains(stderr, "artifacts[0] (kubelet@v1)") || !strings.Contains(stderr, "not-built") {
		t.Errorf("create with a missing file = %v, %q", err, stderr)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(left) != 0 || fileExists(filepath.Join(dir, "m.tar")) {
		t.Errorf("a failed create left %v", left)
	}

	// One artifact is on the controller already: push loads the other two.
	c.push(t, filepath.Join(dir, "bud-images.tar.gz"), "--name", "bud-images", "--version", "v1.2.3", "--kind", "image")
	stdout, stderr, err := c.budctl("bundle", "push", good, "--key", pub)
	if err != nil {
		t.Fatalf("bundle push: %v\n%s", err, stderr)
	}
	for _, want := range []string{"loaded bud-agent.deb@1.2.3 (linux/amd64) " + debDigest, "loaded kubelet@v1.37.2 (linux/amd64) " + kubeletDigest, "skipped bud-images@v1.2.3 (linux/amd64) " + imagesDigest + " (already stored)"} {
		if !strings.Contains(stdout, want+"\n") {
			t.Errorf("push printed %q; want a line %q", stdout, want)
		}
	}
	if !strings.Contains(stderr, "2 loaded, 1 already stored") {
		t.Errorf("push's last line: %q", stderr)
	}
	got := map[string]string{}
	for _, a := range c.listArtifacts(t) {
		got[a.GetName()+"@"+a.GetVersion()+" "+a.GetPlatform()+" "+artifactKindName(a)] = a.GetDigest()
	}
	want := map[string]string{"kubelet@v1.37.2 linux/amd64 binary": kubeletDigest, "bud-images@v1.2.3 linux/amd64 image": imagesDigest, "bud-agent.deb@1.2.3 linux/amd64 file": debDigest}
	if len(got) != len(want) {
		t.Errorf("stored %v; want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("stored %s = %q; want %s", k, got[k], v)
		}
	}
	if stdout := c.mustBudctl(t, "bundle", "push", good, "--key", pub); strings.Count(stdout, "skipped ") != 3 {
		t.Errorf("a second push printed %q; want all 3 skipped", stdout)
	}

	// The loaded kubelet serves nodes.
	ag := joinAgent(t, c, c.createToken(t), "node-bundle")
	ag.start(t)
	ag.waitReady(t)
	dst := filepath.Join(t.TempDir(), "usr", "local", "bin", "kubelet")
	id := strings.TrimSpace(c.mustBudctl(t, "commands", "create", "artifact.fetch", "--node", ag.nodeID, "--param", "digest="+kubeletDigest, "--param", "path="+dst, "--param", "mode=0755"))
	if cmd := c.waitCommandDone(t, id, 60*time.Second); cmd.GetState() != fleetv1.CommandState_COMMAND_STATE_SUCCEEDED {
		t.Fatalf("artifact.fetch of the bundle's kubelet: %s %s", cmd.GetState(), cmd.GetMessage())
	}
	if d := fileDigest(t, dst); d != kubeletDigest {
		t.Errorf("staged kubelet hashes to %s; want %s", d, kubeletDigest)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// artifactKindName is an artifact's kind as budctl names it.
func artifactKindName(a *artifactv1.Artifact) string {
	return strings.ToLower(strings.TrimPrefix(a.GetKind().String(), "ARTIFACT_KIND_"))
}
