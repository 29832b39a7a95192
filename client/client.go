// Package client is the operator side of the controller's API: the budctl
// config file (a server address and an operator credential, like a
// kubeconfig) and a dialer for it.
package client

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bud-ecosystem/budfleet/pki"
)

// Config is a budctl config file.
type Config struct {
	// Server is the controller's gRPC address, host:port.
	Server string `yaml:"server"`
	// ServerName overrides the name checked in the controller's
	// certificate; by default the host part of Server.
	ServerName string `yaml:"server_name,omitempty"`
	// CA, Certificate and Key are PEM.
	CA          string `yaml:"ca"`
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// Load reads and checks a config file. Unknown keys are errors.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read budctl config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("budctl config %s: %w", path, err)
	}
	if c.Server == "" || c.CA == "" || c.Certificate == "" || c.Key == "" {
		return nil, fmt.Errorf("budctl config %s: server, ca, certificate and key are all required", path)
	}
	return &c, nil
}

// Save writes c to path, readable by its owner only: it holds a private key.
func (c *Config) Save(path string) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	return pki.WriteFile(path, b, 0o600)
}

// TLS returns the client TLS config for c.
func (c *Config) TLS() (*tls.Config, error) {
	ca, err := pki.DecodeCert([]byte(c.CA))
	if err != nil {
		return nil, fmt.Errorf("budctl config ca: %w", err)
	}
	cert, err := tls.X509KeyPair([]byte(c.Certificate), []byte(c.Key))
	if err != nil {
		return nil, fmt.Errorf("budctl config certificate/key: %w", err)
	}
	name := c.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(c.Server)
		if err != nil {
			return nil, fmt.Errorf("budctl config server %q: %w", c.Server, err)
		}
		name = host
	}
	return pki.ClientTLS(ca, &cert, name), nil
}

// Dial connects to the controller in c. The connection is lazy: errors show
// on the first call.
func Dial(c *Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if c == nil {
		return nil, errors.New("no budctl config")
	}
	tc, err := c.TLS()
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(c.Server, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, opts...)...)
}
