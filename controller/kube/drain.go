package kube

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes"
	policyv1client "k8s.io/client-go/kubernetes/typed/policy/v1"
	"k8s.io/kubectl/pkg/drain"
)

// Drain limits.
const (
	// DefaultDrainTimeout is the fleet playbook's drain timeout, used when
	// DrainOptions.Timeout is 0.
	DefaultDrainTimeout = 300 * time.Second
	MaxDrainTimeout     = 24 * time.Hour
	// MaxDrainOutput bounds DrainReport.Output; the end is kept.
	MaxDrainOutput = 16 << 10
)

// DrainOptions are kubectl drain's options. The zero value is kubectl's
// defaults, under which a DaemonSet pod or a pod with emptyDir data blocks
// the drain; DefaultDrainOptions is the fleet playbook's.
type DrainOptions struct {
	// Timeout bounds the evictions in all; 0 means DefaultDrainTimeout.
	Timeout time.Duration
	// DeleteEmptyDirData evicts pods with emptyDir volumes (their data is
	// lost).
	DeleteEmptyDirData bool
	// IgnoreDaemonSets leaves DaemonSet pods on the Node.
	IgnoreDaemonSets bool
	// Force also deletes pods that no controller manages.
	Force bool
	// GracePeriod overrides each pod's terminationGracePeriodSeconds
	// (rounded up to whole seconds); 0 keeps each pod's own.
	GracePeriod time.Duration
}

// DefaultDrainOptions are the fleet playbook's: ignore DaemonSets, delete
// emptyDir data, 300s.
func DefaultDrainOptions() DrainOptions {
	return DrainOptions{Timeout: DefaultDrainTimeout, DeleteEmptyDirData: true, IgnoreDaemonSets: true}
}

// Validate says what is wrong with o, or nil.
func (o DrainOptions) Validate() error {
	switch {
	case o.Timeout < 0 || o.Timeout > MaxDrainTimeout:
		return fmt.Errorf("%w: drain timeout %s: want 0 (the default %s) up to %s", ErrInvalid, o.Timeout, DefaultDrainTimeout, MaxDrainTimeout)
	case o.GracePeriod < 0:
		return fmt.Errorf("%w: grace period %s is negative: use 0 to keep each pod's own", ErrInvalid, o.GracePeriod)
	}
	return nil
}

// DrainResult is how a drain ended.
type DrainResult string

// Drain results.
const (
	DrainSucceeded DrainResult = "succeeded"
	// DrainFailed: a pod could not be evicted or deleted.
	DrainFailed DrainResult = "failed"
	// DrainTimedOut: the timeout passed with pods left.
	DrainTimedOut DrainResult = "timed out"
)

// PodRef names a pod.
type PodRef struct {
	Namespace string
	Name      string
}

func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// BlockedPod is a pod a drain meant to remove and could not.
type BlockedPod struct {
	PodRef
	// PDB is the PodDisruptionBudget that refused the pod's eviction, when
	// one did.
	PDB string
	// Reason is why, in the API server's or kubectl's words.
	Reason string
}

// DrainReport is what one drain did and what blocked it.
type DrainReport struct {
	Target
	Result DrainResult
	// Message is one line for people: what was evicted, or what blocked.
	Message string
	// Evicted are the pods evicted (or deleted) and gone, sorted.
	Evicted []PodRef
	// Blocked are the pods left that the drain meant to remove, sorted.
	Blocked []BlockedPod
	// Warnings are kubectl's: pods left alone (DaemonSet-managed) or
	// deleted despite a warning (emptyDir data, no controller).
	Warnings []string
	Duration time.Duration
	// Output is the drain helper's own output, its end when longer than
	// MaxDrainOutput.
	Output string
}

