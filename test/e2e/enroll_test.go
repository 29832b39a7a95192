package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/agent/state"
)

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}

// assertNotEnrolled checks that a failed join stored no identity.
func assertNotEnrolled(t *testing.T, stateDir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(stateDir, state.FileName)); os.IsNotExist(err) {
		return
	}
	db, err := state.Open(stateDir, 5*time.Second)
	if err != nil {
		t.Fatalf("open agent state: %v", err)
	}
	defer db.Close()
	if id, err := db.Identity(); err == nil {
		t.Errorf("a failed join stored an identity: node %s", id.NodeID)
	}
}

// TestJoinRejectsBadTokens: every kind of bad token is refused with an error
// that names the problem, spends nothing and stores nothing; a good token
// then joins from the same state dir.
func TestJoinRejectsBadTokens(t *testing.T) {
	t.Parallel()
	c := startController(t)
	good := c.createToken(t, "--description", "good")

	// One used-up token: its only use goes to another node.
	usedUp := c.createToken(t, "--uses", "1")
	joinAgent(t, c, usedUp, "node-first-user")

	revoked := c.createToken(t)
	_, revokedID, _ := tokenParts(t, revoked)
	if out := c.mustBudctl(t, "tokens", "revoke", revokedID); !strings.Contains(out, revokedID) {
		t.Errorf("tokens revoke printed %q", out)
	}

	expired := c.createToken(t, "--ttl", "1s")
	_, expiredID, _ := tokenParts(t, expired)

	_, realID, realSecret := tokenParts(t, good)

	cases := []struct {
		name  string
		token func(t *testing.T) string
		want  []string // all must appear in the error
	}{
		{"unknown", func(t *testing.T) string {
			return fmt.Sprintf("bud1.%s.%s.%s", c.caHash, randHex(t, 12), randHex(t, 32))
		}, []string{"PermissionDenied", "unknown token or wrong secret"}},
		{"wrong secret", func(t *testing.T) string {
			return fmt.Sprintf("bud1.%s.%s.%s", c.caHash, realID, randHex(t, 32))
		}, []string{"PermissionDenied", "unknown token or wrong secret"}},
		{"expired", func(t *testing.T) string {
			// Wait until the controller's clock (the same as ours) has passed
			// the expiry; joining earlier would succeed.
			ts, err := c.listTokens()
			if err != nil {
				t.Fatal(err)
			}
			for _, tk := range ts {
				if tk.GetId() == expiredID {
					time.Sleep(time.Until(tk.GetExpiresAt().AsTime().Add(50 * time.Millisecond)))
				}
			}
			return expired
		}, []string{"PermissionDenied", "expired"}},
		{"revoked", func(t *testing.T) string { return revoked }, []string{"PermissionDenied", "revoked"}},
		{"used up", func(t *testing.T) string { return usedUp }, []string{"PermissionDenied", "used up"}},
		{"malformed", func(t *testing.T) string { return "bud1.not-a-token" }, []string{"malformed join token"}},
		{"malformed version", func(t *testing.T) string {
			return fmt.Sprintf("bud9.%s.%s.%s", c.caHash, realID, realSecret)
		}, []string{"malformed join token", "version"}},
		{"malformed secret", func(t *testing.T) string {
			return fmt.Sprintf("bud1.%s.%s.%s", c.caHash, realID, realSecret[:31])
		}, []string{"malformed join token", "secret"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nodesBefore := c.mustListNodes(t)
			usesBefore := c.tokenUses(t)
			logBefore := strings.Count(readLog(c.logPath), "enrollment refused")

			a := c.newAgent(t, fmt.Sprintf("node-bad-%d", i))
			stdout, stderr, err := a.join(tc.token(t))
			if err == nil {
				t.Fatalf("join succeeded:\n%s", stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("join error %q does not mention %q", strings.TrimSpace(stderr), w)
				}
			}
			if !strings.HasPrefix(stderr, "bud-agent: ") || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("join stderr %q: want one 'bud-agent: ...' line", stderr)
			}
			if strings.Contains(stdout, "enrolled") {
				t.Errorf("join printed %q", stdout)
			}
			assertNotEnrolled(t, a.stateDir)

			if got := c.mustListNodes(t); len(got) != len(nodesBefore) {
				t.Errorf("%d nodes after the refused join, %d before", len(got), len(nodesBefore))
			}
			usesAfter := c.tokenUses(t)
			for id, u := range usesBefore {
				if usesAfter[id] != u {
					t.Errorf("token %s: uses %d after the refused join, %d before", id, usesAfter[id], u)
				}
			}
			if strings.HasPrefix(tc.name, "malformed") {
				// Caught by the agent before it dials.
				if n := strings.Count(readLog(c.logPath), "enrollment refused"); n != logBefore {
					t.Errorf("a malformed token reached the controller (%d refusals logged, %d before)", n, logBefore)
				}
			}

			// The same state dir joins with a good token.
			id := a.mustJoin(t, good)
			after := c.mustListNodes(t)
			if len(after) != len(nodesBefore)+1 {
				t.Errorf("%d nodes after the good join, want %d", len(after), len(nodesBefore)+1)
			}
			if n := c.mustGetNode(t, id); n.GetHostname() != a.hostname {
				t.Errorf("node %s hostname %q, want %q", id, n.GetHostname(), a.hostname)
			}
		})
	}
	if uses := c.tokenUses(t); uses[realID] != uint32(len(cases)) {
		t.Errorf("good token uses %d, want %d", uses[realID], len(cases))
	}
}

