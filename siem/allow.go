package siem

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"strings"
)

// Allowlist is the node owner's word on what a configuration pushed by the
// controller may do on this node: the `siem_allow:` section of agent.yaml.
// A push outside it is refused by the agent (nothing is read, nothing is
// sent) and reported back as the SIEM status's config_error. The local
// `siem:` section is the owner's own and is not checked against it.
type Allowlist struct {
	// SourcePrefixes are the directories pushed sources may read under
	// (default /var/log/audit/). A glob whose fixed part lies above the
	// agent's state directory is refused.
	SourcePrefixes []string `yaml:"source_prefixes" json:"source_prefixes,omitempty"`
	// Outputs are host:port patterns (path.Match: "*.soc.example.com:6514",
	// "10.0.0.7:*", "*" for any) pushed outputs may send to (default "*").
	Outputs []string `yaml:"outputs" json:"outputs,omitempty"`
	// Schemes are the transports pushed outputs may use: syslog, relp,
	// https (Splunk HEC over TLS), http (default syslog, relp, https).
	// Plain http is refused unless it is listed and AllowPlainHTTP is set.
	Schemes        []string `yaml:"schemes" json:"schemes,omitempty"`
	AllowPlainHTTP bool     `yaml:"allow_plain_http" json:"allow_plain_http,omitempty"`
	// FilePrefixes are the directories token_file and TLS files may be read
	// from (default /etc/budfleet/siem/).
	FilePrefixes []string `yaml:"file_prefixes" json:"file_prefixes,omitempty"`
}

// Defaults of Allowlist.
var (
	DefaultSourcePrefixes = []string{"/var/log/audit/"}
	DefaultOutputPatterns = []string{"*"}
	DefaultSchemes        = []string{"syslog", "relp", "https"}
	DefaultFilePrefixes   = []string{"/etc/budfleet/siem/"}
)

// WithDefaults fills the unset fields.
func (a Allowlist) WithDefaults() Allowlist {
	if a.SourcePrefixes == nil {
		a.SourcePrefixes = DefaultSourcePrefixes
	}
	if a.Outputs == nil {
		a.Outputs = DefaultOutputPatterns
	}
	if a.Schemes == nil {
		a.Schemes = DefaultSchemes
	}
	if a.FilePrefixes == nil {
		a.FilePrefixes = DefaultFilePrefixes
	}
	return a
}

// Validate checks the allowlist itself.
func (a Allowlist) Validate() error {
	for _, p := range append(append([]string{}, a.SourcePrefixes...), a.FilePrefixes...) {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("siem_allow: prefix %q must be an absolute path", p)
		}
	}
	for _, o := range a.Outputs {
		if _, err := path.Match(o, ""); err != nil {
			return fmt.Errorf("siem_allow.outputs: pattern %q: %w", o, err)
		}
	}
	for _, s := range a.Schemes {
		switch s {
		case "syslog", "relp", "https", "http":
		default:
			return fmt.Errorf("siem_allow.schemes: %q is not syslog, relp, https or http", s)
		}
	}
	return nil
}

// under reports whether p (clean, absolute) is prefix or inside it.
func under(p, prefix string) bool {
	prefix = filepath.Clean(prefix)
	if prefix == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// resolve cleans p and follows symlinks in the longest part of it that
// exists, so a link into a protected place counts as that place.
func resolve(p string) string {
	p = filepath.Clean(p)
	dir, rest := p, ""
	for dir != "/" && dir != "." {
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(r, rest)
		}
		dir, rest = filepath.Dir(dir), filepath.Join(filepath.Base(dir), rest)
	}
	return p
}

// fixedPart is the directory of a glob before its first wildcard.
func fixedPart(p string) (string, bool) {
	i := strings.IndexAny(p, "*?[\\")
	if i < 0 {
		return p, false
	}
	return filepath.Dir(p[:i] + "x"), true
}

func (a Allowlist) fileAllowed(what, p string, prefixes, protected []string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q: a pushed configuration may name absolute paths only", what, p)
	}
	clean := filepath.Clean(p)
	fixed, glob := fixedPart(clean)
	real := resolve(fixed)
	for _, prot := range protected {
		if prot == "" {
			continue
		}
		rp := resolve(prot)
		if under(real, rp) || under(clean, filepath.Clean(prot)) || (glob && (under(rp, real) || under(filepath.Clean(prot), fixed))) {
			return fmt.Errorf("%s %q: the agent's state directory and keys (%s) are never readable by a pushed configuration", what, p, prot)
		}
	}
	for _, pre := range prefixes {
		if under(clean, pre) && under(real, resolve(pre)) {
			return nil
		}
	}
	return fmt.Errorf("%s %q is outside this node's allowlist (%s); the node owner may add a prefix under siem_allow in agent.yaml", what, p, strings.Join(prefixes, ", "))
}

// Check refuses a pushed configuration that reads or sends outside the
// allowlist. protected are paths never readable whatever the prefixes say
// (the agent's state directory).
func (a Allowlist) Check(c Config, protected []string) error {
	a = a.WithDefaults()
	var errs []error
	for _, s := range c.Sources {
		if err := a.fileAllowed("source", s.Path, a.SourcePrefixes, protected); err != nil {
			errs = append(errs, err)
		}
	}
	for _, o := range c.Outputs {
		for what, f := range map[string]string{"token_file": o.TokenFile, "tls.ca_file": o.TLS.CAFile, "tls.cert_file": o.TLS.CertFile, "tls.key_file": o.TLS.KeyFile} {
			if f == "" {
				continue
			}
			if err := a.fileAllowed("output "+o.Name+" "+what, f, a.FilePrefixes, protected); err != nil {
				errs = append(errs, err)
			}
		}
		scheme, hostport := o.Type, o.Address
		if o.Type == OutputSplunkHEC {
			u, err := url.Parse(o.Address)
			if err != nil {
				errs = append(errs, fmt.Errorf("output %s: address %q is not a URL", o.Name, o.Address))
				continue
			}
			scheme, hostport = u.Scheme, u.Host
			if u.Port() == "" {
				port := "443"
				if u.Scheme == "http" {
					port = "80"
				}
				hostport = net.JoinHostPort(u.Hostname(), port)
			}
		}
		okScheme := false
		for _, s := range a.Schemes {
			okScheme = okScheme || s == scheme
		}
		if scheme == "http" && !a.AllowPlainHTTP {
			okScheme = false
		}
		if !okScheme {
			hint := "siem_allow.schemes"
			if scheme == "http" {
				hint = "siem_allow.schemes with http and siem_allow.allow_plain_http: true (the HEC token would travel in clear)"
			}
			errs = append(errs, fmt.Errorf("output %s: scheme %q is not allowed on this node (%s)", o.Name, scheme, hint))
		}
		okDest := false
		for _, pat := range a.Outputs {
			if m, _ := path.Match(pat, hostport); m {
				okDest = true
			}
		}
		if !okDest {
			errs = append(errs, fmt.Errorf("output %s: destination %q is outside this node's allowlist (%s)", o.Name, hostport, strings.Join(a.Outputs, ", ")))
		}
	}
	return errors.Join(errs...)
}

func cleanPath(p string) string { return filepath.Clean(p) }
