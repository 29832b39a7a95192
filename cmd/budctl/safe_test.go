package main

import "testing"

func TestSafe(t *testing.T) {
	for in, want := range map[string]string{
		"node-1":               "node-1",
		"Ubuntu 24.04 — ü":     "Ubuntu 24.04 — ü",
		"x\x1b[2J":             `"x\x1b[2J"`,
		"a\r\nNode ID: forged": `"a\r\nNode ID: forged"`,
		"tab\there":            `"tab\there"`,
		"\xff":                 `"\xff"`,
	} {
		if got := safe(in); got != want {
			t.Errorf("safe(%q) = %s, want %s", in, got, want)
		}
	}
}
