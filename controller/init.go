package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bud-ecosystem/budfleet/client"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	"github.com/bud-ecosystem/budfleet/pki"
)

// InitConfig configures Init.
type InitConfig struct {
	DataDir     string
	ServerNames []string
	// Advertise is the address written into the admin budctl config.
	Advertise string
	Now       time.Time
}

// Init creates a controller data dir: CA, server certificate, an admin
// operator credential in a ready budctl config, and an empty store.
func Init(cfg InitConfig) error {
	if cfg.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if cfg.Now.IsZero() {
		cfg.Now = time.Now()
	}
	if err := pki.PrivateDir(cfg.DataDir); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, ca.CACertFile)); err == nil {
		return fmt.Errorf("%w in %s: refusing to overwrite it (every node and operator trusts it); use another --data-dir", ca.ErrCAExists, cfg.DataDir)
	}
	authority, err := ca.NewCA(cfg.Now)
	if err != nil {
		return err
	}
	if err := writeServerCert(cfg.DataDir, authority, cfg.ServerNames, cfg.Now); err != nil {
		return err
	}
	adminKey, err := pki.NewKey()
	if err != nil {
		return err
	}
	adminCert, err := authority.IssueClient(adminKey.Public(), pki.OperatorSubject("admin", pki.RoleAdmin), cfg.Now, 365*24*time.Hour)
	if err != nil {
		return err
	}
	keyPEM, err := pki.EncodeKey(adminKey)
	if err != nil {
		return err
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = "127.0.0.1:7443"
	}
	bc := client.Config{Server: adv, CA: string(pki.EncodeCert(authority.Cert)), Certificate: string(pki.EncodeCert(adminCert)), Key: string(keyPEM)}
	if err := bc.Save(filepath.Join(cfg.DataDir, AdminConfigFile)); err != nil {
		return err
	}
	st, err := bolt.Open(filepath.Join(cfg.DataDir, StoreFile), bolt.Options{})
	if err != nil {
		return err
	}
	// The admin is an operator record like any other: it can be renewed
	// and revoked.
	if err := RecordOperator(context.Background(), st, adminCert, cfg.Now); err != nil {
		st.Close()
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	// The CA goes last: its presence is what marks the dir initialised.
	return authority.Save(cfg.DataDir)
}

func writeServerCert(dir string, authority *ca.CA, names []string, now time.Time) error {
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	cert, err := authority.IssueServer(key.Public(), names, now, ServerCertTTL)
	if err != nil {
		return err
	}
	kb, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(filepath.Join(dir, ca.ServerKeyFile), kb, 0o600); err != nil {
		return err
	}
	return pki.WriteFile(filepath.Join(dir, ca.ServerCertFile), pki.EncodeCert(cert), 0o644)
}
