// Package inventory reads an Ansible YAML inventory as the operator already
// keeps it, so that the hosts it lists become budfleet machines without a
// second list to maintain.
//
// What is read, as Ansible reads it:
//
//   - groups at the top level (all, and any other group, which is then a
//     child of all), each with hosts, vars and children; children nest to
//     any depth and a group may appear in several places;
//   - host patterns with ranges: worker-[01:20] (leading zeros keep the
//     width), rack[1:9:2] (a step), node-[a:c] (letters), several ranges in
//     one name;
//   - group_vars/ and host_vars/ beside the inventory file: NAME, NAME.yml,
//     NAME.yaml or NAME.json, or a directory NAME/ whose files are read in
//     name order;
//   - variable precedence, lowest first: the inventory file's group vars
//     (all first, then by depth, ansible_group_priority and name, so a
//     child group wins over its parent), group_vars/all, group_vars/<group>
//     in the same order, the inventory file's host vars, host_vars/<host>.
//     As in Ansible, group_vars/all therefore beats a child group's vars
//     written in the inventory file.
//
// Every host needs an address (ansible_host, or the older ansible_ssh_host):
// budfleet does not resolve bare inventory names through the controller
// machine's resolver. Syntax errors name the file and line. Values encrypted
// with ansible-vault (!vault) cannot be read here; they never become labels,
// and a vaulted ansible_host, ansible_user or ansible_port is an error.
package inventory

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DefaultUser is the SSH user of a host without ansible_user. Ansible would
// use the name of whoever runs it; the controller's service user means
// nothing on the hosts, so root is the explicit default.
const DefaultUser = "root"

// Host is one host of the inventory, its variables merged.
type Host struct {
	// Name is the inventory hostname (after range expansion).
	Name string
	// Address is ansible_host; Port ansible_port (22); User ansible_user
	// (DefaultUser).
	Address string
	Port    int
	User    string
	// Groups are the groups the host belongs to, directly or through
	// children, sorted; "all" and "ungrouped" are left out.
	Groups []string
	// Vars are the host's variables after Ansible's precedence, as decoded
	// from YAML (strings, ints, floats, bools, lists, maps; Vault for a
	// !vault value).
	Vars map[string]any
	// File and Line say where the host was first listed.
	File string
	Line int
}

// Vault is a value encrypted with ansible-vault, kept unread.
type Vault struct{ Ciphertext string }

// Inventory is a parsed inventory file.
type Inventory struct {
	File  string
	Hosts []Host // sorted by name
}

// Host returns the host named name.
func (inv *Inventory) Host(name string) (Host, bool) {
	i := sort.Search(len(inv.Hosts), func(i int) bool { return inv.Hosts[i].Name >= name })
	if i < len(inv.Hosts) && inv.Hosts[i].Name == name {
		return inv.Hosts[i], true
	}
	return Host{}, false
}

// group is a group as the inventory file declares it (several
// declarations merged).
type group struct {
	name     string
	vars     map[string]any
	children map[string]bool
	parents  map[string]bool
	hosts    map[string]bool
	depth    int
	priority int
}

type hostDecl struct {
	vars map[string]any
	line int
}

type parser struct {
	file   string
	groups map[string]*group
	hosts  map[string]*hostDecl
	order  []string // host names as first seen
}

// Load reads the inventory file at path and the group_vars/ and host_vars/
// directories beside it.
func Load(path string) (*Inventory, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	return parse(path, b)
}

