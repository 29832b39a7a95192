package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bud-ecosystem/budfleet/controller/store"
	agentv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/agent/v1"
	fleetv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/fleet/v1"
	siemv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/siem/v1"
	"github.com/bud-ecosystem/budfleet/siem"
)

// siemReport is the last forwarding status a node sent with a heartbeat.
// It is kept in memory only: it changes with every heartbeat and is worth
// nothing after a restart.
type siemReport struct {
	status *siemv1.Status
	at     time.Time
}

// siemPush sends each node the forwarding configuration its labels select,
// when it connects and whenever its reports show it runs another.
type siemPush struct {
	srv *Server

	mu      sync.Mutex
	reports map[string]siemReport // by node id
	// pushed is when each node was last sent, or checked for, its
	// configuration.
	pushed map[string]time.Time
	// settled is, per node, the status (version and source) with which it
	// was last found running what it should: heartbeats that report it
	// again cost no store read. A new configuration clears it.
	settled map[string]string
}

func statusKey(st *siemv1.Status) string {
	return fmt.Sprintf("%d/%s", st.GetConfigVersion(), st.GetConfigSource())
}

func (*siemPush) name() string { return "siem" }

// handlers: the status comes with the heartbeat, which recordStatus is
// handed by the heartbeat module.
func (*siemPush) handlers() []handler { return nil }

// run pushes the configuration when the session opens.
func (m *siemPush) start(_ context.Context, sess *session) error {
	m.push(sess, true)
	return nil
}

func (m *siemPush) recordStatus(sess *session, st *siemv1.Status) {
	if st == nil {
		return
	}
	m.mu.Lock()
	m.reports[sess.nodeID] = siemReport{status: st, at: m.srv.opts.Now()}
	settled := m.settled[sess.nodeID] == statusKey(st)
	m.mu.Unlock()
	if !settled { // SIEM status is handled on change, not on every beat
		m.repush(sess)
	}
}

// report returns a node's last report; zero if none.
func (m *siemPush) report(nodeID string) siemReport {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reports[nodeID]
}

// forget drops what is known of a deleted node.
func (m *siemPush) forget(nodeID string) {
	m.mu.Lock()
	delete(m.reports, nodeID)
	delete(m.pushed, nodeID)
	delete(m.settled, nodeID)
	m.mu.Unlock()
}

// desiredSIEM returns the configuration a node should run, if any.
func (s *Server) desiredSIEM(ctx context.Context, n store.Node) (store.SIEMConfig, bool, error) {
	return s.store.SIEMConfigFor(ctx, n.Labels)
}

// siemRepushEvery limits how often a node that reports another version than
// it should run is sent its configuration again.
const siemRepushEvery = 30 * time.Second

// push sends a node its configuration unless it already reported running
// that version. With wait false it never blocks: one stalled session must
// not hold up an operator's call; the node's next heartbeat that shows the
// old version brings the push again.
func (m *siemPush) push(sess *session, wait bool) {
	s := m.srv
	n, err := s.store.GetNode(sess.ctx, sess.nodeID)
	if err != nil {
		return
	}
	c, ok, err := s.desiredSIEM(sess.ctx, n)
	if err != nil {
		return
	}
	rep := m.report(sess.nodeID)
	if !ok || rep.status != nil && rep.status.GetConfigVersion() == c.Version && rep.status.GetConfigSource() == "controller" {
		if rep.status != nil {
			m.mu.Lock()
			m.settled[sess.nodeID] = statusKey(rep.status)
			m.mu.Unlock()
		}
		return
	}
	msg := &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_SiemConfig{SiemConfig: &siemv1.ConfigPush{Version: c.Version, Yaml: c.YAML}}}
	if wait {
		sess.send(msg)
	} else if !sess.offer(msg) {
		return // the next heartbeat brings it again
	}
	m.mu.Lock()
	m.pushed[sess.nodeID] = s.opts.Now()
	m.mu.Unlock()
}

// repush sends the configuration again to a node whose heartbeat shows it
// is not running the one it should. The check itself is rate-limited to
// every siemRepushEvery: it reads the store, and heartbeats are the hot path.
func (m *siemPush) repush(sess *session) {
	m.mu.Lock()
	now := m.srv.opts.Now()
	due := now.Sub(m.pushed[sess.nodeID]) >= siemRepushEvery
	if due {
		m.pushed[sess.nodeID] = now
	}
	m.mu.Unlock()
	if due {
		m.push(sess, false)
	}
}

