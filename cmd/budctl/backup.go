package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bud-ecosystem/budfleet/controller/backup"
	backupv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/backup/v1"
)

func (a *app) backupCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "backup", Short: "Back up the controller's state"}
	var out, passFile string
	var includeCA bool
	create := &cobra.Command{
		Use:   "create -o FILE",
		Short: "Write a consistent backup of the controller's state (and, with --include-ca, its key material, encrypted) to FILE",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("-o FILE is required")
			}
			req := &backupv1.CreateBackupRequest{IncludeCa: includeCA}
			if includeCA {
				if passFile == "" {
					return errors.New("--include-ca needs --passphrase-file: the CA key is encrypted under it")
				}
				b, err := os.ReadFile(passFile)
				if err != nil {
					return fmt.Errorf("--passphrase-file: %w", err)
				}
				req.Passphrase = strings.TrimRight(string(b), "\r\n")
			}
			if _, err := a.fleet(); err != nil { // dials
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			stream, err := backupv1.NewBackupServiceClient(a.conn).CreateBackup(ctx, req)
			if err != nil {
				return statusErr(err)
			}
			var buf bytes.Buffer
			for {
				resp, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return statusErr(err)
				}
				buf.Write(resp.GetChunk())
			}
			m, _, err := backup.Read(bytes.NewReader(buf.Bytes()))
			if err != nil {
				return fmt.Errorf("the controller sent a backup that does not check: %w", err)
			}
			tmp := out + ".tmp"
			if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
				return err
			}
			if err := os.Rename(tmp, out); err != nil {
				return err
			}
			ca := "without the CA key"
			if m.PKI != nil {
				ca = "with the CA and server keys, encrypted"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: %d bytes, %s store (schema %d) as of %s, %s\n", filepath.Clean(out), buf.Len(), m.Backend, m.SchemaVersion, m.CreatedAt.Format("2006-01-02T15:04:05Z"), ca)
			return nil
		},
	}
	create.Flags().StringVarP(&out, "output", "o", "", "file to write (0600)")
	create.Flags().BoolVar(&includeCA, "include-ca", false, "include the CA key, the server key and the admin budctl config, encrypted")
	create.Flags().StringVar(&passFile, "passphrase-file", "", "file holding the passphrase (at least 12 characters) that encrypts the key material")
	cmd.AddCommand(create)
	return cmd
}
