package bundle

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Manifest is what a bundle is made from (YAML, strict: unknown keys are
// errors). Paths are relative to the manifest's directory.
//
//	packages:
//	  - {name: bud-agent.deb, version: 1.2.3, platform: linux/amd64, path: dist/bud-agent_1.2.3_amd64.deb}
//	plugins:
//	  - {name: bud-provider-vsphere, version: v1.2.3, platform: linux/amd64, path: bin/linux-amd64/bud-provider-vsphere}
//	artifacts:
//	  - {name: kubelet, version: v1.37.2, platform: linux/amd64, path: ./kubelet}
//	  - {name: bud-images, version: v1.2.3, kind: image, path: ./bud-images.tar.gz}
type Manifest struct {
	Packages  []Entry `yaml:"packages"`
	Plugins   []Entry `yaml:"plugins"`
	Artifacts []Entry `yaml:"artifacts"`
}

// Entry is one file of a manifest and the artifact it becomes.
type Entry struct {
	Name    string `yaml:"name"`
	Version string `yaml:"version"`
	// Platform defaults to linux/amd64.
	Platform string `yaml:"platform"`
	// Kind defaults to file for packages and artifacts, binary for plugins.
	Kind string `yaml:"kind"`
	Path string `yaml:"path"`
}

// The artifact store's rules for names, versions and platforms, checked
// here so that a bundle that verifies also loads.
var (
	nameRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	platformRe = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`)
)

// LoadManifest reads and checks a manifest file; the entries' paths come
// back absolute.
func LoadManifest(file string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(file)
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil && !errors.Is(err, io.EOF) {
		return m, fmt.Errorf("manifest %s: %w", file, err)
	}
	base := filepath.Dir(file)
	var errs []string
	seen := map[string]string{}
	for _, s := range []struct {
		key, kind string
		entries   []Entry
	}{{"packages", "file", m.Packages}, {"plugins", "binary", m.Plugins}, {"artifacts", "file", m.Artifacts}} {
		for i := range s.entries {
			e := &s.entries[i]
			where := fmt.Sprintf("%s[%d]", s.key, i)
			if e.Platform == "" {
				e.Platform = "linux/amd64"
			}
			if e.Kind == "" {
				e.Kind = s.kind
			}
			if !nameRe.MatchString(e.Name) {
				errs = append(errs, fmt.Sprintf("%s: name %q: want 1 to 128 letters, digits, '.', '_', '-' or '+', starting with a letter or digit", where, e.Name))
			}
			if !nameRe.MatchString(e.Version) {
				errs = append(errs, fmt.Sprintf("%s: version %q: want 1 to 128 letters, digits, '.', '_', '-' or '+', starting with a letter or digit", where, e.Version))
			}
			if !platformRe.MatchString(e.Platform) {
				errs = append(errs, fmt.Sprintf("%s: platform %q: want os/arch in lower case, e.g. linux/amd64", where, e.Platform))
			}
			switch e.Kind {
			case "binary", "image", "file":
			default:
				errs = append(errs, fmt.Sprintf("%s: kind %q: want binary, image or file", where, e.Kind))
			}
			if e.Path == "" {
				errs = append(errs, where+": needs a path")
			} else if !filepath.IsAbs(e.Path) {
				e.Path = filepath.Join(base, e.Path)
			}
			ref := e.Name + "@" + e.Version + " " + e.Platform
			if prev, ok := seen[ref]; ok {
				errs = append(errs, fmt.Sprintf("%s: %s@%s (%s) is %s already", where, e.Name, e.Version, e.Platform, prev))
			}
			seen[ref] = where
		}
	}
	if len(errs) > 0 {
		return m, fmt.Errorf("manifest %s: %s", file, strings.Join(errs, "; "))
	}
	return m, nil
}

// Create writes the bundle of m to w, signed with key, and returns its
// index. It hashes every file first (so the index can lead the tarball),
// then writes each file, checking that it did not change in between. A
// file that is missing, not a regular file, or has the same content as
// another entry (the artifact store keeps one name per content) fails
// Create before anything is written.
func Create(w io.Writer, m Manifest, key ed25519.PrivateKey, now time.Time) (Index, error) {
	idx := Index{Format: Format, Created: now.UTC().Truncate(time.Second)}
	var sources []string
	byDigest := map[string]string{}
	add := func(section, key string, entries []Entry) error {
		for i, e := range entries {
			where := fmt.Sprintf("%s[%d] (%s@%s)", key, i, e.Name, e.Version)
			sum, size, err := hashFile(e.Path)
			if err != nil {
				return fmt.Errorf("manifest %s: %w", where, err)
			}
			if prev, ok := byDigest[sum]; ok {
				return fmt.Errorf("manifest %s: %s has the same content as %s; the artifact store keeps content under one name: list it once", where, e.Path, prev)
			}
			byDigest[sum] = where
			idx.Files = append(idx.Files, File{
				Path: filePath(e.Name, e.Version, e.Platform, filepath.Base(e.Path)), SHA256: sum, Size: size,
				Section: section, Name: e.Name, Version: e.Version, Platform: e.Platform, Kind: e.Kind,
			})
			sources = append(sources, e.Path)
		}
		return nil
	}
	if err := add(SectionPackage, "packages", m.Packages); err != nil {
		return Index{}, err
	}
	if err := add(SectionPlugin, "plugins", m.Plugins); err != nil {
		return Index{}, err
	}
	if err := add(SectionArtifact, "artifacts", m.Artifacts); err != nil {
		return Index{}, err
	}
	indexBytes, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return Index{}, err
	}
	pub := key.Public().(ed25519.PublicKey)
	sigBytes, err := json.Marshal(Signature{KeyID: KeyID(pub), Ed25519: ed25519.Sign(key, indexBytes)})
	if err != nil {
		return Index{}, err
	}
	tw := tar.NewWriter(w)
	for _, e := range []struct {
		name string
		b    []byte
	}{{IndexName, indexBytes}, {SignatureName, sigBytes}} {
		if err := tw.WriteHeader(header(e.name, int64(len(e.b)), idx.Created)); err != nil {
			return Index{}, err
		}
		if _, err := tw.Write(e.b); err != nil {
			return Index{}, err
		}
	}
	for i, f := range idx.Files {
		if err := copyChecked(tw, f, sources[i], idx.Created); err != nil {
			return Index{}, err
		}
	}
	return idx, tw.Close()
}

func header(name string, size int64, t time.Time) *tar.Header {
	return &tar.Header{Name: name, Size: size, Mode: 0o644, ModTime: t, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
}

// copyChecked writes one file's entry, failing when the file no longer
// hashes as it did for the index.
func copyChecked(tw *tar.Writer, f File, src string, t time.Time) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := tw.WriteHeader(header(f.Path, f.Size, t)); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(in, f.Size))
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%s changed while the bundle was written: run create again once nothing writes it", src)
	}
	return nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	if !st.Mode().IsRegular() {
		return "", 0, fmt.Errorf("%s is not a regular file", p)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
