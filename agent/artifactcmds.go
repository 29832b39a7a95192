package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bud-ecosystem/budfleet/agent/artifact"
	"github.com/bud-ecosystem/budfleet/command"
)

// artifactCommands is the handler of artifact.fetch: an operator stages an
// artifact from the controller's store onto the node, into the agent's
// cache and, when the command names a path, into a copy there.
type artifactCommands struct {
	// fetcher is nil when the agent has no cache (Options.ArtifactDir) or
	// no gRPC transport to fetch over; it then fails with ErrNoCache.
	fetcher *artifact.Fetcher
}

// fetch fetches the artifact and copies it into place. The output names
// the path and digest, the size, and how the transfer went: whether it
// was cached, how much arrived, where it resumed (offsets, comma-separated;
// absent when it did not).
func (m *artifactCommands) fetch(ctx context.Context, c *call) (map[string]string, error) {
	p, err := command.ParseArtifactFetch(c.params)
	if err != nil {
		return nil, err
	}
	res, err := m.fetcher.Get(ctx, p.Digest)
	resumed := make([]string, len(res.ResumedFrom))
	for i, off := range res.ResumedFrom {
		resumed[i] = strconv.FormatInt(off, 10)
	}
	out := map[string]string{
		"digest":   p.Digest,
		"received": strconv.FormatInt(res.Received, 10),
	}
	if len(resumed) > 0 {
		out["resumed_from"] = strings.Join(resumed, ",")
	}
	if err != nil {
		return out, err
	}
	out["size"] = strconv.FormatInt(res.Size, 10)
	out["cached"] = strconv.FormatBool(res.Cached)
	out["path"] = res.Path
	if p.Path != "" {
		if err := copyInto(res.Path, p.Path, os.FileMode(p.Mode)); err != nil {
			return out, err
		}
		out["path"] = p.Path
		out["cache_path"] = res.Path
	}
	return out, nil
}

// copyInto copies src to dst with mode, creating dst's directory: through
// a temp file beside dst, synced and renamed, so that dst is never seen
// half written (a running binary is replaced, not overwritten).
func copyInto(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("artifact cache: %w", err)
	}
	defer in.Close()
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".bud-*")
	if err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name()) // gone already once renamed
	defer tmp.Close()
	if _, err := io.Copy(tmp, in); err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	// Chmod, not the umask-bound mode of a create, so the bits are exact.
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("stage the artifact at %s: %w", dst, err)
	}
	return nil
}
