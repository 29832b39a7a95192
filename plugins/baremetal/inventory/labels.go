package inventory

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// GroupLabelPrefix starts the label that says a host is in a group:
// budfleet.io/group.gpu_nodes=true.
const GroupLabelPrefix = "budfleet.io/group."

// Variables that never become labels: connection settings, the BMC's and
// the provider's own settings, and anything whose name says it is a
// secret (labels are shown to every operator and copied to Kubernetes).
var (
	unlabelledPrefixes = []string{"ansible_", "ipmi_", "bmc_", "budfleet_"}
	secretNameRe       = regexp.MustCompile(`(?i)pass|secret|token|credential|private|vault`)
	labelBadRe         = regexp.MustCompile(`[^-A-Za-z0-9_.]+`)
)

// Labels returns the node labels of the host: one budfleet.io/group.<group>
// per group (value "true"), and one per scalar variable (gpu_type:
// nvidia-a100 gives gpu_type=nvidia-a100). Keys and values are made to
// fit Kubernetes' label rules (see SanitizeLabelValue); lists, maps and
// vaulted values are left out, and so are the variables above.
func (h Host) Labels() map[string]string {
	out := map[string]string{}
	for _, g := range h.Groups {
		name := SanitizeLabelValue(g)
		if len(name) > 63-len("group.") {
			name = strings.TrimRight(name[:63-len("group.")], "-_.")
		}
		if name != "" {
			out[GroupLabelPrefix+name] = "true"
		}
	}
	keys := make([]string, 0, len(h.Vars))
	for k := range h.Vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !labelled(k) {
			continue
		}
		v, ok := scalar(h.Vars[k])
		if !ok {
			continue
		}
		key := SanitizeLabelValue(k)
		if key == "" {
			continue
		}
		out[key] = SanitizeLabelValue(v)
	}
	return out
}

func labelled(name string) bool {
	for _, p := range unlabelledPrefixes {
		if strings.HasPrefix(name, p) {
			return false
		}
	}
	return !secretNameRe.MatchString(name)
}

func scalar(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case bool:
		return strconv.FormatBool(v), true
	case int, int64, uint64:
		return fmt.Sprint(v), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	}
	return "", false
}

// SanitizeLabelValue makes s a valid Kubernetes label value (and label
// name): runs of characters other than letters, digits, '-', '_' and '.'
// become one '-', it is cut to 63 characters, and it starts and ends with a
// letter or digit ("NVIDIA A100 80GB" gives "NVIDIA-A100-80GB"). It may
// return "".
func SanitizeLabelValue(s string) string {
	s = labelBadRe.ReplaceAllString(s, "-")
	s = strings.Trim(s, "-_.")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-_.")
	}
	return s
}
