package pki

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// A join token reads "bud1.<ca hash>.<id>.<secret>": a version, the SHA-256
// of the controller CA's public key (hex, 64), a token id (hex, 12) and a
// secret (hex, 32). The id is public and names the token in listings; the
// controller stores only the secret's hash.
const tokenVersion = "bud1"

var (
	tokenIDRe     = regexp.MustCompile(`^[0-9a-f]{12}$`)
	tokenSecretRe = regexp.MustCompile(`^[0-9a-f]{32}$`)
	caHashRe      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ErrMalformedToken is returned for a string that is not a join token.
var ErrMalformedToken = errors.New("malformed join token")

// JoinToken is a parsed join token.
type JoinToken struct {
	CAHash string
	ID     string
	Secret string
}

func (t JoinToken) String() string {
	return strings.Join([]string{tokenVersion, t.CAHash, t.ID, t.Secret}, ".")
}

// ParseJoinToken parses s, saying what part is wrong.
func ParseJoinToken(s string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 {
		return JoinToken{}, fmt.Errorf("%w: want bud1.<ca-hash>.<id>.<secret>", ErrMalformedToken)
	}
	if parts[0] != tokenVersion {
		return JoinToken{}, fmt.Errorf("%w: unknown version %q (this agent understands %s)", ErrMalformedToken, parts[0], tokenVersion)
	}
	t := JoinToken{CAHash: parts[1], ID: parts[2], Secret: parts[3]}
	switch {
	case !caHashRe.MatchString(t.CAHash):
		return JoinToken{}, fmt.Errorf("%w: CA hash must be 64 hex digits", ErrMalformedToken)
	case !tokenIDRe.MatchString(t.ID):
		return JoinToken{}, fmt.Errorf("%w: id must be 12 hex digits", ErrMalformedToken)
	case !tokenSecretRe.MatchString(t.Secret):
		return JoinToken{}, fmt.Errorf("%w: secret must be 32 hex digits", ErrMalformedToken)
	}
	return t, nil
}

// ValidTokenID reports whether id has the form of a token id.
func ValidTokenID(id string) bool { return tokenIDRe.MatchString(id) }
