package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/command"
	"github.com/bud-ecosystem/budfleet/controller/artifact"
	"github.com/bud-ecosystem/budfleet/controller/kube"
	"github.com/bud-ecosystem/budfleet/controller/store"
	kubev1 "github.com/bud-ecosystem/budfleet/proto/budfleet/kube/v1"
)

// ArtifactLookup finds artifacts in the controller's artifact store by name
// and version, for the join spec: the digests the node fetches over its
// session. The artifact store (controller/artifact) implements it; a
// controller without one (Options.Artifacts nil) queues joins that carry
// no digests, and the node uses the binaries and images it already has.
type ArtifactLookup interface {
	// LookupArtifact returns the digest ("sha256:<hex>") of the artifact
	// name at version ("" is its newest version) for platform
	// ("linux/amd64"), and the version found. An error wrapping
	// store.ErrNotFound means there is none.
	LookupArtifact(ctx context.Context, name, version, platform string) (digest, foundVersion string, err error)
}

// joinLookup finds a join's artifacts in the controller's artifact store.
type joinLookup struct{ arts *artifact.Store }

func (l joinLookup) LookupArtifact(ctx context.Context, name, version, platform string) (string, string, error) {
	if version != "" {
		a, err := l.arts.Resolve(ctx, name+"@"+version, platform)
		if err != nil {
			return "", "", err
		}
		return a.Digest, a.Version, nil
	}
	all, err := l.arts.List(ctx)
	if err != nil {
		return "", "", err
	}
	var newest *store.Artifact
	for i, a := range all {
		if a.Name == name && a.Platform == platform && (newest == nil || a.Created.After(newest.Created)) {
			newest = &all[i]
		}
	}
	if newest == nil {
		return "", "", fmt.Errorf("%w: no artifact %s for %s (push one with 'budctl artifacts push FILE --name %s --version V --platform %s')", store.ErrNotFound, name, platform, name, platform)
	}
	return newest.Digest, newest.Version, nil
}

// The artifact names a join looks up: the kubelet at the join's version;
// containerd, runc and the CNI plugins at their newest, where pushed.
var joinRuntimeArtifacts = []string{command.ArtifactContainerd, command.ArtifactRunc, command.ArtifactCNIPlugins}

// JoinNode prepares the cluster and queues kubelet.join for the node.
func (a *ClusterAPI) JoinNode(ctx context.Context, req *kubev1.JoinNodeRequest) (*kubev1.JoinNodeResponse, error) {
	n, err := a.fleetNode(ctx, req.GetNodeId())
	if err != nil {
		return nil, err
	}
	resp, err := a.s.joinNode(ctx, n, req)
	if err != nil {
		a.audit(ctx, "node.join", "node_id", n.ID, "cluster", req.GetCluster(), "result", "failed", "error", err.Error())
		return nil, err
	}
	a.audit(ctx, "node.join", "node_id", n.ID, "cluster", resp.GetNode().GetCluster(), "k8s_node", resp.GetNode().GetName(),
		"command_id", resp.GetCommandId(), "token_id", resp.GetTokenId(), "kubelet_version", resp.GetKubeletVersion(), "result", "ok")
	return resp, nil
}

