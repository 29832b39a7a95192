// Package artifact brings artifacts from the controller's artifact store
// onto the node: the air-gap source of what the agent installs (kubelet,
// containerd, CNI plugins, image tarballs) and of what operators stage with
// the artifact.fetch command.
//
// A Fetcher keeps a cache under the agent's state dir:
//
//	<dir>/sha256/<hex>           verified content, named by its SHA-256
//	<dir>/sha256/<hex>.partial   a transfer in progress, or cut
//
// Content arrives in chunks over the agent's own mutual-TLS connection to
// the controller (NodeArtifactService.Fetch). Each chunk's CRC-32C is
// checked before it is written, so the partial file holds only chunks that
// arrived intact; a cut transfer resumes where the partial ends (after a
// controller restart, or an agent restart), and the whole SHA-256 is
// checked before the file is renamed into place.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
)

// Source is what the agent's capabilities take to get an artifact onto
// the node: Fetch returns the path of a file in the cache holding exactly
// the content with digest ("sha256:<hex>"), fetching it first unless it is
// cached. The file is the cache's: read or copy it, do not move or change
// it. A *Fetcher is a Source; tests use a fake.
type Source interface {
	Fetch(ctx context.Context, digest string) (path string, err error)
}

// Errors, for errors.Is.
var (
	// ErrNotFound: the controller holds no artifact with the digest.
	ErrNotFound = errors.New("artifact not found on the controller")
	// ErrCorrupt: a chunk failed its CRC-32C check on every try.
	ErrCorrupt = errors.New("artifact chunk corrupted")
	// ErrDigestMismatch: the whole content hashed to another digest.
	ErrDigestMismatch = errors.New("artifact digest mismatch")
	// ErrInvalidDigest: the digest is malformed.
	ErrInvalidDigest = errors.New("invalid artifact digest")
	// ErrNoCache: a nil *Fetcher, the agent's when it has no cache.
	ErrNoCache = errors.New("this agent keeps no artifact cache: it runs without a state dir or without its gRPC transport")
)

// Conns gives the connection to the controller to fetch over: the agent
// session's (agent/transport.GRPC.Conn), waiting for one while none is
// open.
type Conns interface {
	Conn(ctx context.Context) (grpc.ClientConnInterface, error)
}

// Defaults for Options.
const (
	DefaultChunkRetries = 3
	DefaultAttempts     = 10
	DefaultRetryWait    = time.Second
	maxRetryWait        = 10 * time.Second
)

// Options configure a Fetcher.
type Options struct {
	// Dir is the cache: <state dir>/artifacts.
	Dir   string
	Conns Conns
	// ChunkRetries is how many times a chunk that failed its check is
	// asked for again before the fetch fails (default 3).
	ChunkRetries int
	// Attempts is how many transfers in a row may break without bringing
	// a byte before the fetch fails (default 10); one that brings data
	// starts the count again.
	Attempts int
	// RetryWait is the first wait after a broken transfer, doubled up to
	// 10s (default 1s).
	RetryWait time.Duration
	Logger    *slog.Logger
}

// Fetcher fetches artifacts into its cache. Its methods may be called
// concurrently; fetches of one digest run one at a time.
type Fetcher struct {
	opts Options
	log  *slog.Logger

	mu    sync.Mutex
	locks map[string]*sync.Mutex // by digest
}

var _ Source = (*Fetcher)(nil)

