package inventory

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// guide is the fleet guide's inventory, as operators keep it.
const guide = `all:
  children:
    k8s_masters:
      hosts:
        master-01: {ansible_host: 10.0.1.10, ansible_user: admin}
    k8s_workers:
      hosts:
        worker-01: {ansible_host: 10.0.1.20}
        worker-02: {ansible_host: 10.0.1.21}
    gpu_nodes:
      hosts:
        gpu-01: {ansible_host: 10.0.1.30, gpu_type: nvidia-a100}
`

// write lays out files (relative path -> content) in a temporary
// directory and returns the path of hosts.yml.
func write(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "hosts.yml")
}

func load(t *testing.T, files map[string]string) *Inventory {
	t.Helper()
	inv, err := Load(write(t, files))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return inv
}

func names(inv *Inventory) []string {
	var out []string
	for _, h := range inv.Hosts {
		out = append(out, h.Name)
	}
	return out
}

func TestGuideInventory(t *testing.T) {
	inv := load(t, map[string]string{"hosts.yml": guide})
	if got, want := names(inv), []string{"gpu-01", "master-01", "worker-01", "worker-02"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts %v, want %v", got, want)
	}
	m, _ := inv.Host("master-01")
	if m.Address != "10.0.1.10" || m.User != "admin" || m.Port != 22 || m.Line != 5 {
		t.Errorf("master-01 = %+v", m)
	}
	w, _ := inv.Host("worker-02")
	if w.User != DefaultUser || !reflect.DeepEqual(w.Groups, []string{"k8s_workers"}) {
		t.Errorf("worker-02 = %+v", w)
	}
	g, _ := inv.Host("gpu-01")
	want := map[string]string{"budfleet.io/group.gpu_nodes": "true", "gpu_type": "nvidia-a100"}
	if got := g.Labels(); !reflect.DeepEqual(got, want) {
		t.Errorf("gpu-01 labels %v, want %v", got, want)
	}
	if _, ok := inv.Host("nope"); ok {
		t.Error("Host(nope) found")
	}
}

func TestVarsDirsNestingAndPrecedence(t *testing.T) {
	inv := load(t, map[string]string{
		"hosts.yml": `all:
  vars:
    ansible_user: deploy
    site: dc1
    tier: from-all-inline
  children:
    gpu:
      vars:
        tier: from-gpu-inline
        ansible_port: 2222
      children:
        a100:
          vars: {gpu_type: "NVIDIA A100 80GB"}
          hosts:
            gpu-[01:03]:
              ansible_host: 10.0.1.30
        h100:
          hosts:
            h-[a:b]:
    racks:
      children:
        r12:
          hosts:
            gpu-01:
            h-a:
ungrouped_top:
  hosts:
    lone: {ansible_host: lone.example}
`,
		// group_vars/all beats a child group's inline vars, as in Ansible.
		"group_vars/all.yml": "tier: from-group_vars-all\nntp: 10.0.0.1\n",
		// a group_vars directory: files in name order, the later wins.
		"group_vars/h100/10-main.yml":  "gpu_type: nvidia-h100\nansible_become: true\n",
		"group_vars/h100/20-more.yaml": "gpu_type: nvidia-h100-sxm\n",
		"group_vars/r12":               "rack: r12\n",
		"host_vars/gpu-02.yml":         "ansible_host: 10.0.1.32\nrole: special\n",
		"host_vars/h-a":                "ansible_host: 10.0.2.1\n",
		"host_vars/h-b.json":           `{"ansible_host": "10.0.2.2", "ansible_port": "2200"}`,
	})
	if got, want := names(inv), []string{"gpu-01", "gpu-02", "gpu-03", "h-a", "h-b", "lone"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts %v, want %v", got, want)
	}
	g1, _ := inv.Host("gpu-01")
	if g1.Address != "10.0.1.30" || g1.User != "deploy" || g1.Port != 2222 {
		t.Errorf("gpu-01 connection %s@%s:%d", g1.User, g1.Address, g1.Port)
	}
	if want := []string{"a100", "gpu", "r12", "racks"}; !reflect.DeepEqual(g1.Groups, want) {
		t.Errorf("gpu-01 groups %v, want %v", g1.Groups, want)
	}
	wantLabels := map[string]string{
		"budfleet.io/group.a100":  "true",
		"budfleet.io/group.gpu":   "true",
		"budfleet.io/group.r12":   "true",
		"budfleet.io/group.racks": "true",
		"gpu_type":                "NVIDIA-A100-80GB",
		"ntp":                     "10.0.0.1",
		"rack":                    "r12",
		"site":                    "dc1",
		"tier":                    "from-group_vars-all",
	}
	if got := g1.Labels(); !reflect.DeepEqual(got, wantLabels) {
		t.Errorf("gpu-01 labels\n got %v\nwant %v", got, wantLabels)
	}
	g2, _ := inv.Host("gpu-02")
	if g2.Address != "10.0.1.32" || g2.Vars["role"] != "special" {
		t.Errorf("gpu-02 host_vars not applied: %+v", g2)
	}
	ha, _ := inv.Host("h-a")
	if ha.Address != "10.0.2.1" || ha.Vars["gpu_type"] != "nvidia-h100-sxm" || ha.Vars["ansible_become"] != true {
		t.Errorf("h-a = %+v", ha)
	}
	if _, ok := ha.Labels()["ansible_become"]; ok {
		t.Error("an ansible_ variable became a label")
	}
	hb, _ := inv.Host("h-b")
	if hb.Port != 2200 {
		t.Errorf("h-b port %d, want 2200 (a string port from JSON)", hb.Port)
	}
	lone, _ := inv.Host("lone")
	if lone.Address != "lone.example" || !reflect.DeepEqual(lone.Groups, []string{"ungrouped_top"}) {
		t.Errorf("lone = %+v", lone)
	}
}

