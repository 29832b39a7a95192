// Package backup is the file format of controller backups, for both
// backends: 'budctl backup create' writes one, 'bud-controller restore'
// reads it.
//
// A file is
//
//	"BUDFLEET-BACKUP/1\n"
//	uint32 big-endian length, then the manifest as JSON
//	the store payload (Manifest.StoreBytes bytes): a bbolt file as a read
//	  transaction's WriteTo wrote it, or the etcd prefix's keys as JSON lines
//	"BUDEND\n" and the SHA-256 of everything before it (32 bytes)
//
// Read checks the magic (a foreign file is refused as not a backup), the
// lengths, the payload's hash and the trailer's (a truncated or damaged file
// is refused as such). The CA certificate is in the manifest in the clear,
// so a restore can refuse a backup of another fleet; the CA key, the server
// key and the admin budctl config only when asked for, encrypted under a
// passphrase (scrypt N=2^15 r=8 p=1, AES-256-GCM).
package backup

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/scrypt"
)

// Magic starts every backup file.
const Magic = "BUDFLEET-BACKUP/1\n"

const trailer = "BUDEND\n"

// Backends.
const (
	BackendBolt = "bolt"
	BackendEtcd = "etcd"
)

// Errors of Read, for errors.Is.
var (
	ErrForeign   = errors.New("not a budfleet controller backup")
	ErrDamaged   = errors.New("the backup is truncated or damaged")
	ErrNoPKI     = errors.New("the backup holds no CA key material (it was made without --include-ca)")
	ErrBadSecret = errors.New("wrong passphrase, or the backup's key material is damaged")
)

// Manifest describes a backup.
type Manifest struct {
	Format        int       `json:"format"`
	Backend       string    `json:"backend"`
	SchemaVersion uint64    `json:"schema_version"`
	CreatedAt     time.Time `json:"created_at"`
	// Controller is the version of the bud-controller that made it.
	Controller string `json:"controller"`
	// Revision is the etcd revision of the snapshot (etcd only).
	Revision int64 `json:"revision,omitempty"`
	// CACert is the fleet CA's certificate (PEM) and CAHash
	// "sha256:<hex>" of its public key, as join tokens carry it.
	CACert      []byte `json:"ca_cert"`
	CAHash      string `json:"ca_hash"`
	StoreBytes  int64  `json:"store_bytes"`
	StoreSHA256 string `json:"store_sha256"`
	// PKI is the encrypted key material, when included.
	PKI *Sealed `json:"pki,omitempty"`
}

