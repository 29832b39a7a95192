package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bud-ecosystem/budfleet/command"
)

// A staged copy has the exact mode asked for (whatever the umask), its
// directory is made, and a second stage replaces the file whole.
func TestCopyInto(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "blob")
	if err := os.WriteFile(src, []byte("kubelet v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "usr", "local", "bin", "kubelet")
	for _, mode := range []os.FileMode{0o755, 0o640} {
		if err := copyInto(src, dst, mode); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(dst)
		if err != nil || st.Mode().Perm() != mode {
			t.Fatalf("staged file: %v, %v; want mode %o", st.Mode(), err, mode)
		}
	}
	if b, _ := os.ReadFile(dst); string(b) != "kubelet v1" {
		t.Errorf("staged file holds %q", b)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
		t.Errorf("%s holds %d entries; want the file alone, no temp file", filepath.Dir(dst), len(ents))
	}
}

// Without a cache the command says why instead of failing obscurely.
func TestArtifactFetchWithoutCache(t *testing.T) {
	p := command.ArtifactFetchParams{Digest: "sha256:" + strings.Repeat("ab", 32)}.Params()
	_, err := (&artifactCommands{}).fetch(t.Context(), &call{id: "c1", params: p})
	if err == nil || !strings.Contains(err.Error(), "keeps no artifact cache") {
		t.Errorf("artifact.fetch without a cache = %v", err)
	}
	_, err = (&artifactCommands{}).fetch(t.Context(), &call{id: "c2", params: map[string]string{command.ParamDigest: "nope"}})
	if err == nil || !strings.Contains(err.Error(), "sha256:<64 lower-case hex digits>") {
		t.Errorf("artifact.fetch with a bad digest = %v", err)
	}
}
