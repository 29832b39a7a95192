package kube

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Check is one reachability check of a cluster: whether the API server
// answered, accepted the credentials and allows what the node operations
// need, and if not, why.
type Check struct {
	CheckedAt time.Time
	Reachable bool
	// Reason says why not, in words, with what to do.
	Reason string
	// ServerVersion is the API server's GitVersion.
	ServerVersion string
	// AuthenticatedAs is the user the API server took the credentials for.
	AuthenticatedAs string
}

// permission is one thing node operations need.
type permission struct {
	attrs authorizationv1.ResourceAttributes
	why   string
}

// needed are the permissions cordon, uncordon and drain use.
var needed = []permission{
	{authorizationv1.ResourceAttributes{Verb: "get", Resource: "nodes"}, "read Nodes"},
	{authorizationv1.ResourceAttributes{Verb: "patch", Resource: "nodes"}, "cordon and uncordon Nodes"},
	{authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"}, "list the pods of a Node to drain it"},
	{authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "eviction"}, "evict pods"},
}

// check asks the API server behind client for its version, who the
// credentials are, and whether they may do what node operations need. It
// never returns an error: what went wrong is the Reason. client must have
// its own timeout (Options.CheckTimeout) for the version call, which takes
// no context.
func check(ctx context.Context, client kubernetes.Interface, k *kubeconfig, now time.Time, timeout time.Duration) Check {
	c := Check{CheckedAt: now}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		c.Reason = explain(err, k, timeout)
		return c
	}
	c.ServerVersion = v.GitVersion

	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		c.Reason = explain(err, k, timeout)
		return c
	}
	c.AuthenticatedAs = review.Status.UserInfo.Username
	if c.AuthenticatedAs == "system:anonymous" {
		c.Reason = fmt.Sprintf("the API server took the credentials of user %q for system:anonymous: they are not valid for this cluster; get a kubeconfig from it", k.user)
		return c
	}
	who := c.AuthenticatedAs
	if who == "" {
		who = k.user
	}
	var missing []string
	for _, p := range needed {
		attrs := p.attrs
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			c.Reason = explain(err, k, timeout)
			return c
		}
		if !r.Status.Allowed {
			res := attrs.Resource
			if attrs.Subresource != "" {
				res += "/" + attrs.Subresource
			}
			missing = append(missing, fmt.Sprintf("%s %s (to %s)", attrs.Verb, res, p.why))
		}
	}
	if len(missing) > 0 {
		c.Reason = fmt.Sprintf("user %q may not %s: grant it these cluster-wide (a ClusterRole and ClusterRoleBinding), or use a kubeconfig of a user who has them", who, strings.Join(missing, ", "))
		return c
	}
	c.Reachable = true
	return c
}

// explain turns an error from talking to the API server into words that
// say what to do.
func explain(err error, k *kubeconfig, timeout time.Duration) string {
	server := k.server
	var (
		unknownCA   x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		invalidCert x509.CertificateInvalidError
		dnsErr      *net.DNSError
		netErr      net.Error
		status      apierrors.APIStatus
	)
	switch {
	case errors.As(err, &unknownCA):
		if k.caFingerprint == "" {
			return fmt.Sprintf("the API server at %s has a certificate no system CA signed (x509: certificate signed by unknown authority): put the cluster's CA certificate in the kubeconfig's certificate-authority-data", server)
		}
		return fmt.Sprintf("the API server at %s has a certificate that the kubeconfig's CA (%s) did not sign (x509: certificate signed by unknown authority): put this cluster's CA certificate in certificate-authority-data", server, k.caFingerprint)
	case errors.As(err, &hostErr):
		return fmt.Sprintf("the API server's certificate is not valid for %s (%v): use a server address the certificate names, or set tls-server-name in the kubeconfig", server, hostErr.Error())
	case errors.As(err, &invalidCert):
		return fmt.Sprintf("the API server at %s has a certificate that is not valid (%v)", server, invalidCert.Error())
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing listens at %s (connection refused): check the server address and port in the kubeconfig and that the API server runs", server)
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve %s (%v): check the server address in the kubeconfig", dnsErr.Name, dnsErr)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout(), isTimeoutStatus(err):
		return fmt.Sprintf("no answer from %s within %s (timeout): check the address, and that the network and firewalls let the controller reach it", server, timeout)
	case apierrors.IsUnauthorized(err):
		return fmt.Sprintf("the API server at %s refused the credentials of user %q (401 Unauthorized, %s): the client certificate or token is wrong, expired or from another cluster; get a fresh kubeconfig", server, k.user, k.auth)
	case apierrors.IsForbidden(err):
		return fmt.Sprintf("user %q is not allowed to do this (403 Forbidden: %s): grant it access or use another kubeconfig", k.user, apiMessage(err))
	case errors.As(err, &status):
		return fmt.Sprintf("the API server at %s answered %d %s: %s", server, status.Status().Code, status.Status().Reason, apiMessage(err))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Sprintf("cannot reach the API server at %s: %v", server, ue.Err)
	}
	return fmt.Sprintf("cannot use the API server at %s: %v", server, err)
}

func isTimeoutStatus(err error) bool {
	return apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || strings.Contains(err.Error(), "Client.Timeout exceeded")
}

func apiMessage(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Message != "" {
		return status.Status().Message
	}
	return err.Error()
}
