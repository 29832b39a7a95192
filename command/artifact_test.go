package command

import (
	"reflect"
	"strings"
	"testing"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestArtifactFetchParams(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		want   ArtifactFetchParams
	}{
		{map[string]string{ParamDigest: testDigest}, ArtifactFetchParams{Digest: testDigest, Mode: DefaultArtifactMode}},
		{map[string]string{ParamDigest: testDigest, ParamPath: "/usr/local/bin/kubelet", ParamMode: "0755"}, ArtifactFetchParams{Digest: testDigest, Path: "/usr/local/bin/kubelet", Mode: 0o755}},
		{map[string]string{ParamDigest: testDigest, ParamPath: "/etc/x"}, ArtifactFetchParams{Digest: testDigest, Path: "/etc/x", Mode: 0o644}},
	} {
		got, err := ParseArtifactFetch(tc.params)
		if err != nil || got != tc.want {
			t.Errorf("ParseArtifactFetch(%v) = %+v, %v; want %+v", tc.params, got, err, tc.want)
		}
		if err := Validate(ArtifactFetch, tc.params); err != nil {
			t.Errorf("Validate(%v) = %v", tc.params, err)
		}
		if again, err := ParseArtifactFetch(got.Params()); err != nil || again != got {
			t.Errorf("ParseArtifactFetch(Params()) = %+v, %v; want %+v", again, err, got)
		}
	}
	if p := (ArtifactFetchParams{Digest: testDigest}).Params(); !reflect.DeepEqual(p, map[string]string{ParamDigest: testDigest}) {
		t.Errorf("Params without a path = %v", p)
	}
	for _, tc := range []struct {
		params map[string]string
		says   string
	}{
		{map[string]string{}, `needs parameter "digest"`},
		{map[string]string{ParamDigest: "sha256:ABC"}, "sha256:<64 lower-case hex digits>"},
		{map[string]string{ParamDigest: strings.TrimPrefix(testDigest, "sha256:")}, "sha256:<64 lower-case hex digits>"},
		{map[string]string{ParamDigest: testDigest, ParamPath: "bin/kubelet"}, "clean absolute file path"},
		{map[string]string{ParamDigest: testDigest, ParamPath: "/usr/../etc/x"}, "clean absolute file path"},
		{map[string]string{ParamDigest: testDigest, ParamPath: "/"}, "clean absolute file path"},
		{map[string]string{ParamDigest: testDigest, ParamMode: "0755"}, `needs "path"`},
		{map[string]string{ParamDigest: testDigest, ParamPath: "/x", ParamMode: "0999"}, "octal, 0 to 0777"},
		{map[string]string{ParamDigest: testDigest, ParamPath: "/x", ParamMode: "01777"}, "octal, 0 to 0777"},
		{map[string]string{ParamDigest: testDigest, "dest": "/x"}, `takes no parameter "dest"`},
	} {
		if err := Validate(ArtifactFetch, tc.params); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Validate(%v) = %v; want an error saying %q", tc.params, err, tc.says)
		}
	}
}
