package ca

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"

	"github.com/bud-ecosystem/budfleet/pki"
)

// NewJoinToken makes a token with a fresh id and secret for the CA with the
// given public-key hash.
func NewJoinToken(caHash string) (pki.JoinToken, error) {
	id := make([]byte, 6)
	sec := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return pki.JoinToken{}, err
	}
	if _, err := rand.Read(sec); err != nil {
		return pki.JoinToken{}, err
	}
	return pki.JoinToken{CAHash: caHash, ID: hex.EncodeToString(id), Secret: hex.EncodeToString(sec)}, nil
}

// HashSecret is what the controller stores for a token secret. The secret is
// 128 random bits, so a plain SHA-256 is enough to make a stolen store
// useless for joining.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches compares a presented secret with a stored hash in constant
// time.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}
