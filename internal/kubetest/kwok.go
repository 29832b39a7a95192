package kubetest

import (
	"bytes"
	"context"
	"embed"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/bud-ecosystem/budfleet/internal/freeport"
)

// KwokAnnotation marks a node for kwok: the nodes whose annotation
// KwokAnnotation is "fake" are the ones it plays the kubelet of.
const KwokAnnotation = "kwok.x-k8s.io/node"

// The stages are kwok's own, copied from its module (see stages/README.md).
//
//go:embed stages/*.yaml
var stagesFS embed.FS

var stageFiles = []string{
	"node-initialize.yaml",
	"node-heartbeat-with-lease.yaml",
	"pod-ready.yaml",
	"pod-complete.yaml",
	"pod-delete.yaml",
}

// kwokStages returns the stage files joined into one YAML stream.
func kwokStages() ([]byte, error) {
	var b bytes.Buffer
	for i, name := range stageFiles {
		doc, err := stagesFS.ReadFile("stages/" + name)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(bytes.TrimSpace(doc))
		b.WriteString("\n")
	}
	return b.Bytes(), nil
}

func (cp *ControlPlane) startKwok(ctx context.Context) error {
	stages, err := kwokStages()
	if err != nil {
		return err
	}
	stagesFile := filepath.Join(cp.Dir, "kwok-stages.yaml")
	if err := os.WriteFile(stagesFile, stages, 0o644); err != nil {
		return err
	}
	port, err := freeport.Pick()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	kwok, err := cp.run("kwok", []string{
		"--kubeconfig=" + cp.KubeconfigFile,
		"--config=" + stagesFile,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + KwokAnnotation + "=fake",
		"--server-address=" + addr,
	})
	if err != nil {
		return err
	}
	return waitFor(ctx, kwok, "kwok /healthz", func(ctx context.Context) error {
		return httpOK(ctx, http.DefaultClient, "http://"+addr+"/healthz", "ok")
	})
}

// AddKwokNode creates node name, annotated for kwok, with labels (on top
// of kubernetes.io/hostname, kubernetes.io/os, kubernetes.io/arch and
// type=kwok) and waits until it is Ready. It needs WithKwok.
func (cp *ControlPlane) AddKwokNode(name string, labels map[string]string) *corev1.Node {
	cp.t.Helper()
	if !cp.kwok {
		cp.t.Fatalf("kubetest: AddKwokNode(%q) needs Start(t, WithKwok())", name)
	}
	l := map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	maps.Copy(l, labels)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        name,
		Labels:      l,
		Annotations: map[string]string{KwokAnnotation: "fake"},
	}}
	ctx := cp.t.Context()
	if _, err := cp.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		cp.t.Fatalf("kubetest: create node %s: %v", name, err)
	}
	var ready *corev1.Node
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if NodeReady(n) {
			ready = n
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		cp.t.Fatalf("kubetest: node %s not Ready: %v", name, err)
	}
	return ready
}

// NodeReady reports whether n's Ready condition is True.
func NodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