// New checks opts and makes the cache directory.
func New(opts Options) (*Fetcher, error) {
	if opts.Dir == "" || opts.Conns == nil {
		return nil, errors.New("artifact: Dir and Conns must be set")
	}
	if opts.ChunkRetries == 0 {
		opts.ChunkRetries = DefaultChunkRetries
	}
	if opts.Attempts == 0 {
		opts.Attempts = DefaultAttempts
	}
	if opts.RetryWait == 0 {
		opts.RetryWait = DefaultRetryWait
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// Paths handed out stay valid whatever the working directory.
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	opts.Dir = dir
	if err := os.MkdirAll(filepath.Join(opts.Dir, "sha256"), 0o700); err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	return &Fetcher{opts: opts, log: opts.Logger, locks: map[string]*sync.Mutex{}}, nil
}

// Result is what one Get did.
type Result struct {
	Path   string
	Digest string
	Size   int64
	// Cached: the content was in the cache already; nothing was fetched.
	Cached bool
	// ResumedFrom are the offsets transfers resumed from, in order: where
	// a partial left by an earlier cut ended, where a transfer broken in
	// this fetch stopped, where a corrupted chunk began.
	ResumedFrom []int64
	// Received counts the content bytes that arrived, refused chunks
	// included: below Size when a fetch resumed from a partial.
	Received int64
}

// Fetch returns the path of the cached content with digest, fetching it
// first unless it is cached (Source).
func (f *Fetcher) Fetch(ctx context.Context, digest string) (string, error) {
	r, err := f.Get(ctx, digest)
	return r.Path, err
}

var hexRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (f *Fetcher) lock(digest string) func() {
	f.mu.Lock()
	l, ok := f.locks[digest]
	if !ok {
		l = &sync.Mutex{}
		f.locks[digest] = l
	}
	f.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Get is Fetch, saying what it did. A nil *Fetcher (an agent without a
// cache) fails every call with ErrNoCache, so it can be handed on as a
// Source all the same.
func (f *Fetcher) Get(ctx context.Context, digest string) (Result, error) {
	r := Result{Digest: digest}
	if f == nil {
		return r, ErrNoCache
	}
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || !hexRe.MatchString(h) {
		return r, fmt.Errorf("%w: %q: want sha256:<64 lower-case hex digits>", ErrInvalidDigest, digest)
	}
	defer f.lock(digest)()
	final := filepath.Join(f.opts.Dir, "sha256", h)
	if st, err := os.Stat(final); err == nil {
		r.Path, r.Size, r.Cached = final, st.Size(), true
		return r, nil
	}
	t, err := f.openPartial(final + ".partial")
	if err != nil {
		return r, err
	}
	defer t.file.Close()
	log := f.log.With("digest", digest)
	if t.offset > 0 {
		log.InfoContext(ctx, "resuming artifact fetch from a partial file", "offset", t.offset)
		r.ResumedFrom = append(r.ResumedFrom, t.offset)
	}
	if err := f.transfer(ctx, log, digest, t, &r); err != nil {
		return r, err
	}
	r.Size = t.offset
	if sum := hex.EncodeToString(t.hash.Sum(nil)); sum != h {
		t.file.Close()
		_ = os.Remove(t.file.Name())
		return r, fmt.Errorf("%w: the %d bytes fetched for %s hash to sha256:%s; the partial file is deleted, fetch again (if it fails again, the controller's copy is damaged: push the artifact again)", ErrDigestMismatch, t.offset, digest, sum)
	}
	if err := t.file.Sync(); err != nil {
		return r, fmt.Errorf("artifact cache: %w", err)
	}
	if err := t.file.Close(); err != nil {
		return r, fmt.Errorf("artifact cache: %w", err)
	}
	if err := os.Rename(t.file.Name(), final); err != nil {
		return r, fmt.Errorf("artifact cache: %w", err)
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return r, fmt.Errorf("artifact cache: %w", err)
	}
	r.Path = final
	log.InfoContext(ctx, "artifact fetched", "size", r.Size, "received", r.Received, "resumed_from", r.ResumedFrom)
	return r, nil
}

// partial is a transfer's file, positioned at its end, and the hash of
// what it holds.
type partial struct {
	file   *os.File
	hash   hash.Hash
	offset int64
}

// openPartial opens (or creates) a partial file and hashes what it holds,
// so the transfer goes on from its end.
func (f *Fetcher) openPartial(path string) (*partial, error) {
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	t := &partial{file: file, hash: sha256.New()}
	if t.offset, err = io.Copy(t.hash, file); err != nil {
		file.Close()
		return nil, fmt.Errorf("artifact cache: read %s: %w", path, err)
	}
	return t, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errChunk is a chunk that failed its check: the range is asked for again.
type errChunk struct {
	offset int64
	why    string
}

func (e *errChunk) Error() string { return fmt.Sprintf("chunk at offset %d: %s", e.offset, e.why) }

// transfer brings the rest of the content into t: transfers broken by the
// network or a controller restart go on from where they stopped, a
// corrupted chunk's range is asked for again, both within bounds.
func (f *Fetcher) transfer(ctx context.Context, log *slog.Logger, digest string, t *partial, r *Result) error {
	idle := 0                  // transfers in a row that brought nothing
	refused := map[int64]int{} // failed checks by chunk offset
	wait := f.opts.RetryWait
	for {
		before := t.offset
		done, err := f.stream(ctx, digest, t, r)
		if done {
			return nil
		}
		if ce := (*errChunk)(nil); errors.As(err, &ce) {
			refused[ce.offset]++
			log.WarnContext(ctx, "refused a corrupted artifact chunk", "offset", ce.offset, "reason", ce.why, "tries", refused[ce.offset])
			if refused[ce.offset] > f.opts.ChunkRetries {
				return fmt.Errorf("%w: fetching %s, the chunk at offset %d failed its check %d times (%s); the partial file keeps the %d bytes before it, fetch again to resume", ErrCorrupt, digest, ce.offset, refused[ce.offset], ce.why, t.offset)
			}
			r.ResumedFrom = append(r.ResumedFrom, t.offset)
			continue
		}
		if ctx.Err() != nil {
			return fmt.Errorf("fetch %s stopped at offset %d of its partial file: %w", digest, t.offset, ctx.Err())
		}
		st, ok := status.FromError(err)
		if !ok {
			return fmt.Errorf("fetch %s: %w", digest, err) // the cache's own trouble: a retry would not help
		}
		switch st.Code() {
		case codes.NotFound:
			if t.offset == 0 {
				t.file.Close()
				_ = os.Remove(t.file.Name())
			}
			return fmt.Errorf("%w: %s (push it with 'budctl artifacts push'): %s", ErrNotFound, digest, st.Message())
		case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.Unimplemented:
			return fmt.Errorf("fetch %s: %w", digest, err)
		case codes.OutOfRange:
			// The partial is longer than the content: not this content.
			t.file.Close()
			_ = os.Remove(t.file.Name())
			return fmt.Errorf("%w: the partial file of %s is longer than the artifact; it is deleted, fetch again: %s", ErrDigestMismatch, digest, st.Message())
		}
		if t.offset > before {
			idle, wait = 0, f.opts.RetryWait
		} else {
			idle++
		}
		if idle > f.opts.Attempts {
			return fmt.Errorf("fetch %s: %d transfers in a row broke without bringing data, the last: %w; the partial file keeps %d bytes, fetch again to resume", digest, idle, err, t.offset)
		}
		log.WarnContext(ctx, "artifact transfer broke; resuming", "offset", t.offset, "retry_in", wait, "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("fetch %s stopped at offset %d of its partial file: %w", digest, t.offset, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetryWait)
		log.InfoContext(ctx, "resuming artifact fetch", "offset", t.offset)
		r.ResumedFrom = append(r.ResumedFrom, t.offset)
	}
}

// stream runs one Fetch call from t's end; done once the content is
// whole. Chunks are written only once they pass their check.
func (f *Fetcher) stream(ctx context.Context, digest string, t *partial, r *Result) (done bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // a refused chunk ends the call; the range is asked for anew
	conn, err := f.opts.Conns.Conn(ctx)
	if err != nil {
		return false, err
	}
	stream, err := artifactv1.NewNodeArtifactServiceClient(conn).Fetch(ctx, &artifactv1.FetchRequest{Digest: digest, Offset: uint64(t.offset)})
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return false, status.Errorf(codes.Unavailable, "the controller ended the transfer at offset %d", t.offset)
		}
		if err != nil {
			return false, err
		}
		data, size := msg.GetData(), int64(msg.GetSize())
		r.Received += int64(len(data))
		switch {
		case int64(msg.GetOffset()) != t.offset:
			return false, &errChunk{offset: t.offset, why: fmt.Sprintf("it came at offset %d", msg.GetOffset())}
		case t.offset+int64(len(data)) > size:
			return false, &errChunk{offset: t.offset, why: fmt.Sprintf("it runs past the artifact's %d bytes", size)}
		case crc32.Checksum(data, castagnoli) != msg.GetCrc32C():
			return false, &errChunk{offset: t.offset, why: fmt.Sprintf("CRC-32C %08x, want %08x (corrupted on the way)", crc32.Checksum(data, castagnoli), msg.GetCrc32C())}
		}
		if _, err := t.file.Write(data); err != nil {
			return false, fmt.Errorf("artifact cache: %w", err)
		}
		t.hash.Write(data)
		t.offset += int64(len(data))
		if t.offset == size {
			return true, nil
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