// Drain cordons the node's Node and drains it; see Nodes.Drain.
func (m *Manager) Drain(ctx context.Context, n FleetNode, opts DrainOptions) (DrainReport, error) {
	if err := opts.Validate(); err != nil {
		return DrainReport{}, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultDrainTimeout
	}
	began := time.Now()
	t, cc, kn, err := m.node(ctx, n)
	rep := DrainReport{Target: t}
	if err != nil {
		return rep, err
	}
	if err := m.cordon(ctx, t, cc, kn, true); err != nil {
		return rep, err
	}

	rec := &recorder{pods: map[PodRef]*podRecord{}}
	out := &drainOutput{rec: rec}
	grace := -1 // each pod's own
	if opts.GracePeriod > 0 {
		grace = int((opts.GracePeriod + time.Second - 1) / time.Second)
	}
	h := &drain.Helper{
		Ctx:                             ctx,
		Client:                          recordingClient{Interface: cc.client, rec: rec},
		Force:                           opts.Force,
		GracePeriodSeconds:              grace,
		IgnoreAllDaemonSets:             opts.IgnoreDaemonSets,
		DeleteEmptyDirData:              opts.DeleteEmptyDirData,
		Timeout:                         opts.Timeout,
		EvictErrorRetryDelay:            m.opts.EvictRetryDelay,
		Out:                             out,
		ErrOut:                          out,
		OnPodDeletionOrEvictionStarted:  rec.started,
		OnPodDeletionOrEvictionFinished: rec.finished,
	}
	m.log.InfoContext(ctx, "draining node", "node_id", n.ID, "cluster", t.Cluster, "k8s_node", t.Node, "timeout", opts.Timeout)
	drainErr := drain.RunNodeDrain(h, t.Node)
	rep.Duration = time.Since(began)
	rep.Output = out.String()
	m.fillReport(ctx, &rep, rec, cc.client, drainErr, opts.Timeout)
	m.log.InfoContext(ctx, "drain done", "node_id", n.ID, "cluster", t.Cluster, "k8s_node", t.Node, "result", string(rep.Result), "evicted", len(rep.Evicted), "blocked", len(rep.Blocked), "duration", rep.Duration)
	if rep.Result != DrainSucceeded {
		if ctx.Err() != nil {
			return rep, fmt.Errorf("%w: %s: %w", ErrDrainBlocked, rep.Message, ctx.Err())
		}
		return rep, fmt.Errorf("%w: %s", ErrDrainBlocked, rep.Message)
	}
	return rep, nil
}

// fillReport sorts out what the drain did from what rec saw and the
// helper's error.
func (m *Manager) fillReport(ctx context.Context, rep *DrainReport, rec *recorder, client kubernetes.Interface, drainErr error, timeout time.Duration) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rep.Warnings = rec.warnings
	blocked := map[PodRef]BlockedPod{}
	for ref, p := range rec.pods {
		if p.gone {
			rep.Evicted = append(rep.Evicted, ref)
			continue
		}
		b := BlockedPod{PodRef: ref}
		switch {
		case p.refusal != nil:
			b.Reason = refusalReason(p.refusal)
			b.PDB = pdbFromCause(p.refusal)
			if b.PDB == "" && apierrors.IsTooManyRequests(p.refusal) {
				b.PDB = m.findPDB(ctx, client, p.pod)
			}
		case p.waitErr != nil:
			b.Reason = "evicted, but its deletion could not be followed: " + p.waitErr.Error()
		default:
			b.Reason = "evicted, still terminating when the drain stopped"
		}
		blocked[ref] = b
	}
	// Pods kubectl's filters refused before evicting anything.
	for _, b := range filterBlocks(drainErr) {
		if _, ok := blocked[b.PodRef]; !ok {
			blocked[b.PodRef] = b
		}
	}
	for _, b := range blocked {
		rep.Blocked = append(rep.Blocked, b)
	}
	sort.Slice(rep.Evicted, func(i, j int) bool { return rep.Evicted[i].String() < rep.Evicted[j].String() })
	sort.Slice(rep.Blocked, func(i, j int) bool { return rep.Blocked[i].String() < rep.Blocked[j].String() })

	where := fmt.Sprintf("Node %s in cluster %s", rep.Node, rep.Cluster)
	switch {
	case drainErr == nil:
		rep.Result = DrainSucceeded
		switch len(rep.Evicted) {
		case 0:
			rep.Message = "drained " + where + ": no pods to evict"
		default:
			rep.Message = fmt.Sprintf("drained %s: evicted %s", where, pods(len(rep.Evicted)))
		}
		return
	case ctx.Err() != nil:
		rep.Result = DrainFailed
		rep.Message = fmt.Sprintf("drain of %s stopped (%v) with %s left", where, ctx.Err(), pods(len(rep.Blocked)))
	case strings.Contains(drainErr.Error(), "global timeout reached"):
		rep.Result = DrainTimedOut
		rep.Message = fmt.Sprintf("drain of %s timed out after %s with %s left", where, timeout, pods(len(rep.Blocked)))
	default:
		rep.Result = DrainFailed
		rep.Message = fmt.Sprintf("drain of %s failed with %s left", where, pods(len(rep.Blocked)))
	}
	if len(rep.Blocked) == 0 {
		rep.Message += ": " + drainErr.Error()
		return
	}
	var parts []string
	for i, b := range rep.Blocked {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(rep.Blocked)-3))
			break
		}
		s := b.String() + " ("
		if b.PDB != "" {
			s += "PodDisruptionBudget " + b.PDB + ": "
		}
		parts = append(parts, s+b.Reason+")")
	}
	rep.Message += ": " + strings.Join(parts, "; ")
}

