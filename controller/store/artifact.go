package store

import (
	"context"
	"time"
)

// ArtifactStore holds the metadata of the controller's artifacts
// (controller/artifact keeps their content on disk). Each artifact has
// one digest and one name, version and platform, both unique: the same
// content is stored once, and a name, version and platform names one
// content.
type ArtifactStore interface {
	// PutArtifact stores a, or returns the stored artifact with created
	// false when the same digest is already stored under the same name,
	// version and platform (pushing again is idempotent; the stored
	// artifact keeps its CreatedAt and PushedBy). ErrAlreadyExists, naming
	// the stored artifact, when a's name, version and platform are bound
	// to another digest or a's digest is stored under another name,
	// version or platform; nothing changes then.
	PutArtifact(ctx context.Context, a Artifact) (stored Artifact, created bool, err error)
	// GetArtifact returns the artifact with digest; ErrNotFound naming it.
	GetArtifact(ctx context.Context, digest string) (Artifact, error)
	// FindArtifacts returns the artifacts named name at version, one per
	// platform, by platform; none when there are none.
	FindArtifacts(ctx context.Context, name, version string) ([]Artifact, error)
	// ListArtifacts returns every artifact by name, version, platform
	// (byte order).
	ListArtifacts(ctx context.Context) ([]Artifact, error)
	// DeleteArtifact removes the artifact with digest, which frees its
	// name, version and platform; ErrNotFound naming it.
	DeleteArtifact(ctx context.Context, digest string) error
}

// ArtifactKind says what an artifact is for.
type ArtifactKind string

// Artifact kinds.
const (
	ArtifactBinary ArtifactKind = "binary" // kubelet, containerd, runc, CNI plugins
	ArtifactImage  ArtifactKind = "image"  // docker save / OCI layout tarball
	ArtifactFile   ArtifactKind = "file"   // anything else
)

// Artifact is one stored artifact's metadata.
type Artifact struct {
	// Digest is "sha256:<64 lower-case hex digits>" of the content.
	Digest   string       `json:"digest"`
	Name     string       `json:"name"`
	Version  string       `json:"version"`
	Platform string       `json:"platform"`
	Kind     ArtifactKind `json:"kind"`
	Size     int64        `json:"size"`
	Created  time.Time    `json:"created"`
	PushedBy string       `json:"pushed_by,omitempty"`
}