func parse(path string, b []byte) (*Inventory, error) {
	p := &parser{file: path, groups: map[string]*group{}, hosts: map[string]*hostDecl{}}
	p.group("all")
	p.group("ungrouped")
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, p.yamlErr(path, err)
	}
	if len(doc.Content) > 0 {
		root := doc.Content[0]
		if root.Kind != yaml.MappingNode {
			return nil, p.errAt(root, "the inventory must be a mapping of groups (all: {children: ..., hosts: ...}), not a %s", kindName(root))
		}
		for i := 0; i+1 < len(root.Content); i += 2 {
			k, v := root.Content[i], root.Content[i+1]
			name := k.Value
			if err := p.readGroup(name, v); err != nil {
				return nil, err
			}
			if name != "all" {
				p.link("all", name)
			}
		}
	}
	// Groups that nothing names as a parent hang off all, hosts in no group
	// but all are in ungrouped (as Ansible files them).
	for name, g := range p.groups {
		if name != "all" && len(g.parents) == 0 {
			p.link("all", name)
		}
	}
	if err := p.depths(); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	groupFiles := map[string]map[string]any{}
	for name := range p.groups {
		vars, err := readVarsDir(filepath.Join(dir, "group_vars"), name)
		if err != nil {
			return nil, err
		}
		if vars != nil {
			groupFiles[name] = vars
		}
	}
	ordered := p.orderedGroups()
	inv := &Inventory{File: path}
	for _, name := range p.order {
		h, err := p.resolve(name, ordered, groupFiles, dir)
		if err != nil {
			return nil, err
		}
		inv.Hosts = append(inv.Hosts, h)
	}
	sort.Slice(inv.Hosts, func(i, j int) bool { return inv.Hosts[i].Name < inv.Hosts[j].Name })
	return inv, nil
}

func (p *parser) group(name string) *group {
	g := p.groups[name]
	if g == nil {
		g = &group{name: name, vars: map[string]any{}, children: map[string]bool{}, parents: map[string]bool{}, hosts: map[string]bool{}}
		p.groups[name] = g
	}
	return g
}

func (p *parser) link(parent, child string) {
	p.group(parent).children[child] = true
	p.group(child).parents[parent] = true
}

var groupNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

func (p *parser) readGroup(name string, n *yaml.Node) error {
	if !groupNameRe.MatchString(name) {
		return p.errAt(n, "group name %q: use letters, digits, _ and - (starting with a letter or _)", name)
	}
	g := p.group(name)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // "group:" with nothing under it
	}
	if n.Kind != yaml.MappingNode {
		return p.errAt(n, "group %s must be a mapping with hosts, vars or children, not a %s", name, kindName(n))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "hosts":
			if err := p.readHosts(g, v); err != nil {
				return err
			}
		case "vars":
			vars, err := p.mapping(v, "vars of group "+name)
			if err != nil {
				return err
			}
			for vk, vv := range vars {
				g.vars[vk] = vv
			}
			if pr, ok := vars["ansible_group_priority"]; ok {
				n, ok := toInt(pr)
				if !ok {
					return p.errAt(v, "group %s: ansible_group_priority must be an integer", name)
				}
				g.priority = n
			}
		case "children":
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				continue
			}
			if v.Kind != yaml.MappingNode {
				return p.errAt(v, "children of group %s must be a mapping of groups, not a %s", name, kindName(v))
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				child := v.Content[j].Value
				if child == "all" {
					return p.errAt(v.Content[j], "group all cannot be a child of %s", name)
				}
				if err := p.readGroup(child, v.Content[j+1]); err != nil {
					return err
				}
				p.link(name, child)
			}
		default:
			return p.errAt(k, "group %s: unknown key %q (a group has hosts, vars and children; is a level of indentation missing?)", name, k.Value)
		}
	}
	return nil
}

func (p *parser) readHosts(g *group, n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return p.errAt(n, "hosts of group %s must be a mapping (name: {vars} or name: with nothing), not a %s", g.name, kindName(n))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		names, err := ExpandPattern(k.Value)
		if err != nil {
			return p.errAt(k, "host %q: %v", k.Value, err)
		}
		var vars map[string]any
		if !(v.Kind == yaml.ScalarNode && v.Tag == "!!null") {
			if vars, err = p.mapping(v, "vars of host "+k.Value); err != nil {
				return err
			}
		}
		for _, name := range names {
			h := p.hosts[name]
			if h == nil {
				h = &hostDecl{vars: map[string]any{}, line: k.Line}
				p.hosts[name] = h
				p.order = append(p.order, name)
			}
			for vk, vv := range vars {
				h.vars[vk] = vv
			}
			g.hosts[name] = true
		}
	}
	return nil
}

// mapping decodes a mapping of variables.
func (p *parser) mapping(n *yaml.Node, what string) (map[string]any, error) {
	return decodeVars(p.file, n, what)
}

