// Package artifact is the controller's artifact store, the air-gap source
// of what nodes install: content-addressed blobs on disk, their metadata
// (name, version, platform, kind, who pushed) in the controller's store.
//
// On disk, under the data dir:
//
//	artifacts/sha256/<hex>   one file per content, named by its SHA-256
//	artifacts/tmp/           pushes in progress
//
// A push is written to a temp file while it is hashed, synced, and renamed
// to its digest only once the whole content arrived as announced; then the
// metadata is stored. A push cut short removes its temp file, and Open
// removes what a crash left behind: temp files, and blobs whose metadata
// was never stored.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// Errors, for errors.Is; the messages say what to change.
var (
	// ErrInvalid: the metadata or reference is malformed.
	ErrInvalid = errors.New("invalid artifact")
	// ErrTooLarge: over the controller's size limit.
	ErrTooLarge = errors.New("artifact too large")
	// ErrContent: what arrived is not what was announced (size, SHA-256).
	ErrContent = errors.New("artifact content does not match")
	// ErrAmbiguous: name@version exists for several platforms.
	ErrAmbiguous = errors.New("artifact reference is ambiguous")
)

// Defaults.
const (
	// DefaultMaxBytes is the size limit when Options.MaxBytes is 0: room
	// for a large image bundle.
	DefaultMaxBytes = 16 << 30
	// DefaultPlatform is the platform of a push that names none.
	DefaultPlatform = "linux/amd64"
)

// Meta is the part of the controller's store that holds artifact metadata.
type Meta interface {
	PutArtifact(ctx context.Context, a store.Artifact) (store.Artifact, bool, error)
	GetArtifact(ctx context.Context, digest string) (store.Artifact, error)
	FindArtifacts(ctx context.Context, name, version string) ([]store.Artifact, error)
	ListArtifacts(ctx context.Context) ([]store.Artifact, error)
	DeleteArtifact(ctx context.Context, digest string) error
}

var _ Meta = store.Store(nil)

// Options configure Open.
type Options struct {
	// Dir holds the blobs: <data dir>/artifacts.
	Dir  string
	Meta Meta
	// MaxBytes is the largest artifact accepted; 0 is DefaultMaxBytes.
	MaxBytes int64
	// MaxBytesHint names the setting that raises MaxBytes, for the error.
	MaxBytesHint string
	Logger       *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Store is the artifact store.
type Store struct {
	opts Options
	log  *slog.Logger
	// mu orders a push's rename and metadata write against a removal, so
	// that a blob is never removed under an artifact that names it.
	mu sync.Mutex
}

// Open makes the store's directories and removes what a crash left
// behind: temp files of pushes, and blobs without metadata.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Dir == "" || opts.Meta == nil {
		return nil, errors.New("artifact: Dir and Meta must be set")
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("artifact size limit %d is negative", opts.MaxBytes)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{opts: opts, log: opts.Logger}
	for _, d := range []string{s.blobDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("artifact store: %w", err)
		}
	}
	if err := s.sweep(ctx); err != nil {
		return nil, fmt.Errorf("artifact store: clean up after the last run: %w", err)
	}
	return s, nil
}

func (s *Store) blobDir() string { return filepath.Join(s.opts.Dir, "sha256") }
func (s *Store) tmpDir() string  { return filepath.Join(s.opts.Dir, "tmp") }

// MaxBytes is the largest artifact the store accepts.
func (s *Store) MaxBytes() int64 { return s.opts.MaxBytes }

