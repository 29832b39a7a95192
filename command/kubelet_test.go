package command

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func testCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func goodSpec(t *testing.T) KubeletJoinSpec {
	return KubeletJoinSpec{
		Cluster: "k1", Server: "https://10.0.0.1:6443", CAPEM: testCA(t), Token: "abcdef.0123456789abcdef",
		TokenExpires: time.Now().Add(time.Hour), NodeName: "gpu-1", KubeletVersion: "v1.37.2",
		Labels: map[string]string{"nvidia.com/gpu": "true"}, Taints: []string{"nvidia.com/gpu=true:NoSchedule"},
		Artifacts: []JoinArtifact{{Kind: ArtifactKubelet, Name: "kubelet", Version: "v1.37.2", Digest: "sha256:" + strings.Repeat("a", 64)}},
	}
}

func TestKubeletJoinRoundTrip(t *testing.T) {
	s := goodSpec(t)
	p, err := s.Params()
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(KubeletJoin, p); err != nil {
		t.Fatal(err)
	}
	got, err := ParseKubeletJoin(p)
	if err != nil || got.Token != s.Token || got.Artifact(ArtifactKubelet)[0].Digest != s.Artifacts[0].Digest {
		t.Errorf("round trip: %+v %v", got, err)
	}
	if r := Redact(KubeletJoin, p); r[ParamJoinSpec] != Redacted || p[ParamJoinSpec] == Redacted {
		t.Errorf("redact: %v (original %d bytes)", r, len(p[ParamJoinSpec]))
	}
	if r := Redact(MaintenanceReboot, map[string]string{ParamCampaignID: "c"}); r[ParamCampaignID] != "c" {
		t.Errorf("a kind without secrets redacted: %v", r)
	}
}

func TestKubeletJoinRejects(t *testing.T) {
	for _, tc := range []struct {
		change func(*KubeletJoinSpec)
		saying string
	}{
		{func(s *KubeletJoinSpec) { s.Server = "http://x" }, "want an https:// URL"},
		{func(s *KubeletJoinSpec) { s.CAPEM = "junk" }, "cluster CA: not PEM"},
		{func(s *KubeletJoinSpec) { s.Token = "short" }, "bootstrap token is not"},
		{func(s *KubeletJoinSpec) { s.TokenExpires = time.Time{} }, "no expiry"},
		{func(s *KubeletJoinSpec) { s.NodeName = "Upper" }, "lower-case DNS subdomain"},
		{func(s *KubeletJoinSpec) { s.KubeletVersion = "1.37" }, "v1.37.2"},
		{func(s *KubeletJoinSpec) { s.Labels = map[string]string{"a b": "c"} }, "label key"},
		{func(s *KubeletJoinSpec) { s.Taints = []string{"k=v:Never"} }, "effect"},
		{func(s *KubeletJoinSpec) { s.Artifacts[0].Digest = "md5:x" }, "want sha256:"},
		{func(s *KubeletJoinSpec) { s.Artifacts[0].Kind = "firmware" }, "not one of"},
		{func(s *KubeletJoinSpec) { s.Artifacts = append(s.Artifacts, s.Artifacts[0]) }, "at most one"},
	} {
		s := goodSpec(t)
		tc.change(&s)
		p, _ := s.Params()
		if err := Validate(KubeletJoin, p); err == nil || !strings.Contains(err.Error(), tc.saying) {
			t.Errorf("want %q, got %v", tc.saying, err)
		}
	}
	if err := Validate(KubeletJoin, map[string]string{ParamJoinSpec: `{"cluster":"k1","surprise":1}`}); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("unknown field: %v", err)
	}
}

func TestJoinPhaseLines(t *testing.T) {
	out := JoinPhaseLine(JoinPreparing, "") + "some other output\n" + JoinPhaseLine(JoinInstalling, "kubelet v1.37.2\nand more")
	p, d, ok := LastJoinPhase([]byte(out))
	if !ok || p != JoinInstalling || d != "kubelet v1.37.2 and more" {
		t.Errorf("last phase %q %q %v", p, d, ok)
	}
	if _, _, ok := LastJoinPhase([]byte("nothing\n")); ok {
		t.Error("a phase found in output without one")
	}
	if _, _, _, err := ParseTaint("gpu:NoSchedule"); err != nil {
		t.Errorf("key-only taint: %v", err)
	}
}