func decodeVars(file string, n *yaml.Node, what string) (map[string]any, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return map[string]any{}, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s line %d: %s must be a mapping of variables, not a %s", file, n.Line, what, kindName(n))
	}
	out := map[string]any{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		val, err := decodeValue(file, v)
		if err != nil {
			return nil, err
		}
		out[k.Value] = val
	}
	return out, nil
}

func decodeValue(file string, n *yaml.Node) (any, error) {
	if n.Tag == "!vault" {
		return Vault{Ciphertext: n.Value}, nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		return decodeVars(file, n, "a value")
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := decodeValue(file, c)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.AliasNode:
		return decodeValue(file, n.Alias)
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s line %d: %v", file, n.Line, err)
	}
	return v, nil
}

// depths gives each group its longest distance from all, refusing cycles.
func (p *parser) depths() error {
	state := map[string]int{} // 0 unseen, 1 on the path, 2 done
	var walk func(name string, depth int, path []string) error
	walk = func(name string, depth int, path []string) error {
		g := p.groups[name]
		if state[name] == 1 {
			return fmt.Errorf("%s: groups nest in a cycle: %s", p.file, strings.Join(append(path, name), " -> "))
		}
		if depth > g.depth {
			g.depth = depth
		}
		state[name] = 1
		children := sortedKeys(g.children)
		for _, c := range children {
			if err := walk(c, depth+1, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		return nil
	}
	return walk("all", 0, nil)
}

// orderedGroups sorts the groups in the order their vars apply: all first,
// then by depth, ansible_group_priority and name.
func (p *parser) orderedGroups() []*group {
	out := make([]*group, 0, len(p.groups))
	for _, g := range p.groups {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.depth != b.depth {
			return a.depth < b.depth
		}
		if a.priority != b.priority {
			return a.priority < b.priority
		}
		return a.name < b.name
	})
	return out
}

// memberOf returns the groups host is in, directly or through children.
func (p *parser) memberOf(host string) map[string]bool {
	in := map[string]bool{"all": true}
	var up func(name string)
	up = func(name string) {
		if in[name] {
			return
		}
		in[name] = true
		for parent := range p.groups[name].parents {
			up(parent)
		}
	}
	direct := false
	for name, g := range p.groups {
		if g.hosts[host] && name != "all" {
			up(name)
			direct = true
		}
	}
	if !direct {
		in["ungrouped"] = true
	}
	return in
}

func (p *parser) resolve(name string, ordered []*group, groupFiles map[string]map[string]any, dir string) (Host, error) {
	decl := p.hosts[name]
	in := p.memberOf(name)
	vars := map[string]any{}
	merge := func(m map[string]any) {
		for k, v := range m {
			vars[k] = v
		}
	}
	for _, g := range ordered {
		if in[g.name] {
			merge(g.vars)
		}
	}
	merge(groupFiles["all"])
	for _, g := range ordered {
		if in[g.name] && g.name != "all" {
			merge(groupFiles[g.name])
		}
	}
	merge(decl.vars)
	hv, err := readVarsDir(filepath.Join(dir, "host_vars"), name)
	if err != nil {
		return Host{}, err
	}
	merge(hv)

	h := Host{Name: name, Vars: vars, File: p.file, Line: decl.line, Port: 22, User: DefaultUser}
	for g := range in {
		if g != "all" && g != "ungrouped" {
			h.Groups = append(h.Groups, g)
		}
	}
	sort.Strings(h.Groups)
	where := fmt.Sprintf("%s line %d: host %s", p.file, decl.line, name)
	addr, ok, err := stringVar(vars, "ansible_host", "ansible_ssh_host")
	if err != nil {
		return Host{}, fmt.Errorf("%s: %w", where, err)
	}
	if !ok || addr == "" {
		return Host{}, fmt.Errorf("%s has no address: set ansible_host (beside the host in the inventory, or in host_vars/%s.yml)", where, name)
	}
	h.Address = addr
	if u, ok, err := stringVar(vars, "ansible_user", "ansible_ssh_user"); err != nil {
		return Host{}, fmt.Errorf("%s: %w", where, err)
	} else if ok && u != "" {
		h.User = u
	}
	for _, k := range []string{"ansible_port", "ansible_ssh_port"} {
		v, ok := vars[k]
		if !ok {
			continue
		}
		port, ok := toInt(v)
		if !ok {
			if s, isStr := v.(string); isStr {
				port, err = strconv.Atoi(s)
				ok = err == nil
			}
		}
		if !ok || port < 1 || port > 65535 {
			return Host{}, fmt.Errorf("%s: %s %v is not a port (1-65535)", where, k, v)
		}
		h.Port = port
		break
	}
	return h, nil
}

// stringVar returns the first of keys that is set, as a string.
func stringVar(vars map[string]any, keys ...string) (string, bool, error) {
	for _, k := range keys {
		v, ok := vars[k]
		if !ok || v == nil {
			continue
		}
		switch v := v.(type) {
		case Vault:
			return "", false, fmt.Errorf("%s is encrypted with ansible-vault, which budfleet cannot read: write it in the clear (it is not a secret)", k)
		case string:
			return v, true, nil
		case int, int64, uint64, float64, bool:
			return fmt.Sprint(v), true, nil
		default:
			return "", false, fmt.Errorf("%s must be a string, not a %T", k, v)
		}
	}
	return "", false, nil
}

func toInt(v any) (int, bool) {
	switch v := v.(type) {
	case int:
		return v, true
	case int64:
		return int(v), true
	case uint64:
		if v > math.MaxInt32 {
			return 0, false
		}
		return int(v), true
	case float64:
		if v == math.Trunc(v) {
			return int(v), true
		}
	}
	return 0, false
}

// readVarsDir reads the variables of name from dir (group_vars or
// host_vars): dir/NAME, NAME.yml, NAME.yaml, NAME.json, or the files of the
// directory dir/NAME in name order. It returns nil when there are none.
func readVarsDir(dir, name string) (map[string]any, error) {
	var files []string
	base := filepath.Join(dir, name)
	if st, err := os.Stat(base); err == nil && st.IsDir() {
		entries, err := os.ReadDir(base)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", base, err)
		}
		for _, e := range entries {
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			switch filepath.Ext(e.Name()) {
			case "", ".yml", ".yaml", ".json":
				files = append(files, filepath.Join(base, e.Name()))
			}
		}
	} else {
		for _, ext := range []string{"", ".yml", ".yaml", ".json"} {
			f := base + ext
			if st, err := os.Stat(f); err == nil && !st.IsDir() {
				files = append(files, f)
			}
		}
	}
	if len(files) == 0 {
		return nil, nil
	}
	out := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, (&parser{}).yamlErr(f, err)
		}
		if len(doc.Content) == 0 {
			continue
		}
		vars, err := decodeVars(f, doc.Content[0], "the file")
		if err != nil {
			return nil, err
		}
		for k, v := range vars {
			out[k] = v
		}
	}
	return out, nil
}