func TestSecretsAndVaultNeverLabels(t *testing.T) {
	inv := load(t, map[string]string{"hosts.yml": `all:
  hosts:
    n1:
      ansible_host: 10.0.0.1
      ipmi_password: hunter2
      db_password: x
      api_token: y
      bmc_address: 10.9.0.1
      budfleet_install_root: /srv/n1
      tags: [a, b]
      nested: {a: 1}
      secret_sauce: z
      enc: !vault |
        $ANSIBLE_VAULT;1.1;AES256
        3133
      count: 3
      ratio: 1.5
      on: true
`})
	n1, _ := inv.Host("n1")
	want := map[string]string{"count": "3", "ratio": "1.5", "on": "true"}
	if got := n1.Labels(); !reflect.DeepEqual(got, want) {
		t.Errorf("labels %v, want %v", got, want)
	}
	if _, ok := n1.Vars["enc"].(Vault); !ok {
		t.Errorf("enc = %#v, want a Vault", n1.Vars["enc"])
	}
}

func TestBadInventories(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  []string
	}{
		"syntax error names file and line": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    a: {ansible_host: 1.2.3.4\n    b:\n"},
			[]string{"hosts.yml line 3: YAML syntax error", "did not find expected ',' or '}'"},
		},
		"bad indentation": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    a: {ansible_host: 1.2.3.4}\n      b: 1\n"},
			[]string{"hosts.yml line 3: YAML syntax error", "did not find expected key"},
		},
		"a colon in a value": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    a: x: y\n"},
			[]string{"hosts.yml line 3: YAML syntax error", "mapping values are not allowed"},
		},
		"tab indentation": {
			map[string]string{"hosts.yml": "all:\n\thosts:\n"},
			[]string{"hosts.yml line 2", "YAML syntax error"},
		},
		"host with no address": {
			map[string]string{"hosts.yml": "all:\n  children:\n    w:\n      hosts:\n        worker-01:\n"},
			[]string{"hosts.yml line 5: host worker-01 has no address", "set ansible_host", "host_vars/worker-01.yml"},
		},
		"unknown group key": {
			map[string]string{"hosts.yml": "all:\n  host:\n    a: {ansible_host: 1.2.3.4}\n"},
			[]string{"hosts.yml line 2", `unknown key "host"`},
		},
		"hosts as a list": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    - a\n"},
			[]string{"hosts.yml line 3", "must be a mapping"},
		},
		"bad range": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    w-[05:01]: {ansible_host: 1.2.3.4}\n"},
			[]string{"hosts.yml line 3", "ends before it starts"},
		},
		"bad port": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    a: {ansible_host: 1.2.3.4, ansible_port: 70000}\n"},
			[]string{"host a", "not a port"},
		},
		"vaulted address": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    a:\n      ansible_host: !vault |\n        $ANSIBLE_VAULT;1.1;AES256\n"},
			[]string{"host a", "ansible-vault"},
		},
		"syntax error in host_vars": {
			map[string]string{"hosts.yml": "all:\n  hosts:\n    a:\n", "host_vars/a.yml": "ansible_host: [1.2.3.4\n"},
			[]string{filepath.Join("host_vars", "a.yml") + " line", "YAML syntax error"},
		},
		"cycle": {
			map[string]string{"hosts.yml": "all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n"},
			[]string{"cycle", "a -> b -> a"},
		},
		"not a mapping": {
			map[string]string{"hosts.yml": "- a\n- b\n"},
			[]string{"hosts.yml line 1", "mapping of groups"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(write(t, tc.files))
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yml")); err == nil || !strings.Contains(err.Error(), "read inventory") {
		t.Errorf("missing file: %v", err)
	}
}

func TestExpandPattern(t *testing.T) {
	for in, want := range map[string][]string{
		"worker-01":       {"worker-01"},
		"worker-[01:03]":  {"worker-01", "worker-02", "worker-03"},
		"w[8:10]":         {"w8", "w9", "w10"},
		"w[1:9:4]":        {"w1", "w5", "w9"},
		"db-[a:c]":        {"db-a", "db-b", "db-c"},
		"r[1:2]-n[a:b].x": {"r1-na.x", "r1-nb.x", "r2-na.x", "r2-nb.x"},
		"w[:2]":           {"w0", "w1", "w2"},
	} {
		got, err := ExpandPattern(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ExpandPattern(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"w[1:2", "w]", "w[1-3]", "w[a:3]", "w[1:2:0]", "w[3:1]", "w[1:100000]", "w[1:200][1:200]"} {
		if _, err := ExpandPattern(bad); !errors.Is(err, ErrPattern) {
			t.Errorf("ExpandPattern(%q): %v, want ErrPattern", bad, err)
		}
	}
}

func TestSanitizeLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"nvidia-a100":                  "nvidia-a100",
		"NVIDIA A100 80GB":             "NVIDIA-A100-80GB",
		"-x/y_":                        "x-y",
		"ü":                            "",
		strings.Repeat("a", 70) + "-b": strings.Repeat("a", 63),
	} {
		if got := SanitizeLabelValue(in); got != want {
			t.Errorf("SanitizeLabelValue(%q) = %q, want %q", in, got, want)
		}
	}
}