func pods(n int) string {
	if n == 1 {
		return "1 pod"
	}
	return fmt.Sprintf("%d pods", n)
}

// refusalReason is an eviction error in the API server's words, with its
// disruption-budget cause when it has one.
func refusalReason(err error) string {
	msg := apiMessage(err)
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Details != nil {
		for _, c := range st.Status().Details.Causes {
			if c.Type == policyv1.DisruptionBudgetCause && c.Message != "" {
				msg = strings.TrimSpace(msg) + " " + c.Message
			}
		}
	}
	return msg
}

// The eviction subresource names the budget in its cause: "The disruption
// budget NAME needs 1 healthy pods and has 1 currently", or "... is still
// being processed by the server."
var pdbCauseRe = regexp.MustCompile(`^The disruption budget (\S+) `)

func pdbFromCause(err error) string {
	var st apierrors.APIStatus
	if !errors.As(err, &st) || st.Status().Details == nil {
		return ""
	}
	for _, c := range st.Status().Details.Causes {
		if c.Type != policyv1.DisruptionBudgetCause {
			continue
		}
		if m := pdbCauseRe.FindStringSubmatch(c.Message); m != nil {
			return m[1]
		}
	}
	return ""
}

// findPDB names the PodDisruptionBudgets selecting pod, for a refusal that
// did not name one.
func (m *Manager) findPDB(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) string {
	if pod == nil {
		return ""
	}
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	list, err := client.PolicyV1().PodDisruptionBudgets(pod.Namespace).List(cctx, metav1.ListOptions{})
	if err != nil {
		return ""
	}
	var names []string
	for _, pdb := range list.Items {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || sel.Empty() {
			continue
		}
		if sel.Matches(labels.Set(pod.Labels)) {
			names = append(names, pdb.Name)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

// filterBlocks reads the pods kubectl's drain filters refused from its
// error: "cannot delete <what> (use --flag to override): ns/a, ns/b".
func filterBlocks(err error) []BlockedPod {
	if err == nil {
		return nil
	}
	errs := []error{err}
	var agg utilerrors.Aggregate
	if errors.As(err, &agg) {
		errs = agg.Errors()
	}
	var out []BlockedPod
	for _, e := range errs {
		msg := e.Error()
		if !strings.HasPrefix(msg, "cannot delete ") {
			continue
		}
		i := strings.LastIndex(msg, ": ")
		if i < 0 {
			continue
		}
		reason := msg[:i]
		for _, p := range strings.Split(msg[i+2:], ", ") {
			ns, name, ok := strings.Cut(p, "/")
			if !ok {
				continue
			}
			out = append(out, BlockedPod{PodRef: PodRef{Namespace: ns, Name: name}, Reason: reason})
		}
	}
	return out
}

// recorder collects what the drain helper did, pod by pod: its callbacks
// and the results of the evictions it asked for.
type recorder struct {
	mu       sync.Mutex
	pods     map[PodRef]*podRecord
	warnings []string
}

type podRecord struct {
	pod     *corev1.Pod
	gone    bool
	refusal error // the last eviction error, cleared by a success
	waitErr error
}

func (r *recorder) get(ref PodRef) *podRecord {
	p := r.pods[ref]
	if p == nil {
		p = &podRecord{}
		r.pods[ref] = p
	}
	return p
}

func (r *recorder) started(pod *corev1.Pod, _ bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.get(PodRef{pod.Namespace, pod.Name}).pod = pod.DeepCopy()
}

func (r *recorder) finished(pod *corev1.Pod, _ bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.get(PodRef{pod.Namespace, pod.Name})
	if err == nil {
		p.gone, p.refusal, p.waitErr = true, nil, nil
		return
	}
	p.waitErr = err
}

func (r *recorder) evicted(ns, name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.get(PodRef{ns, name})
	switch {
	case err == nil:
		p.refusal = nil
	case apierrors.IsNotFound(err):
		p.gone, p.refusal = true, nil
	default:
		p.refusal = err
	}
}

func (r *recorder) warning(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range strings.Split(line, "; ") {
		if w = strings.TrimSpace(w); w != "" {
			r.warnings = append(r.warnings, w)
		}
	}
}

// recordingClient is a clientset whose policy/v1 evictions report their
// results to rec: the drain helper prints an eviction refusal and retries,
// and the refusal's cause (which names the PodDisruptionBudget) is seen
// only here.
type recordingClient struct {
	kubernetes.Interface
	rec *recorder
}

func (c recordingClient) PolicyV1() policyv1client.PolicyV1Interface {
	return recordingPolicy{PolicyV1Interface: c.Interface.PolicyV1(), rec: c.rec}
}

type recordingPolicy struct {
	policyv1client.PolicyV1Interface
	rec *recorder
}

func (p recordingPolicy) Evictions(namespace string) policyv1client.EvictionInterface {
	return recordingEvictions{EvictionInterface: p.PolicyV1Interface.Evictions(namespace), rec: p.rec}
}

type recordingEvictions struct {
	policyv1client.EvictionInterface
	rec *recorder
}

func (e recordingEvictions) Evict(ctx context.Context, ev *policyv1.Eviction) error {
	err := e.EvictionInterface.Evict(ctx, ev)
	e.rec.evicted(ev.Namespace, ev.Name, err)
	return err
}

// drainOutput keeps the end of the helper's output (it writes from several
// goroutines) and hands its WARNING lines to rec.
type drainOutput struct {
	mu      sync.Mutex
	rec     *recorder
	buf     []byte
	cut     int
	partial []byte
}

func (o *drainOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	if over := len(o.buf) - MaxDrainOutput; over > 0 {
		o.cut += over
		o.buf = append(o.buf[:0:0], o.buf[over:]...)
	}
	o.partial = append(o.partial, p...)
	for {
		i := strings.IndexByte(string(o.partial), '\n')
		if i < 0 {
			break
		}
		if line, ok := strings.CutPrefix(string(o.partial[:i]), "WARNING: "); ok {
			o.rec.warning(line)
		}
		o.partial = o.partial[i+1:]
	}
	if len(o.partial) > MaxDrainOutput {
		o.partial = nil
	}
	return len(p), nil
}

func (o *drainOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := strings.ToValidUTF8(string(o.buf), "\uFFFD")
	if o.cut > 0 {
		s = fmt.Sprintf("[... %d bytes cut ...]\n", o.cut) + s
	}
	return s
}
