// Package kubelettest helps test kubelet joins: an artifact source that
// serves files by sha256 from a directory (standing in for the
// controller's artifact store), and OCI image tarballs built by hand from
// a static binary, for nodes that cannot reach a registry.
package kubelettest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// DirSource serves artifacts from Dir, each stored under its digest's hex:
// it implements agent/kubelet's Source. Fetch checks the content against
// the digest and refuses a file that does not match, as the real fetcher
// refuses a corrupted transfer.
type DirSource struct {
	Dir string

	mu      sync.Mutex
	fetched []string
}

// NewDirSource makes a DirSource on a new directory under t's temp dir.
func NewDirSource(dir string) *DirSource { return &DirSource{Dir: dir} }

// Add copies the file at path into the source and returns its digest.
func (s *DirSource) Add(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return s.AddBytes(b)
}

// AddBytes stores b and returns its digest.
func (s *DirSource) AddBytes(b []byte) (string, error) {
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, h), b, 0o644); err != nil {
		return "", err
	}
	return "sha256:" + h, nil
}

// Corrupt overwrites the stored content of digest with other bytes, so
// that the next Fetch of it is refused.
func (s *DirSource) Corrupt(digest string) error {
	p := filepath.Join(s.Dir, strings.TrimPrefix(digest, "sha256:"))
	return os.WriteFile(p, []byte("not what was pushed"), 0o644)
}

// Fetched lists the digests fetched so far, in order.
func (s *DirSource) Fetched() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.fetched...)
}

// Fetch returns the file of digest after checking its content.
func (s *DirSource) Fetch(ctx context.Context, digest string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != 64 {
		return "", fmt.Errorf("digest %q: want sha256:<64 hex>", digest)
	}
	p := filepath.Join(s.Dir, h)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no artifact %s in the store", digest)
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "", err
	}
	if got := "sha256:" + hex.EncodeToString(sum.Sum(nil)); got != digest {
		return "", fmt.Errorf("artifact %s is corrupted: its content has digest %s; refused", digest, got)
	}
	s.mu.Lock()
	s.fetched = append(s.fetched, digest)
	s.mu.Unlock()
	return p, nil
}

// Image is an OCI image to build: a single layer holding Binary at
// /bin/NAME with a link per Applets name to it (busybox's applets), and
// the config's Cmd.
type Image struct {
	// Name is the image reference, e.g. registry.k8s.io/pause:3.10.
	Name    string
	Binary  string
	Applets []string
	Cmd     []string
}

// BuildOCI writes img as an OCI image layout tarball (what
// 'ctr images import' and 'docker load' take) to path.
func BuildOCI(img Image, path string) error {
	bin, err := os.ReadFile(img.Binary)
	if err != nil {
		return err
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	mtime := time.Unix(0, 0)
	base := filepath.Base(img.Binary)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: mtime},
		{Name: "bin/" + base, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin)), ModTime: mtime},
	} {
		if err := lw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := lw.Write(bin); err != nil {
				return err
			}
		}
	}
	for _, a := range img.Applets {
		if a == base {
			continue
		}
		if err := lw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: base, Mode: 0o777, ModTime: mtime}); err != nil {
			return err
		}
	}
	if err := lw.Close(); err != nil {
		return err
	}
	layerDigest, layerBytes := digestOf(layer.Bytes()), layer.Bytes()
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      mtime.UTC().Format(time.RFC3339),
		"config":       map[string]any{"Cmd": img.Cmd, "Env": []string{"PATH=/bin"}, "WorkingDir": "/"},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digestOf(config), "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": len(layerBytes)}},
	})
	if err != nil {
		return err
	}
	ref := img.Name
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[i+1:]
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    digestOf(manifest),
			"size":      len(manifest),
			"platform":  map[string]string{"architecture": runtime.GOARCH, "os": "linux"},
			"annotations": map[string]string{
				"io.containerd.image.name":          img.Name,
				"org.opencontainers.image.ref.name": ref,
			},
		}},
	})
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, e := range []struct {
		name string
		b    []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobName(layerDigest), layerBytes},
		{blobName(digestOf(config)), config},
		{blobName(digestOf(manifest)), manifest},
	} {
		if err := add(e.name, e.b); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobName(digest string) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

// ReleaseTarball writes a .tar.gz at path holding each file of files
// (name in the tarball -> file on disk), as containerd's and the CNI
// plugins' releases ship their binaries.
func ReleaseTarball(path string, files map[string]string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		b, err := os.ReadFile(files[name])
		if err != nil {
			f.Close()
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b)), ModTime: time.Unix(0, 0)}); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(b); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
