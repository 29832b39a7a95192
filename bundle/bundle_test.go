package bundle

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixture writes two files and a manifest naming them, and a key pair.
type fixture struct {
	dir      string
	manifest string
	priv     ed25519.PrivateKey
	pub      ed25519.PublicKey
	kubelet  []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	f.kubelet = bytes.Repeat([]byte("kubelet binary "), 10000)
	write(t, filepath.Join(f.dir, "kubelet"), f.kubelet)
	write(t, filepath.Join(f.dir, "bud-images.tar.gz"), []byte("images"))
	write(t, filepath.Join(f.dir, "bud-agent_1.2.3_amd64.deb"), []byte("a package"))
	f.manifest = filepath.Join(f.dir, "bundle.yaml")
	write(t, f.manifest, []byte(`packages:
  - {name: bud-agent.deb, version: 1.2.3, path: bud-agent_1.2.3_amd64.deb}
artifacts:
  - {name: kubelet, version: v1.37.2, platform: linux/amd64, kind: binary, path: ./kubelet}
  - {name: bud-images, version: v1.2.3, kind: image, path: ./bud-images.tar.gz}
`))
	var err error
	if f.pub, err = GenerateKey(filepath.Join(f.dir, "key"), filepath.Join(f.dir, "key.pub")); err != nil {
		t.Fatal(err)
	}
	if f.priv, err = LoadPrivateKey(filepath.Join(f.dir, "key")); err != nil {
		t.Fatal(err)
	}
	return f
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) create(t *testing.T) []byte {
	t.Helper()
	m, err := LoadManifest(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := Create(&buf, m, f.priv, time.Now()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCreateVerify(t *testing.T) {
	f := newFixture(t)
	b := f.create(t)
	pub, err := LoadPublicKey(filepath.Join(f.dir, "key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := Verify(bytes.NewReader(b), pub)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(idx.Files) != 3 {
		t.Fatalf("index lists %d files; want 3", len(idx.Files))
	}
	got := idx.Files[1]
	want := File{Path: "files/kubelet/v1.37.2/linux-amd64/kubelet", Size: int64(len(f.kubelet)), Section: SectionArtifact,
		Name: "kubelet", Version: "v1.37.2", Platform: "linux/amd64", Kind: "binary", SHA256: got.SHA256}
	if got != want || len(got.SHA256) != 64 {
		t.Errorf("kubelet's entry = %+v; want %+v", got, want)
	}
	if p := idx.Files[0]; p.Section != SectionPackage || p.Kind != "file" || idx.Files[2].Kind != "image" {
		t.Errorf("defaults: %+v, %+v", p, idx.Files[2])
	}

	// Reading it streams each file's content.
	r, err := Open(bytes.NewReader(b), pub)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for {
		file, content, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		c, err := io.ReadAll(content)
		if err != nil {
			t.Fatalf("%s: %v", file.Path, err)
		}
		if file.Name == "kubelet" && !bytes.Equal(c, f.kubelet) {
			t.Errorf("kubelet's content differs")
		}
		names = append(names, file.Name)
	}
	if strings.Join(names, ",") != "bud-agent.deb,kubelet,bud-images" {
		t.Errorf("files in order: %v", names)
	}
}

// wantErr checks that err is target and its message names what it should.
func wantErr(t *testing.T, err, target error, names ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v; want %v", err, target)
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("error %q does not name %q", err, n)
		}
	}
}

func TestVerifyFaults(t *testing.T) {
	f := newFixture(t)
	good := f.create(t)
	kubeletAt := bytes.Index(good, f.kubelet[:64])
	indexAt := bytes.Index(good, []byte(`"format"`))
	if kubeletAt < 0 || indexAt < 0 {
		t.Fatal("fixture: content not found in the tarball")
	}
	flip := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x20
		return b
	}
	_, other, _ := ed25519.GenerateKey(nil)

	t.Run("tampered file", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(flip(kubeletAt+100)), f.pub)
		wantErr(t, err, ErrFile, "files/kubelet/v1.37.2/linux-amd64/kubelet", "sha256")
	})
	t.Run("tampered index", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(flip(indexAt+3)), f.pub)
		wantErr(t, err, ErrSignature, "index.sig does not verify", KeyID(f.pub))
	})
	t.Run("wrong key", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(good), other.Public().(ed25519.PublicKey))
		wantErr(t, err, ErrSignature, "signed by key "+KeyID(f.pub))
	})
	t.Run("truncated in a file", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(good[:kubeletAt+1000]), f.pub)
		wantErr(t, err, ErrFile, "files/kubelet/v1.37.2/linux-amd64/kubelet ends after", "the bundle is truncated")
	})
	t.Run("truncated between files", func(t *testing.T) {
		// The tar header of the third file starts where the second's
		// content, padded to 512 bytes, ends.
		end := kubeletAt + (len(f.kubelet)+511)/512*512
		_, err := Verify(bytes.NewReader(good[:end]), f.pub)
		wantErr(t, err, ErrFile, "files/bud-images/v1.2.3/linux-amd64/bud-images.tar.gz is missing", "2 of the index's 3")
	})
	t.Run("truncated in the index", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(good[:indexAt+10]), f.pub)
		wantErr(t, err, ErrFormat, IndexName)
	})
	t.Run("empty", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(nil), f.pub)
		wantErr(t, err, ErrFormat, IndexName)
	})
	t.Run("a file not in the index", func(t *testing.T) {
		var buf bytes.Buffer
		// The good bundle less its two zero blocks of trailer, then one more entry.
		buf.Write(good[:len(good)-1024])
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Name: "files/extra", Size: 2, Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte("hi"))
		tw.Close()
		_, err := Verify(bytes.NewReader(buf.Bytes()), f.pub)
		wantErr(t, err, ErrFile, "files/extra is in the bundle but not in its signed index")
	})
}

