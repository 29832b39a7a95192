package controller

import (
	"context"
	"errors"
	"hash/crc32"
	"io"
	"math"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/artifact"
	"github.com/bud-ecosystem/budfleet/controller/store"
	artifactv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/artifact/v1"
)

// FetchChunkBytes is the data in one Fetch message: well under the 4 MiB
// a gRPC client takes by default, large enough that the per-message cost
// stays small beside the copy.
const FetchChunkBytes = 512 << 10

// ArtifactAPI serves budfleet.artifact.v1.ArtifactService, the operators'
// side of the artifact store (admin operator certificates, auth.go).
type ArtifactAPI struct {
	artifactv1.UnimplementedArtifactServiceServer
	s *Server
}

// ArtifactAPI returns the operators' artifact service of s.
func (s *Server) ArtifactAPI() *ArtifactAPI { return &ArtifactAPI{s: s} }

// NodeArtifactAPI serves budfleet.artifact.v1.NodeArtifactService, the
// nodes' read-only side (node certificates, auth.go).
type NodeArtifactAPI struct {
	artifactv1.UnimplementedNodeArtifactServiceServer
	s *Server
}

// NodeArtifactAPI returns the nodes' artifact service of s.
func (s *Server) NodeArtifactAPI() *NodeArtifactAPI { return &NodeArtifactAPI{s: s} }

var kindsToProto = map[store.ArtifactKind]artifactv1.ArtifactKind{
	store.ArtifactBinary: artifactv1.ArtifactKind_ARTIFACT_KIND_BINARY,
	store.ArtifactImage:  artifactv1.ArtifactKind_ARTIFACT_KIND_IMAGE,
	store.ArtifactFile:   artifactv1.ArtifactKind_ARTIFACT_KIND_FILE,
}

var kindsFromProto = map[artifactv1.ArtifactKind]store.ArtifactKind{
	artifactv1.ArtifactKind_ARTIFACT_KIND_UNSPECIFIED: store.ArtifactFile,
	artifactv1.ArtifactKind_ARTIFACT_KIND_BINARY:      store.ArtifactBinary,
	artifactv1.ArtifactKind_ARTIFACT_KIND_IMAGE:       store.ArtifactImage,
	artifactv1.ArtifactKind_ARTIFACT_KIND_FILE:        store.ArtifactFile,
}

func artifactToProto(a store.Artifact) *artifactv1.Artifact {
	return &artifactv1.Artifact{
		Digest:    a.Digest,
		Name:      a.Name,
		Version:   a.Version,
		Platform:  a.Platform,
		Kind:      kindsToProto[a.Kind],
		Size:      uint64(a.Size),
		CreatedAt: timestamppb.New(a.Created),
		PushedBy:  a.PushedBy,
	}
}

// artifactErr maps an error of controller/artifact to a status.
func artifactErr(err error) error {
	switch {
	case errors.Is(err, artifact.ErrInvalid), errors.Is(err, artifact.ErrContent), errors.Is(err, artifact.ErrAmbiguous):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, artifact.ErrTooLarge):
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return storeErr(err)
}

func (s *Server) artifactStore() (*artifact.Store, error) {
	if s.opts.Artifacts == nil {
		return nil, status.Error(codes.FailedPrecondition, "this controller has no artifact store")
	}
	return s.opts.Artifacts, nil
}

// pushReader reads a push's content from its chunk messages.
type pushReader struct {
	stream artifactv1.ArtifactService_PushArtifactServer
	buf    []byte
}

