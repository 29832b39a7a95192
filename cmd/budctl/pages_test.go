package main

import (
	"strconv"
	"strings"
	"testing"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

// allPages reads to the last page, asking each with the token the one
// before gave, and stops on a token the controller sends twice.
func TestAllPages(t *testing.T) {
	var asked []string
	list := func(last int, loop bool) func(string) (*fleetv1.ListTokensResponse, error) {
		return func(tok string) (*fleetv1.ListTokensResponse, error) {
			asked = append(asked, tok)
			i := 0
			if tok != "" {
				i, _ = strconv.Atoi(tok)
			}
			r := &fleetv1.ListTokensResponse{Tokens: []*fleetv1.Token{{Id: "t" + strconv.Itoa(i)}}}
			switch {
			case loop:
				r.NextPageToken = "1"
			case i < last:
				r.NextPageToken = strconv.Itoa(i + 1)
			}
			return r, nil
		}
	}
	merge := func(all, p *fleetv1.ListTokensResponse) {
		all.Tokens, all.NextPageToken = append(all.Tokens, p.GetTokens()...), p.GetNextPageToken()
	}
	got, err := allPages(list(3, false), merge)
	if err != nil || len(got.GetTokens()) != 4 || got.GetNextPageToken() != "" || strings.Join(asked, ",") != ",1,2,3" {
		t.Fatalf("allPages = %v, %v after asking %q", got, err, asked)
	}
	if _, err := allPages(list(0, true), merge); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("a controller repeating its page token: %v", err)
	}
}
