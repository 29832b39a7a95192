package artifact

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bud-ecosystem/budfleet/controller/store"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
)

type rig struct {
	dir  string
	meta *bolt.Store
	s    *Store
}

func newRig(t *testing.T, maxBytes int64) *rig {
	t.Helper()
	dir := t.TempDir()
	meta, err := bolt.Open(filepath.Join(dir, "controller.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	r := &rig{dir: filepath.Join(dir, "artifacts"), meta: meta}
	r.reopen(t, maxBytes)
	return r
}

func (r *rig) reopen(t *testing.T, maxBytes int64) {
	t.Helper()
	s, err := Open(t.Context(), Options{Dir: r.dir, Meta: r.meta, MaxBytes: maxBytes, MaxBytesHint: "--artifact-max-size"})
	if err != nil {
		t.Fatal(err)
	}
	r.s = s
}

// files lists what is under the store's directory, as paths relative to it.
func (r *rig) files(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(r.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(r.dir, p)
			out = append(out, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func content(n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(n)})
	_, _ = rng.Read(b)
	return b
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func push(name, version string, b []byte) Push {
	return Push{Name: name, Version: version, Kind: store.ArtifactBinary, Size: int64(len(b)), PushedBy: "alice"}
}

func TestPushStoresContentByDigest(t *testing.T) {
	r := newRig(t, 0)
	b := content(3<<20 + 17)
	a, created, err := r.s.Push(t.Context(), push("kubelet", "v1.37.2", b), bytes.NewReader(b))
	if err != nil || !created {
		t.Fatalf("Push = %v, %v", created, err)
	}
	want := digestOf(b)
	if a.Digest != want || a.Size != int64(len(b)) || a.Platform != DefaultPlatform || a.Kind != store.ArtifactBinary || a.PushedBy != "alice" || a.Created.IsZero() {
		t.Errorf("Push = %+v; want digest %s, %d bytes, linux/amd64, binary, by alice", a, want, len(b))
	}
	if got := r.files(t); len(got) != 1 || got[0] != filepath.Join("sha256", strings.TrimPrefix(want, "sha256:")) {
		t.Errorf("files = %v; want only sha256/<hex>", got)
	}
	f, got, err := r.s.Open(t.Context(), want)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	read, _ := io.ReadAll(f)
	if !bytes.Equal(read, b) || got.Digest != want {
		t.Errorf("Open read %d bytes (%s); want the %d pushed", len(read), got.Digest, len(b))
	}

	// Again: the stored artifact, nothing new.
	again, created, err := r.s.Push(t.Context(), Push{Name: "kubelet", Version: "v1.37.2", Kind: store.ArtifactBinary, Size: int64(len(b)), PushedBy: "bob"}, bytes.NewReader(b))
	if err != nil || created || again != a {
		t.Errorf("second Push = %+v, %v, %v; want the first artifact, not created", again, created, err)
	}
	if got := r.files(t); len(got) != 1 {
		t.Errorf("files after the second push = %v", got)
	}
}

// An empty file is an artifact like any other.
func TestPushEmpty(t *testing.T) {
	r := newRig(t, 0)
	a, created, err := r.s.Push(t.Context(), push("marker", "1", nil), bytes.NewReader(nil))
	if err != nil || !created || a.Size != 0 || a.Digest != digestOf(nil) {
		t.Fatalf("Push of nothing = %+v, %v, %v", a, created, err)
	}
	f, _, err := r.s.Open(t.Context(), a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// cutReader gives n bytes of b and then fails, as a stream that broke.
type cutReader struct {
	r *bytes.Reader
	n int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errors.New("stream broke")
	}
	p = p[:min(len(p), c.n)]
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

// Every refused push stores nothing and leaves no temp file.
func TestRefusedPushesStoreNothing(t *testing.T) {
	r := newRig(t, 4<<20)
	b := content(2 << 20)
	kept := content(100)
	if _, _, err := r.s.Push(t.Context(), push("runc", "1.3.0", kept), bytes.NewReader(kept)); err != nil {
		t.Fatal(err)
	}
	keptFiles := r.files(t)
	wrongSum := digestOf([]byte("other"))

	for _, tc := range []struct {
		name    string
		p       Push
		content io.Reader
		want    error
		says    string
	}{
		{"cut half way", push("kubelet", "v1", b), &cutReader{r: bytes.NewReader(b), n: len(b) / 2}, nil, "cut short after 1048576 of 2097152 bytes"},
		{"ends early", func() Push { p := push("kubelet", "v1", b); p.Size++; return p }(), bytes.NewReader(b), ErrContent, "sent only 2097152"},
		{"runs over", func() Push { p := push("kubelet", "v1", b); p.Size--; return p }(), bytes.NewReader(b), ErrContent, "sent more"},
		{"wrong sha256", func() Push { p := push("kubelet", "v1", b); p.ExpectedSHA256 = wrongSum; return p }(), bytes.NewReader(b), ErrContent, "not the expected " + wrongSum},
		{"over the limit", push("kubelet", "v1", content(4<<20+1)), bytes.NewReader(content(4<<20 + 1)), ErrTooLarge, "at most 4.0 MiB (--artifact-max-size)"},
		{"name taken by other content", push("runc", "1.3.0", b), bytes.NewReader(b), store.ErrAlreadyExists, "already bound to other content, " + digestOf(kept)},
		{"content stored under another name", push("runc", "1.3.1", kept), bytes.NewReader(kept), store.ErrAlreadyExists, "already stored as runc@1.3.0"},
		{"bad name", push("../x", "v1", b), bytes.NewReader(b), ErrInvalid, `name "../x"`},
		{"bad platform", func() Push { p := push("kubelet", "v1", b); p.Platform = "Linux"; return p }(), bytes.NewReader(b), ErrInvalid, "want os/arch"},
		{"bad kind", func() Push { p := push("kubelet", "v1", b); p.Kind = "tarball"; return p }(), bytes.NewReader(b), ErrInvalid, "want binary, image or file"},
		{"bad expected", func() Push { p := push("kubelet", "v1", b); p.ExpectedSHA256 = "abc"; return p }(), bytes.NewReader(b), ErrInvalid, "want 64 hex digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := r.s.Push(t.Context(), tc.p, tc.content)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Push = %v; want %v saying %q", err, tc.want, tc.says)
			}
			if got := r.files(t); !equal(got, keptFiles) {
				t.Errorf("files after a refused push = %v; want %v", got, keptFiles)
			}
			list, _ := r.s.List(t.Context())
			if len(list) != 1 {
				t.Errorf("artifacts after a refused push = %+v; want only runc@1.3.0", list)
			}
		})
	}

	// A name bound to other content is refused before the upload when the
	// push says what it will send.
	p := push("runc", "1.3.0", b)
	p.ExpectedSHA256 = digestOf(b)
	unread := &cutReader{r: bytes.NewReader(b), n: len(b)}
	if _, _, err := r.s.Push(t.Context(), p, unread); !errors.Is(err, store.ErrAlreadyExists) || unread.n != len(b) {
		t.Errorf("Push with expected sha256 under a taken name = %v after reading %d bytes; want ErrAlreadyExists, nothing read", err, len(b)-unread.n)
	}
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

func TestResolveAndRemove(t *testing.T) {
	r := newRig(t, 0)
	amdB, armB := content(10), content(11)
	amd, _, err := r.s.Push(t.Context(), push("kubelet", "v1.37.2", amdB), bytes.NewReader(amdB))
	if err != nil {
		t.Fatal(err)
	}
	p := push("kubelet", "v1.37.2", armB)
	p.Platform = "linux/arm64"
	arm, _, err := r.s.Push(t.Context(), p, bytes.NewReader(armB))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref, platform string
		want          store.Artifact
		err           error
		says          string
	}{
		{amd.Digest, "", amd, nil, ""},
		{"kubelet@v1.37.2", "linux/arm64", arm, nil, ""},
		{"kubelet@v1.37.2", "", store.Artifact{}, ErrAmbiguous, "exists for linux/amd64, linux/arm64; name the platform"},
		{"kubelet@v1.37.2", "linux/riscv64", store.Artifact{}, store.ErrNotFound, "it exists for linux/amd64, linux/arm64"},
		{"kubelet@v9", "", store.Artifact{}, store.ErrNotFound, "kubelet@v9"},
		{amd.Digest, "linux/arm64", store.Artifact{}, store.ErrNotFound, "is for linux/amd64"},
		{"sha256:ABC", "", store.Artifact{}, ErrInvalid, "want sha256:<64 lower-case hex digits>"},
		{"kubelet", "", store.Artifact{}, ErrInvalid, "want sha256:<hex> or name@version"},
	} {
		got, err := r.s.Resolve(t.Context(), tc.ref, tc.platform)
		if tc.err == nil {
			if err != nil || got != tc.want {
				t.Errorf("Resolve(%s, %q) = %+v, %v; want %+v", tc.ref, tc.platform, got, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Resolve(%s, %q) = %v; want %v saying %q", tc.ref, tc.platform, err, tc.err, tc.says)
		}
	}

	if _, err := r.s.Remove(t.Context(), "kubelet@v1.37.2", "linux/arm64"); err != nil {
		t.Fatal(err)
	}
	if got := r.files(t); len(got) != 1 || !strings.HasSuffix(got[0], strings.TrimPrefix(amd.Digest, "sha256:")) {
		t.Errorf("files after removing arm64 = %v; want only amd64's blob", got)
	}
	if _, _, err := r.s.Open(t.Context(), arm.Digest); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Open of a removed artifact = %v; want ErrNotFound", err)
	}
	// With one platform left the name needs none.
	if got, err := r.s.Remove(t.Context(), "kubelet@v1.37.2", ""); err != nil || got != amd {
		t.Errorf("Remove(kubelet@v1.37.2) = %+v, %v; want amd64", got, err)
	}
	if got := r.files(t); len(got) != 0 {
		t.Errorf("files after removing everything = %v", got)
	}
}

// What a crash leaves (a push's temp file, a blob renamed before its
// metadata was stored) is gone after Open; stored artifacts stay.
func TestOpenCleansUpACrash(t *testing.T) {
	r := newRig(t, 0)
	b := content(1000)
	a, _, err := r.s.Push(t.Context(), push("kubelet", "v1", b), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	orphan := strings.TrimPrefix(digestOf([]byte("orphan")), "sha256:")
	for _, p := range []string{filepath.Join(r.dir, "tmp", "push-123"), filepath.Join(r.dir, "sha256", orphan)} {
		if err := os.WriteFile(p, []byte("orphan"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r.reopen(t, 0)
	if got := r.files(t); len(got) != 1 || !strings.HasSuffix(got[0], strings.TrimPrefix(a.Digest, "sha256:")) {
		t.Errorf("files after reopening = %v; want only the stored artifact's blob", got)
	}
}
