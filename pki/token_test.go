package pki

import (
	"errors"
	"strings"
	"testing"
)

const (
	testHash   = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testID     = "0123456789ab"
	testSecret = "0123456789abcdef0123456789abcdef"
)

func TestParseJoinTokenMalformed(t *testing.T) {
	valid := strings.Join([]string{"bud1", testHash, testID, testSecret}, ".")
	if _, err := ParseJoinToken(valid); err != nil {
		t.Fatalf("reference token does not parse: %v", err)
	}
	cases := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"empty", "", "want bud1"},
		{"whitespace", "   ", "want bud1"},
		{"three parts", "bud1." + testHash + "." + testID, "want bud1"},
		{"five parts", valid + ".extra", "want bud1"},
		{"trailing dot", valid + ".", "want bud1"},
		{"wrong version", "bud2." + testHash + "." + testID + "." + testSecret, "version"},
		{"uppercase version", "BUD1." + testHash + "." + testID + "." + testSecret, "version"},
		{"empty version", "." + testHash + "." + testID + "." + testSecret, "version"},
		{"short hash", "bud1." + testHash[:63] + "." + testID + "." + testSecret, "CA hash"},
		{"long hash", "bud1." + testHash + "0." + testID + "." + testSecret, "CA hash"},
		{"sha256-prefixed hash", "bud1.sha256:" + testHash + "." + testID + "." + testSecret, "CA hash"},
		{"uppercase hash", "bud1." + strings.ToUpper(testHash) + "." + testID + "." + testSecret, "CA hash"},
		{"non-hex hash", "bud1." + strings.Repeat("g", 64) + "." + testID + "." + testSecret, "CA hash"},
		{"short id", "bud1." + testHash + "." + testID[:11] + "." + testSecret, "id"},
		{"long id", "bud1." + testHash + "." + testID + "c." + testSecret, "id"},
		{"uppercase id", "bud1." + testHash + ".0123456789AB." + testSecret, "id"},
		{"non-hex id", "bud1." + testHash + ".0123456789xy." + testSecret, "id"},
		{"empty id", "bud1." + testHash + ".." + testSecret, "id"},
		{"id with newline", "bud1." + testHash + "." + testID + "\n." + testSecret, "id"},
		{"short secret", "bud1." + testHash + "." + testID + "." + testSecret[:31], "secret"},
		{"long secret", "bud1." + testHash + "." + testID + "." + testSecret + "0", "secret"},
		{"uppercase secret", "bud1." + testHash + "." + testID + "." + strings.ToUpper(testSecret), "secret"},
		{"non-hex secret", "bud1." + testHash + "." + testID + "." + strings.Repeat("z", 32), "secret"},
		{"space inside", "bud1." + testHash + "." + testID + ". " + testSecret[1:], "secret"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseJoinToken(tc.in)
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("ParseJoinToken(%q) = %+v, %v; want ErrMalformedToken", tc.in, tok, err)
			}
			if tok != (JoinToken{}) {
				t.Errorf("ParseJoinToken returned %+v with an error", tok)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %q, want it to mention %q", err, tc.wantErr)
			}
			// The secret must never be echoed back in an error.
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("err = %q leaks the secret", err)
			}
		})
	}
}

func TestValidTokenID(t *testing.T) {
	for id, want := range map[string]bool{
		testID:          true,
		"ffffffffffff":  true,
		"":              false,
		"0123456789a":   false,
		"0123456789abc": false,
		"0123456789AB":  false,
		"0123456789a\n": false,
		"../../etc/pas": false,
	} {
		if got := ValidTokenID(id); got != want {
			t.Errorf("ValidTokenID(%q) = %v, want %v", id, got, want)
		}
	}
}

func FuzzParseJoinToken(f *testing.F) {
	valid := strings.Join([]string{"bud1", testHash, testID, testSecret}, ".")
	for _, s := range []string{
		valid,
		" " + valid + "\n",
		valid + ".",
		"bud2." + testHash + "." + testID + "." + testSecret,
		"bud1." + strings.ToUpper(testHash) + "." + testID + "." + testSecret,
		"bud1...",
		"",
		".",
		"bud1",
		"\xff\xfe.bud1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseJoinToken(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("ParseJoinToken(%q) error %v does not wrap ErrMalformedToken", s, err)
			}
			if tok != (JoinToken{}) {
				t.Fatalf("ParseJoinToken(%q) returned %+v with an error", s, tok)
			}
			return
		}
		str := tok.String()
		if str != strings.TrimSpace(s) {
			t.Fatalf("ParseJoinToken(%q).String() = %q, want the trimmed input", s, str)
		}
		again, err := ParseJoinToken(str)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", str, err)
		}
		if again != tok {
			t.Fatalf("round trip of %q: %+v != %+v", s, again, tok)
		}
		if !caHashRe.MatchString(tok.CAHash) || !ValidTokenID(tok.ID) || !tokenSecretRe.MatchString(tok.Secret) {
			t.Fatalf("accepted token %+v has invalid parts", tok)
		}
	})
}