// Sealed is data encrypted under a passphrase.
type Sealed struct {
	KDF        string `json:"kdf"` // "scrypt"
	N          int    `json:"n"`
	R          int    `json:"r"`
	P          int    `json:"p"`
	Salt       []byte `json:"salt"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
}

// MinPassphrase is the shortest passphrase Seal takes.
const MinPassphrase = 12

// Seal encrypts files (name -> content) under passphrase.
func Seal(files map[string][]byte, passphrase string) (*Sealed, error) {
	if len(passphrase) < MinPassphrase {
		return nil, fmt.Errorf("the passphrase must have at least %d characters", MinPassphrase)
	}
	plain, err := json.Marshal(files)
	if err != nil {
		return nil, err
	}
	s := &Sealed{KDF: "scrypt", N: 1 << 15, R: 8, P: 1, Salt: make([]byte, 16)}
	if _, err := rand.Read(s.Salt); err != nil {
		return nil, err
	}
	aead, err := s.aead(passphrase)
	if err != nil {
		return nil, err
	}
	s.Nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(s.Nonce); err != nil {
		return nil, err
	}
	s.Ciphertext = aead.Seal(nil, s.Nonce, plain, []byte(Magic))
	return s, nil
}

// Open decrypts what Seal made.
func (s *Sealed) Open(passphrase string) (map[string][]byte, error) {
	if s.KDF != "scrypt" {
		return nil, fmt.Errorf("%w: unknown key derivation %q", ErrDamaged, s.KDF)
	}
	aead, err := s.aead(passphrase)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, s.Nonce, s.Ciphertext, []byte(Magic))
	if err != nil {
		return nil, ErrBadSecret
	}
	var files map[string][]byte
	if err := json.Unmarshal(plain, &files); err != nil {
		return nil, fmt.Errorf("%w: key material: %v", ErrDamaged, err)
	}
	return files, nil
}

func (s *Sealed) aead(passphrase string) (cipher.AEAD, error) {
	if s.N <= 1 || s.N > 1<<20 || s.R <= 0 || s.R > 32 || s.P <= 0 || s.P > 16 {
		return nil, fmt.Errorf("%w: key derivation parameters", ErrDamaged)
	}
	key, err := scrypt.Key([]byte(passphrase), s.Salt, s.N, s.R, s.P, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Write writes a backup of m with the store payload read from store (m's
// StoreBytes and StoreSHA256 are set from it) to w.
func Write(w io.Writer, m Manifest, store io.Reader) error {
	payload, err := io.ReadAll(store)
	if err != nil {
		return fmt.Errorf("read the store snapshot: %w", err)
	}
	sum := sha256.Sum256(payload)
	m.Format = 1
	m.StoreBytes = int64(len(payload))
	m.StoreSHA256 = hex.EncodeToString(sum[:])
	mb, err := json.Marshal(m)
	if err != nil {
		return err
	}
	h := sha256.New()
	out := io.MultiWriter(w, h)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(mb)))
	for _, b := range [][]byte{[]byte(Magic), n[:], mb, payload, []byte(trailer)} {
		if _, err := out.Write(b); err != nil {
			return err
		}
	}
	_, err = w.Write(h.Sum(nil))
	return err
}

// maxManifest bounds the manifest a reader takes.
const maxManifest = 16 << 20

// Read reads and checks a whole backup; the payload is the store's.
func Read(r io.Reader) (Manifest, []byte, error) {
	var m Manifest
	raw, err := io.ReadAll(r)
	if err != nil {
		return m, nil, err
	}
	if !bytes.HasPrefix(raw, []byte(Magic)) {
		if len(raw) < len(Magic) && bytes.HasPrefix([]byte(Magic), raw) && len(raw) > 0 {
			return m, nil, fmt.Errorf("%w: it ends after %d bytes", ErrDamaged, len(raw))
		}
		return m, nil, ErrForeign
	}
	rest := raw[len(Magic):]
	if len(rest) < 4 {
		return m, nil, fmt.Errorf("%w: it ends in the header", ErrDamaged)
	}
	ml := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if ml > maxManifest || int(ml) > len(rest) {
		return m, nil, fmt.Errorf("%w: it ends in the manifest", ErrDamaged)
	}
	if err := json.Unmarshal(rest[:ml], &m); err != nil {
		return m, nil, fmt.Errorf("%w: manifest: %v", ErrDamaged, err)
	}
	rest = rest[ml:]
	if m.Format != 1 {
		return m, nil, fmt.Errorf("backup format %d: this bud-controller reads format 1; use the bud-controller that made it, or a newer one", m.Format)
	}
	if m.StoreBytes < 0 || m.StoreBytes > int64(len(rest)) {
		return m, nil, fmt.Errorf("%w: it has %d of the store's %d bytes", ErrDamaged, len(rest), m.StoreBytes)
	}
	payload := rest[:m.StoreBytes]
	rest = rest[m.StoreBytes:]
	if sum := sha256.Sum256(payload); hex.EncodeToString(sum[:]) != m.StoreSHA256 {
		return m, nil, fmt.Errorf("%w: the store's checksum does not match", ErrDamaged)
	}
	if len(rest) != len(trailer)+sha256.Size || string(rest[:len(trailer)]) != trailer {
		return m, nil, fmt.Errorf("%w: no end marker after the store", ErrDamaged)
	}
	whole := sha256.Sum256(raw[:len(raw)-sha256.Size])
	if !bytes.Equal(whole[:], rest[len(trailer):]) {
		return m, nil, fmt.Errorf("%w: the file's checksum does not match", ErrDamaged)
	}
	return m, payload, nil
}