// ApplySiemConfig validates and stores a forwarding configuration and
// pushes it to the connected nodes it selects.
func (a *FleetAPI) ApplySiemConfig(ctx context.Context, req *fleetv1.ApplySiemConfigRequest) (*fleetv1.ApplySiemConfigResponse, error) {
	if len(req.GetYaml()) > 256<<10 {
		return nil, status.Error(codes.InvalidArgument, "configuration is larger than 256 KiB")
	}
	if _, err := siem.ParseYAML(req.GetYaml()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid SIEM configuration (nothing was stored):\n%v", err)
	}
	if err := validateLabels(req.GetSelector()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "selector: %v", err)
	}
	who := ""
	if id, ok := IdentityFrom(ctx); ok {
		who = id.Name
	}
	c, err := a.s.store.AddSIEMConfig(ctx, store.SIEMConfig{YAML: req.GetYaml(), Selector: req.GetSelector(), CreatedAt: a.s.opts.Now(), CreatedBy: who})
	if err != nil {
		return nil, storeErr(err)
	}
	nodes, err := a.s.store.ListNodes(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	resp := &fleetv1.ApplySiemConfigResponse{Version: c.Version}
	a.s.siem.mu.Lock()
	clear(a.s.siem.settled)
	a.s.siem.mu.Unlock()
	for _, n := range nodes {
		d, ok, err := a.s.desiredSIEM(ctx, n)
		if err != nil || !ok || d.Version != c.Version {
			continue
		}
		resp.NodeIds = append(resp.NodeIds, n.ID)
		if sess := a.s.sessionOf(n.ID); sess != nil {
			a.s.siem.push(sess, false)
		}
	}
	// The audit event names exactly what was pushed: the sha256 of the
	// text, which the store keeps in full under the version.
	sum := sha256.Sum256(req.GetYaml())
	a.audit(ctx, "siem.apply", "version", c.Version, "sha256", hex.EncodeToString(sum[:]), "bytes", len(req.GetYaml()), "selector", fmt.Sprint(req.GetSelector()), "nodes", len(resp.NodeIds))
	return resp, nil
}

// Forwarding states, worst first.
var siemStateRank = map[string]int{"failing": 0, "lagging": 1, "pending": 2, "unknown": 3, "ok": 4, "no-config": 5}

// siemLagThreshold is when a node counts as lagging.
const siemLagThreshold = 60 * time.Second

func siemState(st *siemv1.Status, desired uint64, hasDesired bool) string {
	if st == nil {
		if hasDesired {
			return "unknown"
		}
		return "no-config"
	}
	if !hasDesired && st.GetConfigError() != "" {
		return "failing"
	}
	if hasDesired && (st.GetConfigSource() != "controller" || st.GetConfigVersion() != desired) {
		if st.GetConfigError() != "" {
			return "failing"
		}
		return "pending"
	}
	if len(st.GetOutputs()) == 0 && len(st.GetSources()) == 0 {
		return "no-config"
	}
	state := "ok"
	for _, o := range st.GetOutputs() {
		if o.GetLastError() != "" && !o.GetConnected() {
			return "failing"
		}
		if o.GetLagSeconds() > siemLagThreshold.Seconds() {
			state = "lagging"
		}
	}
	for _, src := range st.GetSources() {
		if src.GetPaused() {
			return "failing"
		}
	}
	return state
}

// GetSiemStatus reports forwarding per node, failing and lagging first.
func (a *FleetAPI) GetSiemStatus(ctx context.Context, req *fleetv1.GetSiemStatusRequest) (*fleetv1.GetSiemStatusResponse, error) {
	var nodes []store.Node
	if req.GetNodeId() != "" {
		n, err := a.s.store.GetNode(ctx, req.GetNodeId())
		if err != nil {
			return nil, storeErr(err)
		}
		nodes = []store.Node{n}
	} else {
		var err error
		if nodes, err = a.s.store.ListNodes(ctx); err != nil {
			return nil, storeErr(err)
		}
	}
	out := &fleetv1.GetSiemStatusResponse{}
	for _, n := range nodes {
		d, ok, err := a.s.desiredSIEM(ctx, n)
		if err != nil {
			return nil, storeErr(err)
		}
		rep := a.s.siem.report(n.ID)
		ns := &fleetv1.NodeSiemStatus{NodeId: n.ID, Hostname: n.Hostname, Status: rep.status, State: siemState(rep.status, d.Version, ok)}
		if ok {
			ns.DesiredConfigVersion = d.Version
		}
		if !rep.at.IsZero() {
			ns.ReportedAt = timestamppb.New(rep.at)
		}
		out.Nodes = append(out.Nodes, ns)
	}
	sort.SliceStable(out.Nodes, func(i, j int) bool {
		return siemStateRank[out.Nodes[i].GetState()] < siemStateRank[out.Nodes[j].GetState()]
	})
	return out, nil
}
