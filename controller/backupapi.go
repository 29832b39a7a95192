package controller

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bud-ecosystem/budfleet/controller/backup"
	"github.com/bud-ecosystem/budfleet/controller/ca"
	"github.com/bud-ecosystem/budfleet/pki"
	backupv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/backup/v1"
	"github.com/bud-ecosystem/budfleet/version"
)

// Snapshotter is a store that can write a consistent copy of itself
// (store/bolt, store/etcd).
type Snapshotter interface {
	Snapshot(ctx context.Context, w io.Writer) (backup.Manifest, error)
}

// PKIFiles are the files of the PKI directory a backup with the CA carries.
var PKIFiles = []string{ca.CACertFile, ca.CAKeyFile, ca.ServerCertFile, ca.ServerKeyFile}

// BackupAPI implements backupv1.BackupServiceServer.
type BackupAPI struct {
	backupv1.UnimplementedBackupServiceServer
	s *Server
}

// BackupAPI returns the backup service.
func (s *Server) BackupAPI() *BackupAPI { return &BackupAPI{s: s} }

const backupChunk = 256 << 10

// CreateBackup streams a backup of the store, with the key material when
// asked, encrypted.
func (a *BackupAPI) CreateBackup(req *backupv1.CreateBackupRequest, stream backupv1.BackupService_CreateBackupServer) error {
	s := a.s
	ctx := stream.Context()
	snap, ok := s.opts.Store.(Snapshotter)
	if !ok {
		return status.Error(codes.Unimplemented, "this controller's store cannot be backed up")
	}
	var payload bytes.Buffer
	m, err := snap.Snapshot(ctx, &payload)
	if err != nil {
		return storeErr(err)
	}
	m.CreatedAt = s.opts.Now().UTC()
	m.Controller = version.Version
	m.CACert = pki.EncodeCert(s.ca.Cert)
	m.CAHash = "sha256:" + pki.PublicKeyHash(s.ca.Cert)
	if req.GetIncludeCa() {
		if s.opts.PKIDir == "" {
			return status.Error(codes.FailedPrecondition, "this controller does not know its PKI directory")
		}
		files := map[string][]byte{}
		for _, name := range PKIFiles {
			b, err := os.ReadFile(filepath.Join(s.opts.PKIDir, name))
			if err != nil {
				return status.Errorf(codes.Internal, "read %s: %v", name, err)
			}
			files[name] = b
		}
		if b, err := os.ReadFile(filepath.Join(s.opts.PKIDir, AdminConfigFile)); err == nil {
			files[AdminConfigFile] = b
		} else if !errors.Is(err, os.ErrNotExist) {
			return status.Errorf(codes.Internal, "read %s: %v", AdminConfigFile, err)
		}
		if m.PKI, err = backup.Seal(files, req.GetPassphrase()); err != nil {
			return status.Errorf(codes.InvalidArgument, "include the CA: %v", err)
		}
	}
	var file bytes.Buffer
	if err := backup.Write(&file, m, &payload); err != nil {
		return status.Errorf(codes.Internal, "write the backup: %v", err)
	}
	start := time.Now()
	size := file.Len()
	for file.Len() > 0 {
		if err := stream.Send(&backupv1.CreateBackupResponse{Chunk: file.Next(backupChunk)}); err != nil {
			return err
		}
	}
	who := "unknown"
	if id, ok := IdentityFrom(ctx); ok {
		who = id.Name
	}
	s.log.InfoContext(ctx, "backup created", "backend", m.Backend, "bytes", size, "store_bytes", m.StoreBytes, "with_ca", m.PKI != nil, "by", who, "took", time.Since(start))
	return nil
}
