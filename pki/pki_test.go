package pki

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// now is whole seconds, as certificates store them.
func TestSubjects(t *testing.T) {
	n := NodeSubject("abc")
	if n.CommonName != "abc" || !slices.Equal(n.Organization, []string{OrgNode}) || len(n.OrganizationalUnit) != 0 {
		t.Errorf("NodeSubject = %+v", n)
	}
	o := OperatorSubject("alice", RoleAdmin)
	if o.CommonName != "alice" || !slices.Equal(o.Organization, []string{OrgOperator}) || !slices.Equal(o.OrganizationalUnit, []string{RoleAdmin}) {
		t.Errorf("OperatorSubject = %+v", o)
	}
	if OrgNode == OrgOperator {
		t.Error("node and operator organisations are the same")
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "two" {
		t.Errorf("content = %q, %v", b, err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode = %o, want 640", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Error("WriteFile into a missing dir succeeded")
	}
}

// --- TLS ---------------------------------------------------------------

// tlsCert issues a server certificate for localhost from ca as a
// tls.Certificate holding only the leaf.
