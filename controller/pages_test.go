package controller

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
)

func TestPage(t *testing.T) {
	var items []string
	for i := 0; i < 25; i++ {
		items = append(items, fmt.Sprintf("n%02d", i))
	}
	id := func(s string) string { return s }
	conv := func(s string) *fleetv1.Node { return &fleetv1.Node{Id: s} }
	var got []string
	token, pages := "", 0
	for {
		p, next, err := page(items, id, conv, 10, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, n := range p {
			got = append(got, n.GetId())
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 3 || strings.Join(got, ",") != strings.Join(items, ",") {
		t.Fatalf("%d pages: %v", pages, got)
	}
	// Big items: a page stops before 2 MiB, whatever the size asked.
	big := func(s string) *fleetv1.Node { return &fleetv1.Node{Id: s, Hostname: strings.Repeat("h", 900<<10)} }
	p, next, err := page(items, id, big, 1000, "")
	if err != nil || len(p) != 2 || next == "" {
		t.Fatalf("big page: %d items, next %q, %v", len(p), next, err)
	}
	if _, _, err := page(items, id, conv, 10, "!!"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad token: %v", err)
	}
}
