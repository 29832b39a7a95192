package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// Kubelet TLS bootstrap, as kubeadm sets it up: a bootstrap token whose
// extra group BootstrapGroup may create CSRs (node-bootstrapper) whose
// client-certificate requests are approved at once (nodeclient), and
// nodes may renew their own (selfnodeclient). The controller manager's
// csrapproving and csrsigning controllers do the approving and signing;
// tokencleaner deletes expired token Secrets.
const (
	// BootstrapGroup is the extra group of the tokens the controller
	// mints (system:bootstrappers:budfleet).
	BootstrapGroup = bootstrapapi.BootstrapDefaultGroup + ":budfleet"
	// DefaultBootstrapTokenTTL is how long a join's token works: enough
	// for a node to install what it needs and bootstrap; the kubelet
	// never uses it again once it has its certificate.
	DefaultBootstrapTokenTTL = time.Hour

	// The ClusterRoleBindings, under kubeadm's names for the same grants,
	// so that a cluster set up by kubeadm is left as it is.
	bindingNodeBootstrapper = "kubeadm:kubelet-bootstrap"
	bindingNodeAutoApprove  = "kubeadm:node-autoapprove-bootstrap"
	bindingSelfNodeClient   = "kubeadm:node-autoapprove-certificate-rotation"

	roleNodeBootstrapper = "system:node-bootstrapper"
	roleNodeClient       = "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
	roleSelfNodeClient   = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"

	// descriptionPrefix marks the token Secrets the controller minted.
	descriptionPrefix = "budfleet join of node "
)

// JoinCluster is the cluster's half of a kubelet join.
type JoinCluster struct {
	Target
	// Server is the API server URL, CAPEM its CA (from the kubeconfig the
	// cluster was added with).
	Server string
	CAPEM  []byte
	// Token is the bootstrap token "<id>.<secret>"; TokenID its id, the
	// Secret bootstrap-token-<id> in kube-system.
	Token        string
	TokenID      string
	TokenExpires time.Time
}

// PrepareJoin readies the node's cluster for its kubelet to join: it
// makes sure the bootstrap RBAC is there (idempotent) and mints a
// bootstrap token that expires after ttl (DefaultBootstrapTokenTTL when
// 0). Errors: ErrNoCluster, ErrInvalid (a cluster whose kubeconfig has no
// CA, or skips verifying it), ErrUnreachable (the API server refused or
// did not answer, saying what it refused).
func (m *Manager) PrepareJoin(ctx context.Context, n FleetNode, ttl time.Duration) (JoinCluster, error) {
	if ttl == 0 {
		ttl = DefaultBootstrapTokenTTL
	}
	if ttl < time.Minute || ttl > 24*time.Hour {
		return JoinCluster{}, fmt.Errorf("%w: bootstrap token lifetime %s: want 1m to 24h", ErrInvalid, ttl)
	}
	t, c, err := m.resolve(ctx, n)
	if err != nil {
		return JoinCluster{Target: t}, err
	}
	cc, err := m.clientFor(c)
	if err != nil {
		return JoinCluster{Target: t}, err
	}
	j := JoinCluster{Target: t, Server: cc.k.server, CAPEM: cc.k.rest.CAData}
	if cc.k.insecure || len(j.CAPEM) == 0 {
		return j, fmt.Errorf("%w: cluster %s was added with a kubeconfig that names no certificate-authority-data, and a kubelet must verify the API server: add the cluster again with a kubeconfig that embeds the cluster CA", ErrInvalid, t.Cluster)
	}
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	wrap := func(what string, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: cluster %s: %s: %s", ErrUnreachable, t.Cluster, what, explain(err, cc.k, m.opts.CallTimeout))
	}
	if err := EnsureBootstrapRBAC(cctx, cc.client); err != nil {
		return j, wrap("bootstrap RBAC (the cluster credentials need to get and create clusterrolebindings)", err)
	}
	expires := m.opts.Now().Add(ttl)
	token, err := mintBootstrapToken(cctx, cc.client, descriptionPrefix+n.ID+" as "+t.Node, expires)
	if err != nil {
		return j, wrap("bootstrap token (the cluster credentials need to create secrets in kube-system)", err)
	}
	j.Token, j.TokenExpires = token, expires
	j.TokenID, _, _ = cutToken(token)
	m.log.InfoContext(ctx, "bootstrap token minted", "cluster", t.Cluster, "node_id", n.ID, "k8s_node", t.Node, "token_id", j.TokenID, "expires", expires)
	return j, nil
}

