package bmc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

// Credentials is an ipmi_credentials_file: BMC logins kept out of the
// inventory (which is usually in version control). Per host an entry may
// also give the BMC's address and port; defaults apply to every host
// without its own username or password.
//
//	defaults: {username: ADMIN, password: ADMIN}
//	hosts:
//	  gpu-01: {address: 10.0.2.30, port: 623, username: admin, password: s3cret}
//
// The file should be 0600; one readable by others is refused.
type Credentials struct {
	Defaults Entry            `yaml:"defaults"`
	Hosts    map[string]Entry `yaml:"hosts"`
}

// Entry is one BMC's part of the file.
type Entry struct {
	Address  string `yaml:"address"`
	Port     int    `yaml:"port"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// LoadCredentials reads an ipmi_credentials_file strictly (unknown keys
// are errors).
func LoadCredentials(file string) (*Credentials, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("ipmi_credentials_file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ipmi_credentials_file %s is readable by others (mode %04o): chmod 600 it", file, st.Mode().Perm())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ipmi_credentials_file: %w", err)
	}
	var c Credentials
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("ipmi_credentials_file %s: %w (expected defaults: {username, password} and hosts: {NAME: {address, port, username, password}})", file, err)
	}
	for name, e := range c.Hosts {
		if e.Port < 0 || e.Port > 65535 {
			return nil, fmt.Errorf("ipmi_credentials_file %s: host %s: port %d is not a port", file, name, e.Port)
		}
	}
	return &c, nil
}

// Endpoint merges what the host's vars say (fromVars) with the file:
// the host's entry wins, then the vars, then the defaults.
func (c *Credentials) Endpoint(host string, fromVars Endpoint) Endpoint {
	ep := fromVars
	if c == nil {
		return ep
	}
	if ep.Username == "" {
		ep.Username = c.Defaults.Username
	}
	if ep.Password == "" {
		ep.Password = c.Defaults.Password
	}
	if e, ok := c.Hosts[host]; ok {
		if e.Address != "" {
			ep.Address = e.Address
		}
		if e.Port != 0 {
			ep.Port = e.Port
		}
		if e.Username != "" {
			ep.Username = e.Username
		}
		if e.Password != "" {
			ep.Password = e.Password
		}
	}
	return ep
}
