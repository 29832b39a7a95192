package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/controller"
	"github.com/bud-ecosystem/budfleet/controller/backup"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/controller/store/bolt"
	etcdstore "github.com/bud-ecosystem/budfleet/controller/store/etcd"
	"github.com/bud-ecosystem/budfleet/pki"
)

func restoreCmd() *cobra.Command {
	var from, dataDir, pkiDir, passFile, storeKind, etcdCA, etcdCert, etcdKey, etcdPrefix string
	var etcdEndpoints []string
	var force bool
	cmd := &cobra.Command{
		Use:   "restore --from FILE --data-dir DIR",
		Short: "Restore a controller's state from a 'budctl backup create' file, into a data dir or an etcd prefix",
		Long: `Restore checks the whole file first and refuses a truncated, damaged or foreign one,
and a backup of another fleet (its CA differs from the PKI already in place).
The CA and server keys come from the backup when it has them (made with
--include-ca; --passphrase-file decrypts them), else they must already be in
--pki-dir (default --data-dir). A bbolt backup restores into DIR/controller.db;
with --store etcd an etcd backup restores into the (empty) --etcd-prefix.
Stop the controller first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.Open(from)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			m, payload, err := backup.Read(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w; nothing was restored", from, err)
			}
			if pkiDir == "" {
				pkiDir = dataDir
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return err
			}
			if err := restorePKI(m, pkiDir, passFile); err != nil {
				return err
			}
			switch storeKind {
			case "bolt", "bbolt", "":
				if m.Backend != backup.BackendBolt {
					return fmt.Errorf("%s is a backup of an %s store: restore it with --store %s", from, m.Backend, m.Backend)
				}
				if m.SchemaVersion > bolt.SchemaVersion() {
					return fmt.Errorf("%s has schema version %d, newer than this bud-controller's %d: restore with the bud-controller that made it", from, m.SchemaVersion, bolt.SchemaVersion())
				}
				dst := filepath.Join(dataDir, controller.StoreFile)
				if _, err := os.Stat(dst); err == nil && !force {
					return fmt.Errorf("%s exists: restore into an empty data dir, or pass --force to replace it", dst)
				}
				tmp := dst + ".restore"
				if err := os.WriteFile(tmp, payload, 0o600); err != nil {
					return err
				}
				st, err := bolt.Open(tmp, bolt.Options{})
				if err != nil {
					os.Remove(tmp)
					return fmt.Errorf("the backup's store does not open: %w; nothing was restored", err)
				}
				st.Close()
				if err := os.Rename(tmp, dst); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "restored %s (%d bytes, as of %s) into %s\n", from, len(payload), m.CreatedAt.Format(time.RFC3339), dst)
			case "etcd":
				if m.Backend != backup.BackendEtcd {
					return fmt.Errorf("%s is a backup of a %s store: restore it with --store %s", from, m.Backend, m.Backend)
				}
				if m.SchemaVersion > etcdstore.SchemaVersion {
					return fmt.Errorf("%s has schema version %d, newer than this bud-controller's %d", from, m.SchemaVersion, etcdstore.SchemaVersion)
				}
				st, err := etcdstore.Open(cmd.Context(), etcdstore.Options{Endpoints: etcdEndpoints, CAFile: etcdCA, CertFile: etcdCert, KeyFile: etcdKey, Prefix: etcdPrefix})
				if err != nil {
					return err
				}
				defer st.Close()
				n, err := st.Restore(cmd.Context(), payload, force)
				if err != nil {
					return fmt.Errorf("restore into etcd: %w (after %d keys)", err, n)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "restored %s (%d keys, as of %s, etcd revision %d) into etcd prefix %s\n", from, n, m.CreatedAt.Format(time.RFC3339), m.Revision, st.Prefix())
			default:
				return fmt.Errorf("--store %q: want bolt or etcd", storeKind)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "backup file")
	f.StringVar(&dataDir, "data-dir", "", "controller data dir to restore into (created)")
	f.StringVar(&pkiDir, "pki-dir", "", "where the CA and server keys are or go (default --data-dir)")
	f.StringVar(&passFile, "passphrase-file", "", "passphrase of a backup made with --include-ca")
	f.BoolVar(&force, "force", false, "replace the store that is there")
	f.StringVar(&storeKind, "store", "bolt", "bolt or etcd")
	f.StringSliceVar(&etcdEndpoints, "etcd-endpoints", nil, "etcd client URLs for --store etcd")
	f.StringVar(&etcdCA, "etcd-ca", "", "etcd CA certificate (PEM)")
	f.StringVar(&etcdCert, "etcd-cert", "", "etcd client certificate (PEM)")
	f.StringVar(&etcdKey, "etcd-key", "", "etcd client key (PEM)")
	f.StringVar(&etcdPrefix, "etcd-prefix", etcdstore.DefaultPrefix, "the fleet's etcd key prefix")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}

// restorePKI checks the backup's CA against the PKI in pkiDir, or writes
// the backup's key material there when pkiDir has none.
func restorePKI(m backup.Manifest, pkiDir, passFile string) error {
	have, err := os.ReadFile(filepath.Join(pkiDir, ca.CACertFile))
	switch {
	case err == nil:
		cert, derr := pki.DecodeCert(have)
		if derr != nil {
			return fmt.Errorf("%s: %w", filepath.Join(pkiDir, ca.CACertFile), derr)
		}
		if got := "sha256:" + pki.PublicKeyHash(cert); got != m.CAHash {
			return fmt.Errorf("the backup is of another fleet: its CA is %s, the CA in %s is %s; nothing was restored", m.CAHash, pkiDir, got)
		}
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if m.PKI == nil {
		return fmt.Errorf("%w, and %s has no CA: copy the fleet's %s into it first; nothing was restored", backup.ErrNoPKI, pkiDir, strings.Join(controller.PKIFiles, ", "))
	}
	if passFile == "" {
		return errors.New("the backup's CA and server keys are encrypted: pass --passphrase-file; nothing was restored")
	}
	pass, err := os.ReadFile(passFile)
	if err != nil {
		return fmt.Errorf("--passphrase-file: %w", err)
	}
	files, err := m.PKI.Open(strings.TrimRight(string(pass), "\r\n"))
	if err != nil {
		return fmt.Errorf("%w; nothing was restored", err)
	}
	cert, err := pki.DecodeCert(files[ca.CACertFile])
	if err != nil || "sha256:"+pki.PublicKeyHash(cert) != m.CAHash || !bytes.Equal(bytes.TrimSpace(files[ca.CACertFile]), bytes.TrimSpace(m.CACert)) {
		return fmt.Errorf("%w: the encrypted CA is not the manifest's", backup.ErrDamaged)
	}
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		if filepath.Base(name) != name {
			return fmt.Errorf("%w: key material names %q", backup.ErrDamaged, name)
		}
		if err := os.WriteFile(filepath.Join(pkiDir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
