package command

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
)

// Parameters of artifact.fetch.
const (
	// ParamDigest is the artifact's "sha256:<hex>".
	ParamDigest = "digest"
	// ParamPath is where the node puts a copy (an absolute path); the
	// agent's cache path when absent.
	ParamPath = "path"
	// ParamMode is the copy's permission bits in octal (e.g. 0755);
	// DefaultArtifactMode when absent. Only with ParamPath.
	ParamMode = "mode"
)

// DefaultArtifactMode is the mode of a staged copy that names none.
const DefaultArtifactMode = 0o644

var digestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ArtifactFetchParams is an artifact.fetch command's parameters, decoded.
type ArtifactFetchParams struct {
	Digest string
	// Path is "" to leave the artifact in the agent's cache only.
	Path string
	Mode uint32
}

// Params encodes f as the command's parameters.
func (f ArtifactFetchParams) Params() map[string]string {
	p := map[string]string{ParamDigest: f.Digest}
	if f.Path != "" {
		p[ParamPath] = f.Path
		p[ParamMode] = fmt.Sprintf("%04o", f.Mode)
	}
	return p
}

// ParseArtifactFetch checks an artifact.fetch command's parameters.
func ParseArtifactFetch(params map[string]string) (ArtifactFetchParams, error) {
	f := ArtifactFetchParams{Digest: params[ParamDigest], Path: params[ParamPath], Mode: DefaultArtifactMode}
	if !digestRe.MatchString(f.Digest) {
		return f, fmt.Errorf("artifact.fetch parameter %q must be sha256:<64 lower-case hex digits> (see 'budctl artifacts list')", ParamDigest)
	}
	if _, ok := params[ParamPath]; ok && (!filepath.IsAbs(f.Path) || filepath.Clean(f.Path) != f.Path || f.Path == "/") {
		return f, fmt.Errorf("artifact.fetch parameter %q must be a clean absolute file path, e.g. /usr/local/bin/kubelet (got %q)", ParamPath, f.Path)
	}
	if v, ok := params[ParamMode]; ok {
		if f.Path == "" {
			return f, fmt.Errorf("artifact.fetch parameter %q needs %q: the cache's own copy keeps its mode", ParamMode, ParamPath)
		}
		m, err := strconv.ParseUint(v, 8, 32)
		if err != nil || m > 0o777 {
			return f, fmt.Errorf("artifact.fetch parameter %q must be permission bits in octal, 0 to 0777, e.g. 0755 (got %q)", ParamMode, v)
		}
		f.Mode = uint32(m)
	}
	return f, nil
}