func (p *parser) errAt(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%s line %d: %s", p.file, n.Line, fmt.Sprintf(format, args...))
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlParserErrors are the messages of go-yaml's parser (not its
// scanner). For them go-yaml reports the line of the enclosing mapping or
// list counted from 0 (its scanner errors count from 1), so "line 4: did
// not find expected ',' or '}'" is about a flow mapping opened on line 5.
var yamlParserErrors = []string{
	"did not find expected key", "did not find expected node content",
	"did not find expected ',' or '}'", "did not find expected ',' or ']'",
	"did not find expected '-' indicator", "did not find expected <document start>",
}

// yamlErr turns yaml's "yaml: line 3: mapping values are not allowed"
// into "FILE line 3: YAML syntax error: mapping values are not allowed",
// with the line a person counts.
func (p *parser) yamlErr(file string, err error) error {
	msg := err.Error()
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		for _, pe := range yamlParserErrors {
			if strings.HasPrefix(m[2], pe) {
				return fmt.Errorf("%s line %d: YAML syntax error in the mapping or list that starts on this line: %s", file, line+1, m[2])
			}
		}
		return fmt.Errorf("%s line %d: YAML syntax error: %s", file, line, m[2])
	}
	return fmt.Errorf("%s: YAML syntax error: %s", file, strings.TrimPrefix(msg, "yaml: "))
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	case yaml.ScalarNode:
		return "scalar (" + strings.TrimPrefix(n.Tag, "!!") + ")"
	case yaml.AliasNode:
		return "alias"
	}
	return "document"
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ErrPattern is wrapped by every error ExpandPattern returns.
var ErrPattern = errors.New("bad host range")

