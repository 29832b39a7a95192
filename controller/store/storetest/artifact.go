package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// artifactTests are the ArtifactStore's part of the suite (Run calls them).
var artifactTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"Artifacts", testArtifacts},
	{"ArtifactConflicts", testArtifactConflicts},
	{"ArtifactPutConcurrent", testArtifactPutConcurrent},
	{"ArtifactCanceledContext", testArtifactCanceledContext},
}

// NewArtifact is an artifact with every field set, its digest that of
// content.
func NewArtifact(name, version, platform, content string) store.Artifact {
	sum := sha256.Sum256([]byte(content))
	return store.Artifact{
		Digest:   "sha256:" + hex.EncodeToString(sum[:]),
		Name:     name,
		Version:  version,
		Platform: platform,
		Kind:     store.ArtifactBinary,
		Size:     int64(len(content)),
		Created:  Base,
		PushedBy: "alice",
	}
}

func testArtifacts(t *testing.T, s store.Store) {
	if as, err := s.ListArtifacts(ctx(t)); err != nil || len(as) != 0 {
		t.Fatalf("ListArtifacts on an empty store = %v, %v", as, err)
	}
	missing := NewArtifact("x", "1", "linux/amd64", "missing").Digest
	_, err := s.GetArtifact(ctx(t), missing)
	notFound(t, "GetArtifact(unknown)", err, missing)
	notFound(t, "DeleteArtifact(unknown)", s.DeleteArtifact(ctx(t), missing), missing)

	// Put out of order; listed by name, version, platform. "kube" sorts
	// before "kube-proxy" although '-' sorts before 'l' of "kubelet".
	arm := NewArtifact("kubelet", "v1.37.2", "linux/arm64", "kubelet arm")
	amd := NewArtifact("kubelet", "v1.37.2", "linux/amd64", "kubelet amd")
	old := NewArtifact("kubelet", "v1.36.0", "linux/amd64", "kubelet old")
	proxy := NewArtifact("kube-proxy", "v1.37.2", "linux/amd64", "proxy")
	kube := NewArtifact("kube", "1", "linux/amd64", "kube")
	img := NewArtifact("pause", "3.10", "linux/amd64", "image")
	img.Kind, img.PushedBy = store.ArtifactImage, ""
	for _, a := range []store.Artifact{arm, img, amd, proxy, old, kube} {
		got, created, err := s.PutArtifact(ctx(t), a)
		if err != nil || !created || !reflect.DeepEqual(got, a) {
			t.Fatalf("PutArtifact(%s@%s %s) = %+v, %v, %v; want it created", a.Name, a.Version, a.Platform, got, created, err)
		}
	}
	if got, err := s.GetArtifact(ctx(t), img.Digest); err != nil || !reflect.DeepEqual(got, img) {
		t.Errorf("GetArtifact(pause) = %+v, %v; want %+v", got, err, img)
	}
	list, err := s.ListArtifacts(ctx(t))
	must(t, err)
	if want := []store.Artifact{kube, proxy, old, amd, arm, img}; !reflect.DeepEqual(list, want) {
		t.Errorf("ListArtifacts = %s; want %s", artifactNames(list), artifactNames(want))
	}
	found, err := s.FindArtifacts(ctx(t), "kubelet", "v1.37.2")
	must(t, err)
	if !reflect.DeepEqual(found, []store.Artifact{amd, arm}) {
		t.Errorf("FindArtifacts(kubelet, v1.37.2) = %s; want amd64, arm64", artifactNames(found))
	}
	// A prefix of a name or a version finds nothing.
	for _, nv := range [][2]string{{"kube", "v1.37.2"}, {"kubelet", "v1.37"}, {"nope", "1"}} {
		if found, err := s.FindArtifacts(ctx(t), nv[0], nv[1]); err != nil || len(found) != 0 {
			t.Errorf("FindArtifacts(%s, %s) = %s, %v; want none", nv[0], nv[1], artifactNames(found), err)
		}
	}

	// The same artifact again is the stored one, unchanged.
	again := amd
	again.Created, again.PushedBy = Base.Add(1), "bob"
	got, created, err := s.PutArtifact(ctx(t), again)
	if err != nil || created || !reflect.DeepEqual(got, amd) {
		t.Errorf("PutArtifact of a stored artifact = %+v, %v, %v; want the stored one, not created", got, created, err)
	}

	must(t, s.DeleteArtifact(ctx(t), amd.Digest))
	_, err = s.GetArtifact(ctx(t), amd.Digest)
	notFound(t, "GetArtifact after DeleteArtifact", err, amd.Digest)
	notFound(t, "DeleteArtifact twice", s.DeleteArtifact(ctx(t), amd.Digest), amd.Digest)
	if found, _ := s.FindArtifacts(ctx(t), "kubelet", "v1.37.2"); !reflect.DeepEqual(found, []store.Artifact{arm}) {
		t.Errorf("FindArtifacts after deleting amd64 = %s; want arm64", artifactNames(found))
	}
	// Its name is free for other content.
	other := NewArtifact("kubelet", "v1.37.2", "linux/amd64", "rebuilt")
	if _, created, err := s.PutArtifact(ctx(t), other); err != nil || !created {
		t.Errorf("PutArtifact of new content under a freed name = %v, %v", created, err)
	}
}

