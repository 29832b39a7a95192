package command

import (
	"slices"
	"sort"
	"strings"
	"testing"
)

func TestValidateInventoryCollect(t *testing.T) {
	if err := Validate(InventoryCollect, nil); err != nil {
		t.Errorf("Validate(%s, nil) = %v", InventoryCollect, err)
	}
	if err := Validate(InventoryCollect, map[string]string{}); err != nil {
		t.Errorf("Validate(%s, {}) = %v", InventoryCollect, err)
	}
}

func TestValidateUnknownKind(t *testing.T) {
	for _, kind := range []string{"", "shell.exec", "Inventory.Collect", "inventory.collect "} {
		err := Validate(kind, nil)
		if err == nil {
			t.Errorf("Validate(%q) accepted an unknown kind", kind)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "unknown command kind") || !strings.Contains(msg, `"`+kind+`"`) {
			t.Errorf("Validate(%q) = %q; want it to name the kind", kind, msg)
		}
		for _, k := range KindNames() {
			if !strings.Contains(msg, k) {
				t.Errorf("Validate(%q) = %q; want it to list known kind %s", kind, msg, k)
			}
		}
	}
}

func TestValidateUnknownParam(t *testing.T) {
	err := Validate(InventoryCollect, map[string]string{"force": "true"})
	if err == nil {
		t.Fatal("Validate accepted an unknown parameter")
	}
	if !strings.Contains(err.Error(), `"force"`) || !strings.Contains(err.Error(), InventoryCollect) {
		t.Errorf("error %q should name the kind and the parameter", err)
	}
}

func TestValidateParams(t *testing.T) {
	// A kind with one required and one optional parameter.
	const kind = "test.params"
	Kinds[kind] = Spec{Description: "test", Params: map[string]bool{"path": true, "mode": false}}
	t.Cleanup(func() { delete(Kinds, kind) })

	for _, tc := range []struct {
		params map[string]string
		errHas string
	}{
		{map[string]string{"path": "/x"}, ""},
		{map[string]string{"path": "/x", "mode": "0644"}, ""},
		{nil, `needs parameter "path"`},
		{map[string]string{"path": ""}, `needs parameter "path"`},
		{map[string]string{"mode": "0644"}, `needs parameter "path"`},
		{map[string]string{"path": "/x", "owner": "root"}, `no parameter "owner"`},
	} {
		err := Validate(kind, tc.params)
		switch {
		case tc.errHas == "" && err != nil:
			t.Errorf("Validate(%v) = %v", tc.params, err)
		case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
			t.Errorf("Validate(%v) = %v; want an error with %q", tc.params, err, tc.errHas)
		}
	}
}

func TestKindNames(t *testing.T) {
	names := KindNames()
	if !sort.StringsAreSorted(names) {
		t.Errorf("KindNames not sorted: %v", names)
	}
	if len(names) != len(Kinds) {
		t.Errorf("KindNames = %v, Kinds has %d", names, len(Kinds))
	}
	if !slices.Contains(names, InventoryCollect) {
		t.Errorf("KindNames = %v, want it to include %s", names, InventoryCollect)
	}
	for _, n := range names {
		if Kinds[n].Description == "" {
			t.Errorf("kind %s has no description", n)
		}
	}
}