func (s *Server) joinNode(ctx context.Context, n store.Node, req *kubev1.JoinNodeRequest) (*kubev1.JoinNodeResponse, error) {
	bad := func(format string, args ...any) error {
		return status.Errorf(codes.InvalidArgument, format, args...)
	}
	var ttl time.Duration
	if d := req.GetTokenTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, bad("token ttl: %v", err)
		}
		ttl = d.AsDuration()
		if ttl < time.Minute || ttl > 24*time.Hour {
			return nil, bad("token ttl %s: want 1m to 24h (leave it unset for %s)", ttl, kube.DefaultBootstrapTokenTTL)
		}
	}
	for k, v := range req.GetLabels() {
		if err := command.ValidLabel(k, v); err != nil {
			return nil, bad("%v", err)
		}
	}
	taints := append([]string(nil), req.GetTaints()...)
	for _, t := range taints {
		if _, _, _, err := command.ParseTaint(t); err != nil {
			return nil, bad("%v", err)
		}
	}
	fn := kube.FleetNodeOf(n)
	if c := req.GetCluster(); c != "" {
		// The cluster asked for must be the node's own: a node maps to one
		// cluster (its label), and cordon, drain and campaigns use that one.
		if err := kube.ValidClusterName(c); err != nil {
			return nil, kubeErr(err)
		}
		t, err := s.kube.Resolve(ctx, fn)
		switch {
		case errors.Is(err, kube.ErrNoCluster) && n.Labels[kube.LabelCluster] == "":
			// Several clusters and no label: the request says which.
			fn.Labels = withLabel(fn.Labels, kube.LabelCluster, c)
		case err != nil:
			return nil, kubeErr(err)
		case t.Cluster != c:
			return nil, status.Errorf(codes.FailedPrecondition, "node %s belongs to cluster %s (%s), not %s: a node joins the cluster it maps to; enroll it with a token that carries the label %s=%s", n.ID, t.Cluster, clusterSource(n), c, kube.LabelCluster, c)
		}
	}
	t, err := s.kube.Resolve(ctx, fn)
	if err != nil {
		return nil, kubeErr(err)
	}
	ci, err := s.kube.Cluster(ctx, t.Cluster)
	if err != nil {
		return nil, kubeErr(err)
	}
	if !ci.Check.Reachable {
		return nil, status.Errorf(codes.Unavailable, "cluster %s is not reachable, nothing was queued: %s", t.Cluster, ci.Check.Reason)
	}
	version := req.GetKubeletVersion()
	if version == "" {
		version = ci.Check.ServerVersion
	}
	if err := command.ValidKubeletVersion(version); err != nil {
		return nil, bad("%v", err)
	}

	g, err := decodeGPUs(n)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node %s GPU inventory: %v", n.ID, err)
	}
	labels := map[string]string{}
	for k, v := range gpuLabels(g.GetInventory()) {
		labels[k] = v
	}
	for k, v := range req.GetLabels() {
		labels[k] = v
	}
	for _, gt := range gpuTaints(g.GetInventory()) {
		tt := gt.GetKey() + "=" + gt.GetValue() + ":" + gt.GetEffect()
		if !hasTaintKey(taints, gt.GetKey(), gt.GetEffect()) {
			taints = append(taints, tt)
		}
	}

	// Artifacts before the token: a missing one queues nothing and mints
	// nothing.
	artifacts, err := s.joinArtifacts(ctx, n, version, req.GetImages())
	if err != nil {
		return nil, err
	}

	j, err := s.kube.PrepareJoin(ctx, fn, ttl)
	if err != nil {
		return nil, kubeErr(err)
	}
	spec := command.KubeletJoinSpec{
		Cluster:        j.Cluster,
		Server:         j.Server,
		CAPEM:          string(j.CAPEM),
		Token:          j.Token,
		TokenExpires:   j.TokenExpires,
		NodeName:       j.Node,
		KubeletVersion: version,
		Labels:         labels,
		Taints:         taints,
		GPU:            len(g.GetInventory().GetGpus()) > 0,
		Artifacts:      artifacts,
	}
	params, err := spec.Params()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode join spec: %v", err)
	}
	if err := command.Validate(command.KubeletJoin, params); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "the join spec for node %s is not valid, nothing was queued: %v", n.ID, err)
	}
	c := store.Command{
		ID:        uuid.NewString(),
		NodeID:    n.ID,
		Kind:      command.KubeletJoin,
		Params:    params,
		State:     store.CommandPending,
		CreatedAt: s.opts.Now(),
	}
	if err := s.store.EnqueueCommand(ctx, c); err != nil {
		return nil, storeErr(err)
	}
	s.commands.wakeNode(n.ID)
	resp := &kubev1.JoinNodeResponse{
		CommandId:      c.ID,
		Node:           &kubev1.KubernetesNode{Cluster: j.Cluster, Name: j.Node, MappedBy: j.MappedBy},
		TokenId:        j.TokenID,
		TokenExpiresAt: ts(j.TokenExpires),
		KubeletVersion: version,
		Labels:         labels,
		Taints:         taints,
	}
	for _, a := range artifacts {
		resp.Artifacts = append(resp.Artifacts, strings.TrimSpace(a.Kind+" "+a.Name+" "+a.Version)+" "+a.Digest)
	}
	return resp, nil
}

