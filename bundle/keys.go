package bundle

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// PEM block types of the key files: PKCS #8 and PKIX, as openssl writes
// ed25519 keys (openssl pkey -in FILE -pubout reads them).
const (
	privatePEM = "PRIVATE KEY"
	publicPEM  = "PUBLIC KEY"
)

// GenerateKey writes a new ed25519 key pair: the private key to
// privateFile (0600) and the public key to publicFile (0644). It refuses
// to overwrite either file, and leaves neither behind when it fails.
func GenerateKey(privateFile, publicFile string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if err := writeNew(privateFile, pem.EncodeToMemory(&pem.Block{Type: privatePEM, Bytes: privDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(publicFile, pem.EncodeToMemory(&pem.Block{Type: publicPEM, Bytes: pubDER}), 0o644); err != nil {
		os.Remove(privateFile)
		return nil, err
	}
	return pub, nil
}

func writeNew(name string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists; keygen never overwrites a key: remove it first or pick another name", name)
	}
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
	}
	return err
}

// LoadPrivateKey reads a private key file GenerateKey wrote.
func LoadPrivateKey(file string) (ed25519.PrivateKey, error) {
	der, err := readPEM(file, privatePEM)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T; bundles are signed with ed25519 keys (budctl bundle keygen)", file, k)
	}
	return priv, nil
}

// LoadPublicKey reads a public key file GenerateKey wrote.
func LoadPublicKey(file string) (ed25519.PublicKey, error) {
	der, err := readPEM(file, publicPEM)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T; bundles are signed with ed25519 keys (budctl bundle keygen)", file, k)
	}
	return pub, nil
}

func readPEM(file, typ string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("%s holds no PEM %q block: pass the %s file of budctl bundle keygen", file, typ, map[string]string{privatePEM: "--private", publicPEM: "--public"}[typ])
	}
	return blk.Bytes, nil
}
