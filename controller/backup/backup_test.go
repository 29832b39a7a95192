package backup

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func sample(t *testing.T, withPKI bool) []byte {
	t.Helper()
	m := Manifest{Backend: BackendBolt, SchemaVersion: 6, CreatedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), CACert: []byte("CERT"), CAHash: "sha256:ab"}
	if withPKI {
		var err error
		if m.PKI, err = Seal(map[string][]byte{"ca.key": []byte("SECRET KEY")}, "a long passphrase"); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := Write(&buf, m, strings.NewReader(strings.Repeat("store bytes ", 1000))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	raw := sample(t, true)
	if bytes.Contains(raw, []byte("SECRET KEY")) {
		t.Fatal("the sealed key is in the clear")
	}
	m, payload, err := Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if string(payload) != strings.Repeat("store bytes ", 1000) || m.Backend != BackendBolt || m.SchemaVersion != 6 {
		t.Fatalf("read back %+v with %d payload bytes", m, len(payload))
	}
	files, err := m.PKI.Open("a long passphrase")
	if err != nil || string(files["ca.key"]) != "SECRET KEY" {
		t.Fatalf("Open = %v, %v", files, err)
	}
	if _, err := m.PKI.Open("the wrong passphrase"); !errors.Is(err, ErrBadSecret) {
		t.Errorf("Open with a wrong passphrase = %v", err)
	}
	if _, err := Seal(nil, "short"); err == nil {
		t.Error("Seal took a short passphrase")
	}
}

// Every truncation and every flipped byte is refused as damaged.
func TestTruncatedAndDamagedRefused(t *testing.T) {
	raw := sample(t, false)
	for n := 1; n < len(raw); n += 1 + n/50 {
		if _, _, err := Read(bytes.NewReader(raw[:n])); !errors.Is(err, ErrDamaged) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrDamaged", n, len(raw), err)
		}
	}
	for i := len(Magic); i < len(raw); i += 1 + i/40 {
		bad := bytes.Clone(raw)
		bad[i] ^= 0x40
		if _, _, err := Read(bytes.NewReader(bad)); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	if _, _, err := Read(bytes.NewReader(append(bytes.Clone(raw), 'x'))); !errors.Is(err, ErrDamaged) {
		t.Errorf("a byte appended: %v", err)
	}
}

func TestForeignRefused(t *testing.T) {
	for _, f := range []string{"", "SQLite format 3\x00", "\x1f\x8b\x08 a gzip", "BUDFLEET-BACKUP/2\n"} {
		if _, _, err := Read(strings.NewReader(f)); !errors.Is(err, ErrForeign) {
			t.Errorf("Read(%q) = %v, want ErrForeign", f, err)
		}
	}
}