// joinArtifacts looks up what the node installs; nil without an artifact
// store.
func (s *Server) joinArtifacts(ctx context.Context, n store.Node, version string, images []string) ([]command.JoinArtifact, error) {
	look := s.opts.JoinArtifacts
	if look == nil {
		if len(images) > 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "images %s were asked for but this controller has no artifact store to find them in", strings.Join(images, ", "))
		}
		return nil, nil
	}
	arch := n.Inventory.GetArchitecture()
	if arch == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s has reported no architecture yet, so no artifact can be chosen for it: wait for its inventory (budctl nodes get %s)", n.ID, n.ID)
	}
	platform := "linux/" + arch
	var out []command.JoinArtifact
	digest, _, err := look.LookupArtifact(ctx, command.ArtifactKubelet, version, platform)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.FailedPrecondition, "no kubelet %s artifact for %s in the artifact store, nothing was queued: push it with 'budctl artifacts push kubelet --name kubelet --version %s --platform %s', or join with a --kubelet-version that has one", version, platform, version, platform)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "look up the kubelet artifact: %v", err)
	}
	out = append(out, command.JoinArtifact{Kind: command.ArtifactKubelet, Name: command.ArtifactKubelet, Version: version, Digest: digest})
	for _, name := range joinRuntimeArtifacts {
		digest, found, err := look.LookupArtifact(ctx, name, "", platform)
		switch {
		case errors.Is(err, store.ErrNotFound):
			continue // the node must have it already
		case err != nil:
			return nil, status.Errorf(codes.Internal, "look up the %s artifact: %v", name, err)
		}
		out = append(out, command.JoinArtifact{Kind: name, Name: name, Version: found, Digest: digest})
	}
	for _, img := range images {
		name, ver, _ := strings.Cut(img, "@")
		digest, found, err := look.LookupArtifact(ctx, name, ver, platform)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil, status.Errorf(codes.FailedPrecondition, "no image artifact %s for %s in the artifact store, nothing was queued: push the image tarball with 'budctl artifacts push FILE --name %s --version V'", img, platform, name)
		case err != nil:
			return nil, status.Errorf(codes.Internal, "look up the image artifact %s: %v", img, err)
		}
		out = append(out, command.JoinArtifact{Kind: command.ArtifactImage, Name: name, Version: found, Digest: digest})
	}
	return out, nil
}

func withLabel(l map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(l)+1)
	for lk, lv := range l {
		out[lk] = lv
	}
	out[k] = v
	return out
}

func clusterSource(n store.Node) string {
	if v := n.Labels[kube.LabelCluster]; v != "" {
		return "its label " + kube.LabelCluster + "=" + v
	}
	return "the only registered cluster"
}

func hasTaintKey(taints []string, key, effect string) bool {
	for _, t := range taints {
		k, _, e, err := command.ParseTaint(t)
		if err == nil && k == key && e == effect {
			return true
		}
	}
	return false
}

// kubeletJoin is the node's latest kubelet.join for GetNode, nil when it
// never had one: its phase from the result, else from the last phase line
// it streamed, else queued.
func (s *Server) kubeletJoin(ctx context.Context, nodeID string) *kubev1.KubeletJoin {
	cs, err := s.store.ListCommands(ctx, nodeID)
	if err != nil {
		return nil
	}
	var last *store.Command
	for i := range cs {
		if cs[i].Kind == command.KubeletJoin && (last == nil || !cs[i].CreatedAt.Before(last.CreatedAt)) {
			last = &cs[i]
		}
	}
	if last == nil {
		return nil
	}
	c := *last
	j := &kubev1.KubeletJoin{CommandId: c.ID, StartedAt: ts(c.CreatedAt), UpdatedAt: ts(c.CreatedAt)}
	if spec, err := command.ParseKubeletJoin(c.Params); err == nil {
		j.Cluster, j.NodeName = spec.Cluster, spec.NodeName
	}
	switch {
	case c.State.Done():
		j.Phase = c.Output[command.OutputJoinPhase]
		j.Reason = c.Output[command.OutputJoinReason]
		if n := c.Output[command.OutputJoinNode]; n != "" {
			j.NodeName = n
		}
		switch {
		case c.State == store.CommandFailed:
			j.Phase = command.JoinFailed
			if j.Reason == "" {
				j.Reason = c.Message
			}
		case c.Output[command.OutputJoinAlready] == "true":
			j.Reason = "already joined; left as it was"
		case j.Reason == "" && c.Output[command.OutputJoinDuration] != "":
			j.Reason = "joined in " + c.Output[command.OutputJoinDuration]
		}
		j.UpdatedAt = ts(c.FinishedAt)
	case c.OutputTail != nil:
		if p, d, ok := command.LastJoinPhase(c.OutputTail.Stdout); ok {
			j.Phase, j.Reason = p, d
		}
		j.UpdatedAt = ts(c.OutputTail.UpdatedAt)
	}
	if j.Phase == "" {
		j.Phase = "queued"
		if c.State == store.CommandDelivered {
			j.Phase = command.JoinPreparing
		}
	}
	return j
}
