package kube

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// MaxKubeconfigBytes bounds a kubeconfig given to AddCluster.
const MaxKubeconfigBytes = 256 << 10

var clusterNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidClusterName says why name cannot name a cluster, or nil: a DNS
// label (lower-case letters, digits and '-', at most 63).
func ValidClusterName(name string) error {
	if !clusterNameRe.MatchString(name) {
		return fmt.Errorf("%w: cluster name %q: use lower-case letters, digits and '-' (at most 63, starting and ending with a letter or digit)", ErrInvalid, truncate(name, 64))
	}
	return nil
}

// kubeconfig is a parsed, checked kubeconfig: one context, credentials
// inline.
type kubeconfig struct {
	// raw is the minified kubeconfig, what the store keeps.
	raw  []byte
	rest *rest.Config

	server        string
	caFingerprint string
	insecure      bool
	user          string
	auth          string
}

// parseKubeconfig reads a kubeconfig as AddCluster is given it and keeps
// only its current context. It must be self-contained: a kubeconfig that
// points at files or runs a credential plugin would make the controller
// read its own files or run programs on an operator's say-so, so those are
// refused with what to do instead.
func parseKubeconfig(b []byte) (*kubeconfig, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: kubeconfig: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, bad("it is empty")
	}
	if len(b) > MaxKubeconfigBytes {
		return nil, bad("it is %d bytes, more than the %d allowed", len(b), MaxKubeconfigBytes)
	}
	cfg, err := clientcmd.Load(b)
	if err != nil {
		return nil, bad("not a kubeconfig file (%v)", err)
	}
	if cfg.CurrentContext == "" && len(cfg.Contexts) == 1 {
		for name := range cfg.Contexts {
			cfg.CurrentContext = name
		}
	}
	if cfg.CurrentContext == "" {
		return nil, bad("it has %d contexts and no current-context: pick one with 'kubectl config use-context NAME --kubeconfig FILE'", len(cfg.Contexts))
	}
	kctx := cfg.Contexts[cfg.CurrentContext]
	if kctx == nil {
		return nil, bad("its current-context %q is not among its contexts", cfg.CurrentContext)
	}
	cl := cfg.Clusters[kctx.Cluster]
	if cl == nil {
		return nil, bad("context %q names cluster %q, which it does not define", cfg.CurrentContext, kctx.Cluster)
	}
	ai := cfg.AuthInfos[kctx.AuthInfo]
	if ai == nil {
		return nil, bad("context %q names user %q, which it does not define", cfg.CurrentContext, kctx.AuthInfo)
	}
	if cl.Server == "" {
		return nil, bad("cluster %q has no server URL", kctx.Cluster)
	}
	if !strings.HasPrefix(cl.Server, "https://") {
		return nil, bad("server %q is not an https:// URL: the controller talks to API servers over TLS only", cl.Server)
	}
	const flatten = "embed it ('kubectl config view --minify --flatten --kubeconfig FILE' writes such a file)"
	switch {
	case cl.CertificateAuthority != "":
		return nil, bad("cluster %q reads its CA from the file %s: %s", kctx.Cluster, cl.CertificateAuthority, flatten)
	case ai.ClientCertificate != "" || ai.ClientKey != "":
		return nil, bad("user %q reads its client certificate or key from a file: %s", kctx.AuthInfo, flatten)
	case ai.TokenFile != "":
		return nil, bad("user %q reads its token from the file %s: put the token itself in the kubeconfig", kctx.AuthInfo, ai.TokenFile)
	case ai.Exec != nil:
		return nil, bad("user %q runs the credential plugin %q, which the controller does not run: use a client certificate or a service-account token", kctx.AuthInfo, ai.Exec.Command)
	case ai.AuthProvider != nil:
		return nil, bad("user %q uses the auth provider %q, which the controller does not run: use a client certificate or a service-account token", kctx.AuthInfo, ai.AuthProvider.Name)
	case ai.Username != "" || ai.Password != "":
		return nil, bad("user %q uses basic authentication, which Kubernetes dropped in 1.19: use a client certificate or a service-account token", kctx.AuthInfo)
	}

	k := &kubeconfig{server: cl.Server, insecure: cl.InsecureSkipTLSVerify, user: kctx.AuthInfo}
	if len(cl.CertificateAuthorityData) > 0 {
		blk, _ := pem.Decode(cl.CertificateAuthorityData)
		if blk == nil || blk.Type != "CERTIFICATE" {
			return nil, bad("cluster %q: certificate-authority-data holds no PEM certificate", kctx.Cluster)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, bad("cluster %q: certificate-authority-data: %v", kctx.Cluster, err)
		}
		sum := sha256.Sum256(blk.Bytes)
		k.caFingerprint = "sha256:" + hex.EncodeToString(sum[:])
	}
	switch {
	case len(ai.ClientCertificateData) > 0 || len(ai.ClientKeyData) > 0:
		desc, err := describeClientCert(ai.ClientCertificateData)
		if err != nil {
			return nil, bad("user %q: %v", kctx.AuthInfo, err)
		}
		if len(ai.ClientKeyData) == 0 {
			return nil, bad("user %q has a client certificate but no client-key-data", kctx.AuthInfo)
		}
		k.auth = desc
	case ai.Token != "":
		k.auth = "bearer token"
	default:
		return nil, bad("user %q has no credentials: give it client-certificate-data and client-key-data, or a token", kctx.AuthInfo)
	}
	if ai.Impersonate != "" {
		k.auth += ", impersonating " + ai.Impersonate
	}

	// Keep only what the current context needs.
	if err := clientcmdapi.MinifyConfig(cfg); err != nil {
		return nil, bad("%v", err)
	}
	if k.raw, err = clientcmd.Write(*cfg); err != nil {
		return nil, bad("%v", err)
	}
	if k.rest, err = clientcmd.RESTConfigFromKubeConfig(k.raw); err != nil {
		return nil, bad("%v", err)
	}
	return k, nil
}

// describeClientCert names a client certificate's subject and expiry.
func describeClientCert(pemData []byte) (string, error) {
	blk, _ := pem.Decode(pemData)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return "", errors.New("client-certificate-data holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("client-certificate-data: %v", err)
	}
	desc := "client certificate CN=" + cert.Subject.CommonName
	for _, o := range cert.Subject.Organization {
		desc += " O=" + o
	}
	return desc + ", expires " + cert.NotAfter.UTC().Format(time.RFC3339), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