// maxExpansion bounds one pattern's hosts, so a typo such as [1:100000]
// is an error rather than a machine list nobody meant.
const maxExpansion = 10000

var rangeRe = regexp.MustCompile(`\[([^\]]*)\]`)

// ExpandPattern expands Ansible host ranges: web-[01:03] gives web-01,
// web-02, web-03 (the start's leading zeros set the width), db-[a:c] gives
// db-a, db-b, db-c, and [1:9:4] steps by 4. A name without brackets is
// returned as it is.
func ExpandPattern(pattern string) ([]string, error) {
	loc := rangeRe.FindStringSubmatchIndex(pattern)
	if loc == nil {
		if strings.ContainsAny(pattern, "[]") {
			return nil, fmt.Errorf("%w: unbalanced brackets", ErrPattern)
		}
		if pattern == "" {
			return nil, fmt.Errorf("%w: empty host name", ErrPattern)
		}
		return []string{pattern}, nil
	}
	prefix, body, rest := pattern[:loc[0]], pattern[loc[2]:loc[3]], pattern[loc[1]:]
	if strings.ContainsAny(prefix, "[]") {
		return nil, fmt.Errorf("%w: unbalanced brackets", ErrPattern)
	}
	items, err := expandRange(body)
	if err != nil {
		return nil, err
	}
	tails := []string{""}
	if rest != "" {
		if tails, err = ExpandPattern(rest); err != nil {
			return nil, err
		}
	}
	if len(items)*len(tails) > maxExpansion {
		return nil, fmt.Errorf("%w: [%s] makes more than %d hosts", ErrPattern, body, maxExpansion)
	}
	out := make([]string, 0, len(items)*len(tails))
	for _, it := range items {
		for _, t := range tails {
			out = append(out, prefix+it+t)
		}
	}
	return out, nil
}

func expandRange(body string) ([]string, error) {
	parts := strings.Split(body, ":")
	if len(parts) != 2 && len(parts) != 3 {
		return nil, fmt.Errorf("%w: [%s] must be [start:end] or [start:end:step]", ErrPattern, body)
	}
	step := 1
	if len(parts) == 3 {
		s, err := strconv.Atoi(parts[2])
		if err != nil || s < 1 {
			return nil, fmt.Errorf("%w: step %q in [%s] must be a positive integer", ErrPattern, parts[2], body)
		}
		step = s
	}
	start, end := parts[0], parts[1]
	if isLetter(start) && isLetter(end) {
		if start[0] > end[0] {
			return nil, fmt.Errorf("%w: [%s] ends before it starts", ErrPattern, body)
		}
		var out []string
		for c := start[0]; c <= end[0]; c += byte(step) {
			out = append(out, string(c))
			if int(c)+step > 255 {
				break
			}
		}
		return out, nil
	}
	if start == "" {
		start = "0" // Ansible: [:10] starts at 0
	}
	a, errA := strconv.Atoi(start)
	b, errB := strconv.Atoi(end)
	if errA != nil || errB != nil || a < 0 {
		return nil, fmt.Errorf("%w: [%s] must be numbers (01:20) or single letters (a:c)", ErrPattern, body)
	}
	if a > b {
		return nil, fmt.Errorf("%w: [%s] ends before it starts", ErrPattern, body)
	}
	if (b-a)/step+1 > maxExpansion {
		return nil, fmt.Errorf("%w: [%s] makes more than %d hosts", ErrPattern, body, maxExpansion)
	}
	width := 0
	if len(start) > 1 && start[0] == '0' {
		width = len(start)
	}
	var out []string
	for i := a; i <= b; i += step {
		out = append(out, fmt.Sprintf("%0*d", width, i))
	}
	return out, nil
}

func isLetter(s string) bool {
	return len(s) == 1 && (s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z')
}
