package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestSingleUseTokenUnderParallelJoins: budctl mints single-use tokens by
// default (and says how to mint more), and forty agents joining with one
// at once give exactly one node; the others are refused and store nothing.
func TestSingleUseTokenUnderParallelJoins(t *testing.T) {
	t.Parallel()
	c := startController(t)
	stdout, stderr, err := c.budctl("tokens", "create")
	if err != nil {
		t.Fatalf("tokens create: %v %s", err, stderr)
	}
	if !strings.Contains(stderr, "single-use") || !strings.Contains(stderr, "--uses N") {
		t.Errorf("tokens create does not say the token is single-use and how to mint more: %q", stderr)
	}
	tok := strings.TrimSpace(stdout)
	const n = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := 0; i < n; i++ {
		a := c.newAgent(t, "race-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, serr, err := a.join(tok)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && enrolledRe.MatchString(out):
				ok++
			case err != nil && strings.Contains(serr, "is used up (1 of 1 uses)"):
				refused++
			default:
				t.Errorf("join: %v\n%s%s", err, out, serr)
			}
		}()
	}
	wg.Wait()
	if ok != 1 || refused != n-1 {
		t.Fatalf("%d joins succeeded and %d were refused; want 1 and %d", ok, refused, n-1)
	}
	if nodes := c.mustListNodes(t); len(nodes) != 1 {
		t.Fatalf("%d nodes stored, want 1", len(nodes))
	}
	for id, uses := range c.tokenUses(t) {
		if uses != 1 {
			t.Errorf("token %s has %d uses, want 1", id, uses)
		}
	}
}

// TestTwoAgentsRaceForOneUseToken: two agents started together with one
// single-use token, round after round: one enrolls, the other is told the
// token is used up, and the token shows one use.
func TestTwoAgentsRaceForOneUseToken(t *testing.T) {
	t.Parallel()
	c := startController(t)
	const rounds = 5
	for r := range rounds {
		tok := c.createToken(t, "--uses", "1")
		agents := []*agent{c.newAgent(t, fmt.Sprintf("duel-%d-a", r)), c.newAgent(t, fmt.Sprintf("duel-%d-b", r))}
		type result struct {
			out, serr string
			err       error
		}
		results := make([]result, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				out, serr, err := a.join(tok)
				results[i] = result{out, serr, err}
			}()
		}
		close(start)
		wg.Wait()
		won := 0
		for i, res := range results {
			switch {
			case res.err == nil && enrolledRe.MatchString(res.out):
				won++
			case res.err != nil && strings.Contains(res.serr, "is used up (1 of 1 uses)"):
			default:
				t.Errorf("round %d, agent %d: %v\n%s%s", r, i, res.err, res.out, res.serr)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d agents enrolled with one single-use token", r, won)
		}
	}
	if nodes := c.mustListNodes(t); len(nodes) != rounds {
		t.Fatalf("%d nodes stored after %d rounds, want %d", len(nodes), rounds, rounds)
	}
	for id, uses := range c.tokenUses(t) {
		if uses != 1 {
			t.Errorf("token %s has %d uses, want 1", id, uses)
		}
	}
}