func TestManifestFaults(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name, manifest, want string
	}{
		{"missing file", "artifacts:\n  - {name: kubelet, version: v1, path: ./nope}\n", "artifacts[0] (kubelet@v1): open " + filepath.Join(f.dir, "nope") + ": no such file"},
		{"unknown key", "artifacts:\n  - {name: kubelet, version: v1, path: ./kubelet, arch: amd64}\n", "field arch not found"},
		{"unknown section", "images: []\n", "field images not found"},
		{"no version", "artifacts:\n  - {name: kubelet, path: ./kubelet}\n", `artifacts[0]: version ""`},
		{"bad kind", "plugins:\n  - {name: p, version: v1, kind: exe, path: ./kubelet}\n", `plugins[0]: kind "exe"`},
		{"bad platform", "artifacts:\n  - {name: k, version: v1, platform: amd64, path: ./kubelet}\n", `platform "amd64"`},
		{"twice", "artifacts:\n  - {name: k, version: v1, path: ./kubelet}\n  - {name: k, version: v1, path: ./bud-images.tar.gz}\n", "artifacts[1]: k@v1 (linux/amd64) is artifacts[0] already"},
		{"same content twice", "artifacts:\n  - {name: k, version: v1, path: ./kubelet}\n  - {name: k2, version: v1, path: ./kubelet}\n", "has the same content as artifacts[0]"},
		{"a directory", "artifacts:\n  - {name: k, version: v1, path: .}\n", "is not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(f.dir, "m.yaml")
			write(t, p, []byte(c.manifest))
			m, err := LoadManifest(p)
			if err == nil {
				var buf bytes.Buffer
				_, err = Create(&buf, m, f.priv, time.Now())
				if err != nil && buf.Len() != 0 {
					t.Errorf("Create failed (%v) after writing %d bytes", err, buf.Len())
				}
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want one containing %q", err, c.want)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "k"), filepath.Join(dir, "k.pub")
	if _, err := GenerateKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v; want %o", p, err, fi.Mode().Perm(), mode)
		}
	}
	before, _ := os.ReadFile(priv)
	if _, err := GenerateKey(priv, filepath.Join(dir, "other.pub")); err == nil || !strings.Contains(err.Error(), "never overwrites") {
		t.Errorf("keygen over an existing key: %v", err)
	}
	if after, _ := os.ReadFile(priv); !bytes.Equal(before, after) {
		t.Error("keygen changed an existing key")
	}
	if _, err := LoadPublicKey(priv); err == nil || !strings.Contains(err.Error(), "--public") {
		t.Errorf("a private key as the public one: %v", err)
	}
	if _, err := LoadPrivateKey(pub); err == nil || !strings.Contains(err.Error(), "--private") {
		t.Errorf("a public key as the private one: %v", err)
	}
}
