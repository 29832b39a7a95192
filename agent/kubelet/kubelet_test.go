package kubelet

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/command"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func itoa(n int) string { return strconv.Itoa(n) }

func TestOptions(t *testing.T) {
	if _, err := New(Options{Root: "relative"}); err == nil {
		t.Error("a relative root was taken")
	}
	if _, err := New(Options{Supervise: "upstart"}); err == nil || !strings.Contains(err.Error(), "want systemd, agent") {
		t.Errorf("bad supervise: %v", err)
	}
	m, err := New(Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if m.systemd() {
		t.Error("a root other than / runs under systemd")
	}
}

// A node joined to one cluster refuses another before it checks or
// changes anything.
func TestJoinRefusesAnotherCluster(t *testing.T) {
	root := t.TempDir()
	m, err := New(Options{Root: root, Logger: discardLogger(), Supervise: SuperviseAgent})
	if err != nil {
		t.Fatal(err)
	}
	rec := &Record{Cluster: "prod", Server: "https://10.0.0.1:6443", CASHA256: "sha256:aa", Phase: command.JoinReady, StartedAt: time.Now()}
	if err := m.writeRecord(rec); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(m.paths.record)
	s := testSpec()
	s.Cluster = "staging"
	var phases []string
	res, err := m.Join(t.Context(), s, func(p, _ string) { phases = append(phases, p) })
	if !errors.Is(err, ErrOtherCluster) || !strings.Contains(err.Error(), "this node joined cluster prod") || !strings.Contains(err.Error(), "leave that cluster first") {
		t.Fatalf("join: %v", err)
	}
	if res.Phase != command.JoinFailed || phases[len(phases)-1] != command.JoinFailed {
		t.Errorf("result %+v, phases %v", res, phases)
	}
	after, _ := os.ReadFile(m.paths.record)
	if string(before) != string(after) {
		t.Errorf("the record changed:\n%s\n->\n%s", before, after)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/kubernetes/bootstrap-kubelet.conf")); err == nil {
		t.Error("files were written")
	}
}

func TestInstallFileIsAtomicAndIdempotent(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "bin", "kubelet")
	if wrote, err := installFile(src, dst, 0o755); err != nil || !wrote {
		t.Fatalf("first install: %v %v", wrote, err)
	}
	if wrote, err := installFile(src, dst, 0o755); err != nil || wrote {
		t.Fatalf("second install: wrote %v, %v; want nothing written", wrote, err)
	}
	st, err := os.Stat(dst)
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("installed %v %v", st.Mode(), err)
	}
}

func TestExtractBinaries(t *testing.T) {
	dir := t.TempDir()
	tgz := filepath.Join(dir, "containerd.tar.gz")
	f, err := os.Create(tgz)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	for _, e := range []struct{ name, body string }{
		{"bin/containerd", "c"}, {"bin/containerd-shim-runc-v2", "s"}, {"bin/ctr", "t"}, {"README.md", "r"}, {"bin/.hidden", "h"},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bin/../../escape", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	zw.Close()
	f.Close()
	out := filepath.Join(dir, "out")
	n, err := extractBinaries(tgz, out, func(name string) bool { return name != "README.md" })
	if err != nil || n != 3 {
		t.Fatalf("extracted %d, %v; want 3", n, err)
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr"} {
		if st, err := os.Stat(filepath.Join(out, b)); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", b, st, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "escape")); err == nil {
		t.Error("a link outside the directory was made")
	}
	if _, err := extractBinaries(filepath.Join(dir, "out", "ctr"), out, func(string) bool { return true }); err == nil || !strings.Contains(err.Error(), "not a .tar.gz") {
		t.Errorf("a file that is not a tarball: %v", err)
	}
}