// TestJoinRefusesCAHashMismatch: a token whose CA hash is not this
// controller's never gets as far as an enrollment attempt.
func TestJoinRefusesCAHashMismatch(t *testing.T) {
	t.Parallel()
	c := startController(t)
	tok := c.createToken(t)
	_, id, secret := tokenParts(t, tok)

	otherHash := initDataDir(t, filepath.Join(t.TempDir(), "other"), "127.0.0.1:1")
	if otherHash == c.caHash {
		t.Fatal("two inits made the same CA")
	}
	flipped := []byte(c.caHash)
	if flipped[10] == '0' {
		flipped[10] = '1'
	} else {
		flipped[10] = '0'
	}

	for _, tc := range []struct{ name, hash string }{
		{"another controller's CA", otherHash},
		{"one hex digit flipped", string(flipped)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := c.newAgent(t, "node-pinned")
			stdout, stderr, err := a.join(fmt.Sprintf("bud1.%s.%s.%s", tc.hash, id, secret))
			if err == nil {
				t.Fatalf("join succeeded:\n%s", stdout)
			}
			if !strings.Contains(stderr, "CA hash") || !strings.Contains(stderr, tc.hash) {
				t.Errorf("join error %q: want it to mention the CA hash %s", strings.TrimSpace(stderr), tc.hash)
			}
			assertNotEnrolled(t, a.stateDir)
		})
	}

	// The controller never saw an enrollment attempt: no sample of the
	// enrollment counter, the token unused, nothing logged.
	if s := metricSamples(c.metrics(t), "bud_controller_enrollments_total"); len(s) != 0 {
		t.Errorf("the controller counted enrollment attempts: %v", s)
	}
	if uses := c.tokenUses(t); uses[id] != 0 {
		t.Errorf("token uses %d, want 0", uses[id])
	}
	if strings.Contains(readLog(c.logPath), "enrollment refused") {
		t.Error("the controller logged an enrollment refusal")
	}
	if ns := c.mustListNodes(t); len(ns) != 0 {
		t.Errorf("%d nodes, want none", len(ns))
	}

	// The same token with the right hash works, and is counted: the checks
	// above could see a refusal.
	joinAgent(t, c, tok, "node-pinned-ok")
	if s := metricSamples(c.metrics(t), "bud_controller_enrollments_total"); len(s) != 1 || s[0] != `bud_controller_enrollments_total{result="ok"} 1` {
		t.Errorf("enrollment metric after a good join: %v", s)
	}
}