// Taken digests and names are refused, naming what holds them, and change
// nothing.
func testArtifactConflicts(t *testing.T, s store.Store) {
	a := NewArtifact("kubelet", "v1.37.2", "linux/amd64", "a")
	_, _, err := s.PutArtifact(ctx(t), a)
	must(t, err)
	before, err := s.ListArtifacts(ctx(t))
	must(t, err)

	sameName := NewArtifact("kubelet", "v1.37.2", "linux/amd64", "other content")
	if _, _, err := s.PutArtifact(ctx(t), sameName); !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), a.Digest) {
		t.Errorf("PutArtifact of other content under a taken name = %v; want ErrAlreadyExists naming %s", err, a.Digest)
	}
	sameContent := a
	sameContent.Version = "v1.37.3"
	if _, _, err := s.PutArtifact(ctx(t), sameContent); !errors.Is(err, store.ErrAlreadyExists) || !strings.Contains(err.Error(), "kubelet@v1.37.2") {
		t.Errorf("PutArtifact of stored content under another version = %v; want ErrAlreadyExists naming kubelet@v1.37.2", err)
	}
	after, err := s.ListArtifacts(ctx(t))
	must(t, err)
	if !reflect.DeepEqual(after, before) {
		t.Errorf("refused PutArtifacts changed the store: %s -> %s", artifactNames(before), artifactNames(after))
	}
	if _, err := s.GetArtifact(ctx(t), sameName.Digest); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused content is stored: %v", err)
	}
}

// Racing puts of one name with different content: exactly one wins.
func testArtifactPutConcurrent(t *testing.T, s store.Store) {
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, created, err := s.PutArtifact(ctx(t), NewArtifact("runc", "1.3", "linux/amd64", strings.Repeat("x", i+1)))
			if err != nil && !errors.Is(err, store.ErrAlreadyExists) {
				t.Errorf("PutArtifact: %v", err)
			}
			if created {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	list, err := s.ListArtifacts(ctx(t))
	must(t, err)
	if wins != 1 || len(list) != 1 {
		t.Errorf("%d concurrent puts of one name: %d created, %d stored; want 1 and 1", n, wins, len(list))
	}
}

// An artifact call with a done context fails with its error and changes
// nothing.
func testArtifactCanceledContext(t *testing.T, s store.Store) {
	a := NewArtifact("kubelet", "v1.37.2", "linux/amd64", "a")
	_, _, err := s.PutArtifact(ctx(t), a)
	must(t, err)
	before, err := s.ListArtifacts(ctx(t))
	must(t, err)

	done, cancel := context.WithCancel(ctx(t))
	cancel()
	for name, call := range map[string]func() error{
		"PutArtifact": func() error {
			_, _, err := s.PutArtifact(done, NewArtifact("runc", "1", "linux/amd64", "b"))
			return err
		},
		"GetArtifact":    func() error { _, err := s.GetArtifact(done, a.Digest); return err },
		"FindArtifacts":  func() error { _, err := s.FindArtifacts(done, a.Name, a.Version); return err },
		"ListArtifacts":  func() error { _, err := s.ListArtifacts(done); return err },
		"DeleteArtifact": func() error { return s.DeleteArtifact(done, a.Digest) },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v, want context.Canceled", name, err)
		}
	}
	if after, err := s.ListArtifacts(ctx(t)); err != nil || !reflect.DeepEqual(after, before) {
		t.Errorf("artifact calls with a canceled context changed the store: %s -> %s (%v)", artifactNames(before), artifactNames(after), err)
	}
}

func artifactNames(as []store.Artifact) string {
	names := make([]string, len(as))
	for i, a := range as {
		names[i] = a.Name + "@" + a.Version + " " + a.Platform
	}
	return "[" + strings.Join(names, ", ") + "]"
}
