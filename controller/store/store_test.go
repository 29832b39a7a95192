package store

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// base is a fixed UTC instant with no monotonic reading.
var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestTokenUsable(t *testing.T) {
	now := base
	fine := Token{ID: "abc", ExpiresAt: now.Add(time.Hour), MaxUses: 3, Uses: 2}
	cases := []struct {
		name    string
		mod     func(*Token)
		now     time.Time
		wantErr string // "" for usable
	}{
		{"fine", nil, now, ""},
		{"unlimited uses", func(t *Token) { t.MaxUses, t.Uses = 0, 1000 }, now, ""},
		{"just before expiry", nil, fine.ExpiresAt.Add(-time.Nanosecond), ""},
		{"revoked", func(t *Token) { t.RevokedAt = now.Add(-time.Minute) }, now, "revoked"},
		{"revoked in the future still revoked", func(t *Token) { t.RevokedAt = now.Add(time.Minute) }, now, "revoked"},
		{"now equals ExpiresAt", nil, fine.ExpiresAt, "expired"},
		{"after expiry", nil, fine.ExpiresAt.Add(time.Second), "expired"},
		{"zero ExpiresAt", func(t *Token) { t.ExpiresAt = time.Time{} }, now, "expired"},
		{"used up", func(t *Token) { t.Uses = 3 }, now, "used up"},
		{"over used", func(t *Token) { t.Uses = 7 }, now, "used up"},
		{"revoked wins over expired", func(t *Token) { t.RevokedAt = now }, fine.ExpiresAt.Add(time.Hour), "revoked"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := fine
			if tc.mod != nil {
				tc.mod(&tok)
			}
			err := tok.Usable(tc.now)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Usable = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("Usable = %v, want ErrTokenInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tok.ID) {
				t.Errorf("Usable = %q, want it to mention %q and the token id", err, tc.wantErr)
			}
		})
	}
}

func TestCommandStateDone(t *testing.T) {
	for st, want := range map[CommandState]bool{
		CommandPending: false, CommandDelivered: false, CommandSucceeded: true, CommandFailed: true, "": false,
	} {
		if got := st.Done(); got != want {
			t.Errorf("%q.Done() = %v, want %v", st, got, want)
		}
	}
}

func TestSIEMConfigSelects(t *testing.T) {
	c := SIEMConfig{Selector: map[string]string{"rack": "r1", "role": "gpu"}}
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"rack": "r1", "role": "gpu"}, true},
		{map[string]string{"rack": "r1", "role": "gpu", "x": "y"}, true},
		{map[string]string{"rack": "r1"}, false},
		{map[string]string{"rack": "r1", "role": "cpu"}, false},
		{nil, false},
	} {
		if got := c.Selects(tc.labels); got != tc.want {
			t.Errorf("Selects(%v) = %v, want %v", tc.labels, got, tc.want)
		}
	}
	if !(SIEMConfig{}).Selects(nil) || !(SIEMConfig{}).Selects(map[string]string{"a": "b"}) {
		t.Error("an empty selector does not select every node")
	}
}
