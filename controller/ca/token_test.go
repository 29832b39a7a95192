package ca

import (
	"regexp"
	"strings"
	"testing"

	"github.com/bud-ecosystem/budfleet/pki"
)

// The token format as pki documents it: 12 and 32 lowercase hex digits, and
// 64 for a SHA-256.
var (
	tokenIDRe     = regexp.MustCompile(`^[0-9a-f]{12}$`)
	tokenSecretRe = regexp.MustCompile(`^[0-9a-f]{32}$`)
	caHashRe      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

const (
	testHash   = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testID     = "0123456789ab"
	testSecret = "0123456789abcdef0123456789abcdef"
)

func TestJoinTokenRoundTrip(t *testing.T) {
	tok, err := NewJoinToken(testHash)
	if err != nil {
		t.Fatal(err)
	}
	if tok.CAHash != testHash {
		t.Errorf("CAHash = %q", tok.CAHash)
	}
	if !tokenIDRe.MatchString(tok.ID) || !pki.ValidTokenID(tok.ID) {
		t.Errorf("ID %q is not 12 lowercase hex digits", tok.ID)
	}
	if !tokenSecretRe.MatchString(tok.Secret) {
		t.Errorf("Secret %q is not 32 lowercase hex digits", tok.Secret)
	}
	s := tok.String()
	if want := "bud1." + testHash + "." + tok.ID + "." + tok.Secret; s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
	got, err := pki.ParseJoinToken(s)
	if err != nil {
		t.Fatalf("pki.ParseJoinToken(%q): %v", s, err)
	}
	if got != tok {
		t.Errorf("round trip = %+v, want %+v", got, tok)
	}
	// Surrounding whitespace, as pasted from a terminal, is tolerated.
	if got, err := pki.ParseJoinToken("  " + s + "\n"); err != nil || got != tok {
		t.Errorf("ParseJoinToken with whitespace = %+v, %v", got, err)
	}

	other, err := NewJoinToken(testHash)
	if err != nil {
		t.Fatal(err)
	}
	if other.ID == tok.ID || other.Secret == tok.Secret {
		t.Error("two fresh tokens share an id or a secret")
	}
}

func TestHashSecret(t *testing.T) {
	// SHA-256("abc"), FIPS 180-2.
	if got, want := HashSecret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("HashSecret(abc) = %s, want %s", got, want)
	}
	h := HashSecret(testSecret)
	if h == testSecret || !caHashRe.MatchString(h) {
		t.Errorf("HashSecret = %q, want 64 lowercase hex digits", h)
	}
	if HashSecret(testSecret) != h {
		t.Error("HashSecret is not deterministic")
	}
	cases := []struct {
		name   string
		secret string
		hash   string
		want   bool
	}{
		{"match", testSecret, h, true},
		{"other secret", strings.Repeat("f", 32), h, false},
		{"empty secret", "", h, false},
		{"empty hash", testSecret, "", false},
		{"uppercase hash", testSecret, strings.ToUpper(h), false},
		{"truncated hash", testSecret, h[:63], false},
		{"secret compared to itself", testSecret, testSecret, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := SecretMatches(tc.secret, tc.hash); got != tc.want {
				t.Errorf("SecretMatches(%q, %q) = %v, want %v", tc.secret, tc.hash, got, tc.want)
			}
		})
	}
}
