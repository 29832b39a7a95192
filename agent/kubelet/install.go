package kubelet

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/bud-ecosystem/budfleet/command"
)

// Source fetches artifacts from the controller's artifact store by digest
// (agent/artifact implements it over the agent's session): the path of a
// local file whose content has that sha256, or an error saying why not
// (it refuses content with another digest).
type Source interface {
	Fetch(ctx context.Context, digest string) (path string, err error)
}

// fileDigest is "sha256:<hex>" of a file.
func fileDigest(p string) (string, error) {
	f, err := os.Open(p)
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

// fetch gets a verified artifact: the Source checks the digest, and so
// does the join, before anything is installed from it.
func (m *Module) fetch(ctx context.Context, a command.JoinArtifact) (string, error) {
	if m.opts.Source == nil {
		return "", fmt.Errorf("the join spec names the artifact %s %s (%s) but this agent has no artifact source to fetch it from", a.Name, a.Version, a.Digest)
	}
	p, err := m.opts.Source.Fetch(ctx, a.Digest)
	if err != nil {
		return "", fmt.Errorf("fetch artifact %s %s (%s): %w", a.Name, a.Version, a.Digest, err)
	}
	got, err := fileDigest(p)
	if err != nil {
		return "", fmt.Errorf("artifact %s %s: %w", a.Name, a.Version, err)
	}
	if got != a.Digest {
		return "", fmt.Errorf("artifact %s %s: the fetched file %s has digest %s, not %s: refused (push the artifact again)", a.Name, a.Version, p, got, a.Digest)
	}
	return p, nil
}

// installFile copies src to dst (mode) unless dst already has its
// content, by way of a temporary file and a rename, so a running program
// is never overwritten in place. It reports whether it wrote.
func installFile(src, dst string, mode os.FileMode) (bool, error) {
	want, err := fileDigest(src)
	if err != nil {
		return false, err
	}
	if have, err := fileDigest(dst); err == nil && have == want {
		return false, os.Chmod(dst, mode)
	}
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	return true, writeAtomic(dst, in, mode)
}

func writeAtomic(dst string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
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
	return os.Rename(tmp.Name(), dst)
}

// writeFile writes b to dst (mode) unless it already holds b, and
// reports whether it changed.
func writeFile(dst string, b []byte, mode os.FileMode) (bool, error) {
	if have, err := os.ReadFile(dst); err == nil && string(have) == string(b) {
		return false, os.Chmod(dst, mode)
	}
	return true, writeAtomic(dst, strings.NewReader(string(b)), mode)
}

// extractBinaries installs the regular files of a release tarball
// (.tar.gz) whose names pass keep into dir, flattened to their base
// names, and returns how many it installed.
func extractBinaries(tgz, dir string, keep func(name string) bool) (int, error) {
	f, err := os.Open(tgz)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return 0, fmt.Errorf("%s is not a .tar.gz: %w", tgz, err)
	}
	tr := tar.NewReader(zr)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("%s: %w", tgz, err)
		}
		if h.Typeflag != tar.TypeReg || !keep(h.Name) {
			continue
		}
		base := path.Base(h.Name)
		if base == "." || base == "/" || strings.HasPrefix(base, ".") {
			continue
		}
		if err := writeAtomic(filepath.Join(dir, base), tr, 0o755); err != nil {
			return n, err
		}
		n++
	}
}

var kubeletVersionRe = regexp.MustCompile(`Kubernetes (v[0-9][^\s]*)`)

// binaryVersion runs "BIN --version" and returns the kubelet's version.
func binaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	m := kubeletVersionRe.FindStringSubmatch(string(out))
	if m == nil {
		return "", fmt.Errorf("%s --version printed %q, not a Kubernetes version", bin, strings.TrimSpace(string(out)))
	}
	return m[1], nil
}

// findBinary returns the first of candidates that is an executable file,
// then name on PATH; "" when none is.
func findBinary(name string, candidates ...string) string {
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return c
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}
