package vsphere

import (
	"encoding/base64"
	"fmt"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

// Paths on the machine that the first boot uses.
const (
	tokenPath         = "/etc/budfleet/join-token"
	agentUnit         = "bud-agent"
	packageDir        = "/var/tmp"
	cloudConfigHeader = "#cloud-config\n"
)

// userData is the cloud-init user data that makes the machine join: the
// join token in a root-only file, the agent package installed (fetched
// first when it is a URL; nothing to install when it is empty, for a
// template with the agent in it), the join, the agent's unit started, and
// the spent token removed.
func userData(name string, boot sdk.Bootstrap) ([]byte, error) {
	var install []string
	if pkg := boot.AgentPackage; pkg != "" {
		local := pkg
		if strings.HasPrefix(pkg, "http://") || strings.HasPrefix(pkg, "https://") {
			local = path.Join(packageDir, path.Base(pkg))
			install = append(install, fmt.Sprintf("curl -fsSL --retry 5 -o %s %s", shellQuote(local), shellQuote(pkg)))
		}
		switch {
		case strings.HasSuffix(local, ".rpm"):
			install = append(install, "rpm -U --replacepkgs "+shellQuote(local))
		default:
			install = append(install, "dpkg -i "+shellQuote(local))
		}
	}
	cmds := append(install,
		fmt.Sprintf("bud-agent join --controller %s --token-file %s --hostname %s",
			shellQuote(boot.ControllerAddress), tokenPath, shellQuote(name)),
		"systemctl enable --now "+agentUnit,
		"rm -f "+tokenPath,
	)
	doc := map[string]any{
		"hostname": name,
		"write_files": []map[string]any{{
			"path": tokenPath, "permissions": "0600", "owner": "root:root", "content": boot.JoinToken + "\n",
		}},
		"runcmd": []any{[]string{"sh", "-ec", strings.Join(cmds, "\n")}},
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return append([]byte(cloudConfigHeader), b...), nil
}

// metaData is cloud-init's instance metadata: the machine's name as its
// instance id and hostname.
func metaData(name string) ([]byte, error) {
	return yaml.Marshal(map[string]string{"instance-id": name, "local-hostname": name})
}

// guestInfo is the VM's extraConfig that carries both to cloud-init's
// VMware datasource.
func guestInfo(name string, boot sdk.Bootstrap) (map[string]string, error) {
	ud, err := userData(name, boot)
	if err != nil {
		return nil, err
	}
	md, err := metaData(name)
	if err != nil {
		return nil, err
	}
	return map[string]string{
		"guestinfo.userdata":          base64.StdEncoding.EncodeToString(ud),
		"guestinfo.userdata.encoding": "base64",
		"guestinfo.metadata":          base64.StdEncoding.EncodeToString(md),
		"guestinfo.metadata.encoding": "base64",
	}, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
