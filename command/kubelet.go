package command

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"
)

// KubeletJoin is the kind that joins a node to a Kubernetes cluster: the
// agent installs the kubelet (and its runtime where absent), writes its
// configuration and starts it with a bootstrap token the controller minted.
const KubeletJoin = "kubelet.join"

// Parameters of kubelet.join.
const (
	// ParamJoinSpec is the join spec as JSON (KubeletJoinSpec).
	ParamJoinSpec = "spec"
)

// kubeletJoinSpec is the Kinds entry of kubelet.join.
var kubeletJoinSpec = Spec{
	Description: "join the node to a Kubernetes cluster: install and start the kubelet (param spec: the join spec as JSON; queued by 'budctl nodes join-cluster')",
	Params:      map[string]bool{ParamJoinSpec: true},
	Secret:      map[string]bool{ParamJoinSpec: true},
	Check: func(p map[string]string) error {
		_, err := ParseKubeletJoin(p)
		return err
	},
}

// Join phases, in order; a join reports each as it enters it (see
// JoinPhaseLine) and the result's output carries the last one
// (OutputJoinPhase).
const (
	JoinPreparing  = "preparing"  // checks, configuration files
	JoinInstalling = "installing" // binaries and images from the artifacts
	JoinStarting   = "starting"   // containerd, then the kubelet
	JoinRegistered = "registered" // the kubelet has its certificate and its Node exists
	JoinReady      = "ready"      // the Node's Ready condition is True
	JoinFailed     = "failed"     // with the reason
)

// Output keys of a kubelet.join result.
const (
	OutputJoinPhase   = "phase"
	OutputJoinReason  = "reason"
	OutputJoinNode    = "node_name"
	OutputJoinCluster = "cluster"
	// OutputJoinAlready is "true" when the node was already joined to the
	// cluster and the join only checked it.
	OutputJoinAlready = "already_joined"
	// OutputJoinDuration is from the command's start until the Node was
	// Ready (or the failure).
	OutputJoinDuration = "duration"
)

// Artifact kinds a join spec names.
const (
	ArtifactKubelet    = "kubelet"
	ArtifactContainerd = "containerd" // a tar.gz of containerd's release (bin/...)
	ArtifactRunc       = "runc"
	ArtifactCNIPlugins = "cni-plugins" // a tar.gz of the plugins' release
	ArtifactImage      = "image"       // an image tarball (docker save or OCI layout)
)

// JoinArtifact is one artifact the node installs, found by the controller
// by name and version.
type JoinArtifact struct {
	// Kind is one of the Artifact* kinds.
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	// Digest is "sha256:<64 hex>".
	Digest string `json:"digest"`
}

// KubeletJoinSpec is what a node needs to join a cluster.
type KubeletJoinSpec struct {
	// Cluster is the registered cluster's name.
	Cluster string `json:"cluster"`
	// Server is the API server URL the kubelet talks to.
	Server string `json:"server"`
	// CAPEM is the cluster CA's certificate(s), PEM.
	CAPEM string `json:"ca_pem"`
	// Token is the bootstrap token, "<id>.<secret>".
	Token string `json:"token"`
	// TokenExpires is when the token stops working.
	TokenExpires time.Time `json:"token_expires"`
	// NodeName is the Node's name (--hostname-override).
	NodeName       string            `json:"node_name"`
	KubeletVersion string            `json:"kubelet_version"`
	Labels         map[string]string `json:"labels,omitempty"`
	// Taints are "key=value:Effect" or "key:Effect".
	Taints []string `json:"taints,omitempty"`
	// GPU: the node has NVIDIA GPUs (containerd's default runtime becomes
	// the NVIDIA container runtime).
	GPU bool `json:"gpu,omitempty"`
	// Artifacts are what to install; none means using what the node has.
	Artifacts []JoinArtifact `json:"artifacts,omitempty"`
}

// Artifact returns the spec's artifacts of kind.
func (s KubeletJoinSpec) Artifact(kind string) []JoinArtifact {
	var out []JoinArtifact
	for _, a := range s.Artifacts {
		if a.Kind == kind {
			out = append(out, a)
		}
	}
	return out
}

// Params encodes s as the command's parameters. It does not check s;
// ParseKubeletJoin does.
func (s KubeletJoinSpec) Params() (map[string]string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return map[string]string{ParamJoinSpec: string(b)}, nil
}

// maxJoinSpec bounds the spec (a CA bundle and a few dozen artifacts).
const maxJoinSpec = 256 << 10