func (r *pushReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		msg, err := r.stream.Recv()
		if err != nil {
			return 0, err // io.EOF once the client closed its side
		}
		if msg.GetMetadata() != nil {
			return 0, status.Error(codes.InvalidArgument, "a push carries its metadata once, in the first message")
		}
		r.buf = msg.GetChunk()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// PushArtifact stores the pushed artifact. Its metadata is checked before
// any content is read, so bad metadata is refused at once.
func (a *ArtifactAPI) PushArtifact(stream artifactv1.ArtifactService_PushArtifactServer) error {
	ctx := stream.Context()
	st, err := a.s.artifactStore()
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	md := first.GetMetadata()
	if md == nil {
		return status.Error(codes.InvalidArgument, "the first message of a push must be its metadata (name, version, size)")
	}
	kind, ok := kindsFromProto[md.GetKind()]
	if !ok {
		return status.Errorf(codes.InvalidArgument, "kind %v: want binary, image or file", md.GetKind())
	}
	if md.GetSize() > math.MaxInt64 {
		return status.Errorf(codes.InvalidArgument, "size %d is out of range", md.GetSize())
	}
	p := artifact.Push{
		Name:           md.GetName(),
		Version:        md.GetVersion(),
		Platform:       md.GetPlatform(),
		Kind:           kind,
		Size:           int64(md.GetSize()),
		ExpectedSHA256: md.GetExpectedSha256(),
		PushedBy:       operatorName(ctx),
	}
	stored, created, err := st.Push(ctx, p, &pushReader{stream: stream})
	if err != nil {
		(&FleetAPI{s: a.s}).audit(ctx, "artifact.push", "artifact", truncate(md.GetName(), 128)+"@"+truncate(md.GetVersion(), 128), "result", "failed", "error", err.Error())
		if s, ok := status.FromError(err); ok {
			return s.Err() // the stream's own status: the push was cut or malformed
		}
		return artifactErr(err)
	}
	result := "ok"
	if !created {
		result = "already stored"
	}
	(&FleetAPI{s: a.s}).audit(ctx, "artifact.push", "artifact", stored.Name+"@"+stored.Version, "platform", stored.Platform, "digest", stored.Digest, "size", stored.Size, "result", result)
	return stream.SendAndClose(&artifactv1.PushArtifactResponse{Artifact: artifactToProto(stored), AlreadyStored: !created})
}

// ListArtifacts lists every artifact.
func (a *ArtifactAPI) ListArtifacts(ctx context.Context, req *artifactv1.ListArtifactsRequest) (*artifactv1.ListArtifactsResponse, error) {
	st, err := a.s.artifactStore()
	if err != nil {
		return nil, err
	}
	list, err := st.List(ctx)
	if err != nil {
		return nil, artifactErr(err)
	}
	arts, next, err := page(list, func(x store.Artifact) string { return x.Digest }, artifactToProto, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &artifactv1.ListArtifactsResponse{Artifacts: arts, NextPageToken: next}, nil
}

// GetArtifact returns one artifact.
func (a *ArtifactAPI) GetArtifact(ctx context.Context, req *artifactv1.GetArtifactRequest) (*artifactv1.GetArtifactResponse, error) {
	st, err := a.s.artifactStore()
	if err != nil {
		return nil, err
	}
	if req.GetRef().GetRef() == "" {
		return nil, status.Error(codes.InvalidArgument, "an artifact reference is required: sha256:<hex> or name@version (see 'budctl artifacts list')")
	}
	x, err := st.Resolve(ctx, req.GetRef().GetRef(), req.GetRef().GetPlatform())
	if err != nil {
		return nil, artifactErr(err)
	}
	return &artifactv1.GetArtifactResponse{Artifact: artifactToProto(x)}, nil
}

// RemoveArtifact removes one artifact and its content.
func (a *ArtifactAPI) RemoveArtifact(ctx context.Context, req *artifactv1.RemoveArtifactRequest) (*artifactv1.RemoveArtifactResponse, error) {
	st, err := a.s.artifactStore()
	if err != nil {
		return nil, err
	}
	if req.GetRef().GetRef() == "" {
		return nil, status.Error(codes.InvalidArgument, "an artifact reference is required: sha256:<hex> or name@version (see 'budctl artifacts list')")
	}
	x, err := st.Remove(ctx, req.GetRef().GetRef(), req.GetRef().GetPlatform())
	if err != nil {
		return nil, artifactErr(err)
	}
	(&FleetAPI{s: a.s}).audit(ctx, "artifact.remove", "artifact", x.Name+"@"+x.Version, "platform", x.Platform, "digest", x.Digest, "result", "ok")
	return &artifactv1.RemoveArtifactResponse{Artifact: artifactToProto(x)}, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Fetch streams an artifact's content from the offset the node asks for.
func (a *NodeArtifactAPI) Fetch(req *artifactv1.FetchRequest, stream artifactv1.NodeArtifactService_FetchServer) (err error) {
	defer func() {
		result := "complete"
		switch {
		case err == nil && req.GetOffset() > 0:
			result = "resumed_complete"
		case status.Code(err) == codes.NotFound:
			result = "not_found"
		case status.Code(err) == codes.Canceled, status.Code(err) == codes.Unavailable, errors.Is(err, context.Canceled):
			result = "cut"
		case err != nil:
			result = "error"
		}
		a.s.metrics.artifactFetches.WithLabelValues(result).Inc()
	}()
	ctx := stream.Context()
	id, ok := IdentityFrom(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no node identity")
	}
	// A deleted node's certificate is revoked for fetches as for sessions.
	if _, err := a.s.store.GetNode(ctx, id.Name); errors.Is(err, store.ErrNotFound) {
		return status.Errorf(codes.PermissionDenied, "node %s is not enrolled (deleted?): its certificate is revoked; enroll again with a new join token", id.Name)
	} else if err != nil {
		return storeErr(err)
	}
	st, err := a.s.artifactStore()
	if err != nil {
		return err
	}
	f, x, err := st.Open(ctx, req.GetDigest())
	if err != nil {
		return artifactErr(err)
	}
	defer f.Close()
	size := uint64(x.Size)
	off := req.GetOffset()
	if off > size {
		return status.Errorf(codes.OutOfRange, "offset %d is past the end of %s (%d bytes)", off, x.Digest, size)
	}
	log := a.s.log.With("node_id", id.Name, "digest", x.Digest, "artifact", x.Name+"@"+x.Version)
	if off > 0 {
		log.InfoContext(ctx, "artifact fetch resumed", "offset", off, "size", size)
	} else {
		log.DebugContext(ctx, "artifact fetch", "size", size)
	}
	if off == size {
		// Nothing left (an empty artifact, or a node whose partial file is
		// whole): one message without data says where the end is.
		return stream.Send(&artifactv1.FetchResponse{Offset: off, Crc32C: crc32.Checksum(nil, castagnoli), Size: size})
	}
	for off < size {
		// A fresh buffer per message: gRPC may still hold the last one.
		buf := make([]byte, min(FetchChunkBytes, size-off))
		n, err := f.ReadAt(buf, int64(off))
		if n < len(buf) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			log.ErrorContext(ctx, "read artifact content", "offset", off, "error", err)
			return status.Errorf(codes.Internal, "read %s at offset %d: %v", x.Digest, off, err)
		}
		if err := stream.Send(&artifactv1.FetchResponse{Offset: off, Data: buf, Crc32C: crc32.Checksum(buf, castagnoli), Size: size}); err != nil {
			return err
		}
		a.s.metrics.artifactBytes.Add(float64(n))
		off += uint64(n)
	}
	return nil
}