// sweep removes temp files and blobs that no artifact names.
func (s *Store) sweep(ctx context.Context) error {
	tmps, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return err
	}
	for _, e := range tmps {
		if err := os.Remove(filepath.Join(s.tmpDir(), e.Name())); err != nil {
			return err
		}
		s.log.InfoContext(ctx, "removed the temp file of a push cut short", "file", e.Name())
	}
	blobs, err := os.ReadDir(s.blobDir())
	if err != nil {
		return err
	}
	for _, e := range blobs {
		_, err := s.opts.Meta.GetArtifact(ctx, "sha256:"+e.Name())
		if errors.Is(err, store.ErrNotFound) {
			if err := os.Remove(filepath.Join(s.blobDir(), e.Name())); err != nil {
				return err
			}
			s.log.InfoContext(ctx, "removed a blob whose push did not finish", "digest", "sha256:"+e.Name())
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

var (
	nameRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	platformRe = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`)
	hexRe      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Kinds maps the names operators use to kinds.
var Kinds = map[string]store.ArtifactKind{
	"binary": store.ArtifactBinary,
	"image":  store.ArtifactImage,
	"file":   store.ArtifactFile,
}

// ParseDigest checks a digest, "sha256:<64 lower-case hex digits>", and
// returns its hex part.
func ParseDigest(d string) (string, error) {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || !hexRe.MatchString(h) {
		return "", fmt.Errorf("%w: digest %q: want sha256:<64 lower-case hex digits>", ErrInvalid, d)
	}
	return h, nil
}

// Push is what a push announces before its content.
type Push struct {
	Name, Version string
	// Platform is os/arch; "" is DefaultPlatform.
	Platform string
	// Kind is "" for ArtifactFile.
	Kind store.ArtifactKind
	Size int64
	// ExpectedSHA256 (hex, "sha256:" prefix optional) is checked when set.
	ExpectedSHA256 string
	PushedBy       string
}

// Check fills p's defaults and checks it against the store's limits; a
// push is refused by Check before any content is read.
func (s *Store) Check(p *Push) error {
	var errs []string
	if p.Platform == "" {
		p.Platform = DefaultPlatform
	}
	if p.Kind == "" {
		p.Kind = store.ArtifactFile
	}
	if !nameRe.MatchString(p.Name) {
		errs = append(errs, fmt.Sprintf("name %q: want 1 to 128 letters, digits, '.', '_', '-' or '+', starting with a letter or digit", p.Name))
	}
	if !nameRe.MatchString(p.Version) {
		errs = append(errs, fmt.Sprintf("version %q: want 1 to 128 letters, digits, '.', '_', '-' or '+', starting with a letter or digit", p.Version))
	}
	if !platformRe.MatchString(p.Platform) {
		errs = append(errs, fmt.Sprintf("platform %q: want os/arch in lower case, e.g. linux/amd64", p.Platform))
	}
	switch p.Kind {
	case store.ArtifactBinary, store.ArtifactImage, store.ArtifactFile:
	default:
		errs = append(errs, fmt.Sprintf("kind %q: want binary, image or file", p.Kind))
	}
	if p.ExpectedSHA256 != "" {
		h := strings.ToLower(strings.TrimPrefix(p.ExpectedSHA256, "sha256:"))
		if !hexRe.MatchString(h) {
			errs = append(errs, fmt.Sprintf("expected sha256 %q: want 64 hex digits", p.ExpectedSHA256))
		}
		p.ExpectedSHA256 = h
	}
	if p.Size < 0 {
		errs = append(errs, fmt.Sprintf("size %d is negative", p.Size))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	if p.Size > s.opts.MaxBytes {
		return fmt.Errorf("%w: %s@%s is %s; the controller takes at most %s (%s)", ErrTooLarge, p.Name, p.Version, sizeString(p.Size), sizeString(s.opts.MaxBytes), s.opts.MaxBytesHint)
	}
	return nil
}

// Push stores content under p. It returns the artifact and whether it is
// new: the same content under the same name, version and platform is
// answered with the stored artifact. On any error nothing is stored and no
// temp file is left: content that ends before p.Size, runs past it, or
// hashes other than p.ExpectedSHA256, a taken name (store.ErrAlreadyExists
// naming its digest), a read error (a push cut short).
func (s *Store) Push(ctx context.Context, p Push, content io.Reader) (store.Artifact, bool, error) {
	if err := s.Check(&p); err != nil {
		return store.Artifact{}, false, err
	}
	if p.ExpectedSHA256 != "" {
		// A name bound to other content is refused before the upload.
		if err := s.checkBinding(ctx, p, "sha256:"+p.ExpectedSHA256); err != nil {
			return store.Artifact{}, false, err
		}
	}
	tmp, err := os.CreateTemp(s.tmpDir(), "push-*")
	if err != nil {
		return store.Artifact{}, false, fmt.Errorf("artifact store: %w", err)
	}
	defer func() {
		tmp.Close()
		_ = os.Remove(tmp.Name()) // gone already once renamed
	}()
	h := sha256.New()
	// One byte past the size tells content that runs over from content
	// that ends where it should.
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(content, p.Size+1))
	if err != nil {
		return store.Artifact{}, false, fmt.Errorf("push of %s@%s cut short after %d of %d bytes, nothing stored: %w", p.Name, p.Version, n, p.Size, err)
	}
	if n != p.Size {
		return store.Artifact{}, false, fmt.Errorf("%w: %s@%s announced %d bytes and sent %s, nothing stored", ErrContent, p.Name, p.Version, p.Size, moreOrLess(n, p.Size))
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if p.ExpectedSHA256 != "" && sum != p.ExpectedSHA256 {
		return store.Artifact{}, false, fmt.Errorf("%w: %s@%s hashes to sha256:%s, not the expected sha256:%s; nothing stored (is it the file you meant?)", ErrContent, p.Name, p.Version, sum, p.ExpectedSHA256)
	}
	if err := tmp.Sync(); err != nil {
		return store.Artifact{}, false, fmt.Errorf("artifact store: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return store.Artifact{}, false, fmt.Errorf("artifact store: %w", err)
	}
	a := store.Artifact{
		Digest:   "sha256:" + sum,
		Name:     p.Name,
		Version:  p.Version,
		Platform: p.Platform,
		Kind:     p.Kind,
		Size:     n,
		Created:  s.opts.Now().UTC(),
		PushedBy: p.PushedBy,
	}
	return s.commit(ctx, tmp.Name(), a)
}

// commit moves the pushed content into place and stores its metadata; a
// refused metadata write takes back a blob it put there.
func (s *Store) commit(ctx context.Context, tmp string, a store.Artifact) (store.Artifact, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	blob := filepath.Join(s.blobDir(), strings.TrimPrefix(a.Digest, "sha256:"))
	_, err := os.Stat(blob)
	existed := err == nil
	if !existed {
		if err := os.Rename(tmp, blob); err != nil {
			return store.Artifact{}, false, fmt.Errorf("artifact store: %w", err)
		}
		if err := syncDir(s.blobDir()); err != nil {
			_ = os.Remove(blob)
			return store.Artifact{}, false, fmt.Errorf("artifact store: %w", err)
		}
	}
	stored, created, err := s.opts.Meta.PutArtifact(ctx, a)
	if err != nil {
		if !existed {
			_ = os.Remove(blob)
		}
		if errors.Is(err, store.ErrAlreadyExists) {
			err = fmt.Errorf("%w; nothing stored (push under a new version, or remove the stored artifact first with 'budctl artifacts rm')", err)
		}
		return store.Artifact{}, false, err
	}
	return stored, created, nil
}

// checkBinding refuses a push whose name, version and platform name other
// content than digest.
func (s *Store) checkBinding(ctx context.Context, p Push, digest string) error {
	found, err := s.opts.Meta.FindArtifacts(ctx, p.Name, p.Version)
	if err != nil {
		return err
	}
	for _, a := range found {
		if a.Platform == p.Platform && a.Digest != digest {
			return fmt.Errorf("artifact %s@%s (%s) is already bound to other content, %s: %w; nothing sent (push under a new version, or remove the stored artifact first with 'budctl artifacts rm')", p.Name, p.Version, p.Platform, a.Digest, store.ErrAlreadyExists)
		}
	}
	return nil
}

// Resolve finds the artifact ref names: a digest, or name@version (with
// platform, needed only when the name and version exist for several).
func (s *Store) Resolve(ctx context.Context, ref, platform string) (store.Artifact, error) {
	if strings.HasPrefix(ref, "sha256:") {
		if _, err := ParseDigest(ref); err != nil {
			return store.Artifact{}, err
		}
		a, err := s.opts.Meta.GetArtifact(ctx, ref)
		if err == nil && platform != "" && a.Platform != platform {
			return store.Artifact{}, fmt.Errorf("artifact %s is for %s, not %s: %w", ref, a.Platform, platform, store.ErrNotFound)
		}
		return a, err
	}
	name, version, ok := strings.Cut(ref, "@")
	if !ok || !nameRe.MatchString(name) || !nameRe.MatchString(version) {
		return store.Artifact{}, fmt.Errorf("%w: reference %q: want sha256:<hex> or name@version", ErrInvalid, ref)
	}
	found, err := s.opts.Meta.FindArtifacts(ctx, name, version)
	if err != nil {
		return store.Artifact{}, err
	}
	var platforms []string
	for _, a := range found {
		if a.Platform == platform {
			return a, nil
		}
		platforms = append(platforms, a.Platform)
	}
	switch {
	case len(found) == 0:
		return store.Artifact{}, fmt.Errorf("artifact %s: %w (see 'budctl artifacts list')", ref, store.ErrNotFound)
	case platform != "":
		return store.Artifact{}, fmt.Errorf("artifact %s for %s: %w; it exists for %s", ref, platform, store.ErrNotFound, strings.Join(platforms, ", "))
	case len(found) > 1:
		return store.Artifact{}, fmt.Errorf("%w: %s exists for %s; name the platform", ErrAmbiguous, ref, strings.Join(platforms, ", "))
	}
	return found[0], nil
}

// List returns every artifact by name, version, platform.
func (s *Store) List(ctx context.Context) ([]store.Artifact, error) {
	return s.opts.Meta.ListArtifacts(ctx)
}

// Remove removes the artifact ref names and its content.
func (s *Store) Remove(ctx context.Context, ref, platform string) (store.Artifact, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.Resolve(ctx, ref, platform)
	if err != nil {
		return a, err
	}
	if err := s.opts.Meta.DeleteArtifact(ctx, a.Digest); err != nil {
		return a, err
	}
	blob := filepath.Join(s.blobDir(), strings.TrimPrefix(a.Digest, "sha256:"))
	if err := os.Remove(blob); err != nil && !errors.Is(err, os.ErrNotExist) {
		// The metadata is gone: Open removes the blob next time.
		s.log.WarnContext(ctx, "remove artifact content", "digest", a.Digest, "error", err)
	}
	return a, nil
}

// Open opens the content of the artifact with digest for reading.
// store.ErrNotFound naming the digest when there is none.
func (s *Store) Open(ctx context.Context, digest string) (*os.File, store.Artifact, error) {
	h, err := ParseDigest(digest)
	if err != nil {
		return nil, store.Artifact{}, err
	}
	a, err := s.opts.Meta.GetArtifact(ctx, digest)
	if err != nil {
		return nil, a, err
	}
	f, err := os.Open(filepath.Join(s.blobDir(), h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, a, fmt.Errorf("artifact %s@%s (%s): its content is missing from %s; push it again: %w", a.Name, a.Version, digest, s.blobDir(), store.ErrNotFound)
	}
	if err != nil {
		return nil, a, fmt.Errorf("artifact store: %w", err)
	}
	return f, a, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func moreOrLess(got, want int64) string {
	if got > want {
		return "more"
	}
	return fmt.Sprintf("only %d", got)
}

// sizeString writes n bytes in the largest binary unit that keeps it
// readable.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