var (
	bootstrapTokenRe = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	joinDigestRe     = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	versionRe        = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$`)
	// A DNS subdomain, as Node names are.
	nodeNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// Label keys: an optional DNS-subdomain prefix and a name.
	labelKeyRe   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	labelValueRe = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
	artifactKind = map[string]bool{ArtifactKubelet: true, ArtifactContainerd: true, ArtifactRunc: true, ArtifactCNIPlugins: true, ArtifactImage: true}
)

// ValidKubeletVersion checks a kubelet version such as v1.37.2.
func ValidKubeletVersion(v string) error {
	if !versionRe.MatchString(v) {
		return fmt.Errorf("kubelet version %q: want a release such as v1.37.2", v)
	}
	return nil
}

// ValidLabel checks a Kubernetes label key and value.
func ValidLabel(k, v string) error {
	if len(k) > 316 || !labelKeyRe.MatchString(k) {
		return fmt.Errorf("label key %q: want [prefix/]name, the name up to 63 letters, digits, '-', '_' or '.'", k)
	}
	if !labelValueRe.MatchString(v) {
		return fmt.Errorf("label %s value %q: want up to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit", k, v)
	}
	return nil
}

// ParseTaint checks a taint "key=value:Effect" or "key:Effect" and
// returns its parts.
func ParseTaint(s string) (key, value, effect string, err error) {
	kv, effect, ok := strings.Cut(s, ":")
	if !ok || strings.Contains(effect, ":") {
		return "", "", "", fmt.Errorf("taint %q: want key=value:Effect or key:Effect", s)
	}
	switch effect {
	case "NoSchedule", "PreferNoSchedule", "NoExecute":
	default:
		return "", "", "", fmt.Errorf("taint %q: effect %q is not NoSchedule, PreferNoSchedule or NoExecute", s, effect)
	}
	key, value, _ = strings.Cut(kv, "=")
	if err := ValidLabel(key, value); err != nil {
		return "", "", "", fmt.Errorf("taint %q: %w", s, err)
	}
	return key, value, effect, nil
}

// ParseKubeletJoin decodes and checks a kubelet.join command's
// parameters: the controller refuses a bad one when it is queued, and the
// agent checks again before it changes anything.
func ParseKubeletJoin(params map[string]string) (KubeletJoinSpec, error) {
	var s KubeletJoinSpec
	raw := params[ParamJoinSpec]
	if raw == "" {
		return s, errors.New(`kubelet.join needs parameter "spec": the join spec as JSON (queue it with 'budctl nodes join-cluster')`)
	}
	if len(raw) > maxJoinSpec {
		return s, fmt.Errorf("kubelet.join spec is %d bytes; the limit is %d KiB", len(raw), maxJoinSpec>>10)
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("kubelet.join spec is not a join spec: %w", err)
	}
	if !nodeNameRe.MatchString(s.Cluster) || len(s.Cluster) > 63 {
		return s, fmt.Errorf("kubelet.join spec: cluster name %q is not a DNS label", s.Cluster)
	}
	u, err := url.Parse(s.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return s, fmt.Errorf("kubelet.join spec: API server %q: want an https:// URL", s.Server)
	}
	if err := checkCAPEM([]byte(s.CAPEM)); err != nil {
		return s, fmt.Errorf("kubelet.join spec: cluster CA: %w", err)
	}
	if !bootstrapTokenRe.MatchString(s.Token) {
		return s, errors.New("kubelet.join spec: the bootstrap token is not <6 chars>.<16 chars> of [a-z0-9]")
	}
	if s.TokenExpires.IsZero() {
		return s, errors.New("kubelet.join spec: the bootstrap token has no expiry")
	}
	if len(s.NodeName) > 253 || !nodeNameRe.MatchString(s.NodeName) {
		return s, fmt.Errorf("kubelet.join spec: node name %q is not a lower-case DNS subdomain", s.NodeName)
	}
	if err := ValidKubeletVersion(s.KubeletVersion); err != nil {
		return s, fmt.Errorf("kubelet.join spec: %w", err)
	}
	for k, v := range s.Labels {
		if err := ValidLabel(k, v); err != nil {
			return s, fmt.Errorf("kubelet.join spec: %w", err)
		}
	}
	for _, t := range s.Taints {
		if _, _, _, err := ParseTaint(t); err != nil {
			return s, fmt.Errorf("kubelet.join spec: %w", err)
		}
	}
	for _, a := range s.Artifacts {
		if !artifactKind[a.Kind] {
			return s, fmt.Errorf("kubelet.join spec: artifact %s has kind %q, not one of %s", a.Name, a.Kind, strings.Join(sortedKeys(artifactKind), ", "))
		}
		if !joinDigestRe.MatchString(a.Digest) {
			return s, fmt.Errorf("kubelet.join spec: artifact %s digest %q: want sha256:<64 lower-case hex>", a.Name, a.Digest)
		}
	}
	if n := len(s.Artifact(ArtifactKubelet)); n > 1 {
		return s, fmt.Errorf("kubelet.join spec names %d kubelet artifacts; want at most one", n)
	}
	return s, nil
}

func checkCAPEM(b []byte) error {
	rest := bytes.TrimSpace(b)
	n := 0
	for len(rest) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return errors.New("not PEM")
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("a PEM block of type %q, want CERTIFICATE", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return err
		}
		n++
		rest = bytes.TrimSpace(rest)
	}
	if n == 0 {
		return errors.New("empty")
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// joinPhasePrefix begins a phase line in a kubelet.join's streamed stdout.
const joinPhasePrefix = "phase "

// JoinPhaseLine is the line a kubelet.join streams on stdout when it
// enters phase: "phase NAME" or "phase NAME: DETAIL". The controller reads
// the last one back with LastJoinPhase while the command runs.
func JoinPhaseLine(phase, detail string) string {
	detail = strings.ReplaceAll(detail, "\n", " ")
	if detail == "" {
		return joinPhasePrefix + phase + "\n"
	}
	return joinPhasePrefix + phase + ": " + detail + "\n"
}

// LastJoinPhase finds the last phase line in a kubelet.join's streamed
// stdout; ok is false when there is none.
func LastJoinPhase(stdout []byte) (phase, detail string, ok bool) {
	lines := strings.Split(string(stdout), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		rest, found := strings.CutPrefix(lines[i], joinPhasePrefix)
		if !found {
			continue
		}
		phase, detail, _ = strings.Cut(rest, ": ")
		if phase != "" && !strings.ContainsAny(phase, " \t") {
			return phase, detail, true
		}
	}
	return "", "", false
}
