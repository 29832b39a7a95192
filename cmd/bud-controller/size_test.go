package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"16GiB": 16 << 30, "512MiB": 512 << 20, "1 KiB": 1 << 10, "1048576": 1 << 20, "7B": 7, "2TiB": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1GiB", "1.5GiB", "16GB", "lots", "9999999TiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded; want an error", in)
		}
	}
}