func cutToken(token string) (id, secret string, ok bool) {
	if len(token) != 23 || token[6] != '.' {
		return "", "", false
	}
	return token[:6], token[7:], true
}

// mintBootstrapToken creates a token Secret (kube-system,
// bootstrap-token-<id>) for authentication only, in BootstrapGroup,
// expiring at expires, and returns the token.
func mintBootstrapToken(ctx context.Context, c kubernetes.Interface, description string, expires time.Time) (string, error) {
	for range 3 { // a token id taken already: another random one
		token, err := bootstraputil.GenerateBootstrapToken()
		if err != nil {
			return "", err
		}
		id, secret, _ := cutToken(token)
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name:      bootstraputil.BootstrapTokenSecretName(id),
				Namespace: metav1.NamespaceSystem,
				Labels:    map[string]string{"app.kubernetes.io/managed-by": "budfleet"},
			},
			Type: bootstrapapi.SecretTypeBootstrapToken,
			StringData: map[string]string{
				bootstrapapi.BootstrapTokenIDKey:               id,
				bootstrapapi.BootstrapTokenSecretKey:           secret,
				bootstrapapi.BootstrapTokenDescriptionKey:      description,
				bootstrapapi.BootstrapTokenExpirationKey:       expires.UTC().Format(time.RFC3339),
				bootstrapapi.BootstrapTokenUsageAuthentication: "true",
				bootstrapapi.BootstrapTokenExtraGroupsKey:      BootstrapGroup,
			},
		}
		_, err = c.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return "", err
		}
		return token, nil
	}
	return "", errors.New("three random token ids were all taken")
}

// EnsureBootstrapRBAC makes sure the ClusterRoleBindings of kubelet TLS
// bootstrap exist: node-bootstrapper and nodeclient auto-approval for
// BootstrapGroup, selfnodeclient auto-approval for system:nodes. A binding
// that exists is left alone (kubeadm's, or an operator's) unless it lacks
// the subject, which is then added; nothing is removed.
func EnsureBootstrapRBAC(ctx context.Context, c kubernetes.Interface) error {
	for _, b := range []struct{ name, role, group string }{
		{bindingNodeBootstrapper, roleNodeBootstrapper, BootstrapGroup},
		{bindingNodeAutoApprove, roleNodeClient, BootstrapGroup},
		{bindingSelfNodeClient, roleSelfNodeClient, "system:nodes"},
	} {
		if err := ensureBinding(ctx, c, b.name, b.role, b.group); err != nil {
			return fmt.Errorf("clusterrolebinding %s: %w", b.name, err)
		}
	}
	return nil
}

func ensureBinding(ctx context.Context, c kubernetes.Interface, name, role, group string) error {
	subject := rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: group}
	crbs := c.RbacV1().ClusterRoleBindings()
	for range 5 { // a conflict: someone else changed it; read it again
		got, err := crbs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			want := &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "budfleet"}},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
				Subjects:   []rbacv1.Subject{subject},
			}
			_, err = crbs.Create(ctx, want, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			return err
		}
		if err != nil {
			return err
		}
		if got.RoleRef.Name != role {
			return fmt.Errorf("exists and binds ClusterRole %s, not %s: rename or remove it", got.RoleRef.Name, role)
		}
		for _, s := range got.Subjects {
			if s.Kind == subject.Kind && s.Name == subject.Name {
				return nil
			}
		}
		got.Subjects = append(got.Subjects, subject)
		_, err = crbs.Update(ctx, got, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		return err
	}
	return errors.New("changed by someone else five times while being updated")
}
