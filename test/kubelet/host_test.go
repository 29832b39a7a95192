package kubelet

import (
	"os"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/internal/kubetest"
)

const nodeIP = kubetest.NodeIP

// requireNode fails a test that is not root and makes it the only one on
// the machine running a real kubelet (kubetest.LockKubelet).
func requireNode(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("a real kubelet needs root (network links, mounts, cgroups): run the tests as root")
	}
	kubetest.LockKubelet(t, 10*time.Minute)
}

func addNodeLink(t *testing.T)              { kubetest.AddNodeLink(t) }
func cleanupNode(t *testing.T, root string) { kubetest.CleanupNode(t, root) }
