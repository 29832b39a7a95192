package maintenance

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// The fake world: Kubernetes Nodes, agents and a command store that the
// actions change, and a runner loop around Step that persists (as JSON)
// before it acts and can be made to crash.

var t0 = time.Date(2026, 3, 7, 2, 0, 0, 0, time.UTC) // a Saturday, 02:00 UTC

const tick = 10 * time.Second

type fakeNode struct {
	id, name, rack string
	exists         bool
	ready          bool
	unsched        bool
	connected      bool
	bootID         string
	boots          int
	gpus           int
	gpuHealthy     bool

	// behaviour
	drainTicks     int // ticks a drain takes
	drainFails     int // drain attempts that fail before one succeeds
	taskTicks      int
	taskExit       int // non-zero: the task fails with it
	taskHangs      bool
	rebootTicks    int  // ticks the agent is away
	rebootNever    bool // never comes back
	rebootSameBoot bool // comes back with the boot id it had
	gpusAfter      int  // GPUs after the reboot; -1 the same
	backAt         int  // tick the agent returns from a reboot
	rebooting      bool
}

type fakeCmd struct {
	id, node, kind string
	state          CommandState
	exit           int
	msg            string
	doneAt         int
}

type runDrain struct {
	attempt int
	state   DrainState
	msg     string
	doneAt  int
}

type crashMode int

const (
	noCrash      crashMode = iota
	crashUnsaved           // the step's result is lost: replay the last persisted state
	crashMidActs           // persisted, then only some actions carried out
	crashNoActs            // persisted, no action carried out
)

type sim struct {
	t     *testing.T
	tick  int
	now   time.Time
	nodes map[string]*fakeNode
	order []string
	cmds  map[string]*fakeCmd

	// the runner's memory, lost in a crash
	drains  map[string]*runDrain
	audited uint64

	loaded Campaign // the persisted campaign
	pure   bool     // check each Step leaves its input alone

	// test hooks
	before     func(s *sim)                                 // each tick, before observing
	crash      func(s *sim, acts []Action) (crashMode, int) // each tick, after Step
	onAct      func(s *sim, a Action)                       // after each action
	check      func(s *sim)                                 // after each action
	creates    map[string]int                               // command creations by id
	taskRuns   map[string]int                               // task runs by node
	audits     map[uint64]int
	auditLog   []Audit  // each event once, as first written
	events     []string // "tick node what"
	crashes    int
	maxHeld    int
	maxPerRack map[string]int
}

func newSim(t *testing.T, n int, racks int) *sim {
	s := &sim{t: t, now: t0, nodes: map[string]*fakeNode{}, cmds: map[string]*fakeCmd{},
		drains: map[string]*runDrain{}, creates: map[string]int{}, taskRuns: map[string]int{},
		audits: map[uint64]int{}, maxPerRack: map[string]int{}, pure: n <= 10}
	for i := range n {
		// ids descend while names ascend: the order must follow names
		id := fmt.Sprintf("id-%03d", n-i)
		fn := &fakeNode{id: id, name: fmt.Sprintf("node-%03d", i), exists: true, ready: true,
			connected: true, bootID: id + "-boot0", gpus: 8, gpuHealthy: true, gpusAfter: -1,
			drainTicks: 2, taskTicks: 2, rebootTicks: 3}
		if racks > 0 { // racks in name order: node-000..node-009 in r00, ...
			fn.rack = fmt.Sprintf("r%02d", i*racks/n)
		}
		s.nodes[id] = fn
		s.order = append(s.order, id)
	}
	return s
}

func (s *sim) byName(name string) *fakeNode {
	for _, n := range s.nodes {
		if n.name == name {
			return n
		}
	}
	s.t.Fatalf("no node %s", name)
	return nil
}

func (s *sim) targets() []Target {
	var ts []Target
	for _, id := range s.order {
		n := s.nodes[id]
		ts = append(ts, Target{NodeID: n.id, K8sNode: n.name, Labels: map[string]string{"rack": n.rack, "pool": "gpu"}})
	}
	return ts
}

func (s *sim) start(spec Spec) Campaign {
	s.t.Helper()
	if spec.Selector == nil {
		spec.Selector = map[string]string{"pool": "gpu"}
	}
	c, err := New("c1", "test", spec, s.targets(), s.now)
	if err != nil {
		s.t.Fatalf("New: %v", err)
	}
	s.save(c)
	return c
}

// save persists c. Small sims write it through JSON every time; large ones
// keep it in memory and go through JSON when the runner restarts (crashed),
// which is when the stored bytes are all there is.
func (s *sim) save(c Campaign) {
	s.loaded = c
	if s.pure {
		s.roundTrip()
	}
}

// roundTrip replaces the persisted campaign by its JSON decoding, and
// checks nothing was lost on the way.
func (s *sim) roundTrip() {
	b, err := json.Marshal(s.loaded)
	if err != nil {
		s.t.Fatalf("marshal: %v", err)
	}
	var d Campaign
	if err := json.Unmarshal(b, &d); err != nil {
		s.t.Fatalf("unmarshal: %v", err)
	}
	if !reflect.DeepEqual(d, s.loaded) {
		s.t.Fatalf("tick %d: the campaign changed through JSON:\n%+v\n%+v", s.tick, s.loaded, d)
	}
	s.loaded = d
}

// load returns the persisted campaign (shared: callers change it only
// through edit).
func (s *sim) load() Campaign { return s.loaded }

// edit applies an operator change to the stored campaign.
func (s *sim) edit(f func(Campaign) (Campaign, error)) {
	s.t.Helper()
	c, err := f(s.load())
	if err != nil {
		s.t.Fatalf("edit: %v", err)
	}
	s.save(c)
}

func (s *sim) logf(format string, args ...any) {
	s.events = append(s.events, fmt.Sprintf("%d ", s.tick)+fmt.Sprintf(format, args...))
}

// world moves the agents and drains on by one tick.
func (s *sim) world() {
	for _, id := range s.order {
		n := s.nodes[id]
		if n.rebooting && !n.rebootNever && s.tick >= n.backAt {
			n.rebooting, n.connected, n.ready = false, true, true
			if !n.rebootSameBoot {
				n.boots++
				n.bootID = fmt.Sprintf("%s-boot%d", n.id, n.boots)
			}
			if n.gpusAfter >= 0 {
				n.gpus = n.gpusAfter
			}
		}
		if d := s.drains[id]; d != nil && d.state == DrainRunning && s.tick >= d.doneAt {
			if n.drainFails > 0 {
				n.drainFails--
				d.state, d.msg = DrainFailed, "evicting pod web-1: PodDisruptionBudget web allows no disruption"
			} else {
				d.state = DrainSucceeded
			}
		}
	}
	ids := make([]string, 0, len(s.cmds))
	for id := range s.cmds {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		c := s.cmds[id]
		n := s.nodes[c.node]
		switch c.state {
		case CommandPending:
			if !n.connected {
				continue
			}
			c.state = CommandDelivered
			if !n.unsched {
				s.t.Errorf("tick %d: %s %s delivered to %s while it is schedulable", s.tick, c.kind, c.id, n.name)
			}
			if c.kind == KindTask {
				s.taskRuns[c.node]++
				c.doneAt = s.tick + n.taskTicks
			} else {
				c.state = CommandSucceeded // systemctl reboot returned
				n.rebooting, n.connected, n.ready = true, false, false
				n.backAt = s.tick + n.rebootTicks
			}
		case CommandDelivered:
			if c.kind == KindTask && !n.taskHangs && s.tick >= c.doneAt {
				if n.taskExit != 0 {
					c.state, c.exit, c.msg = CommandFailed, n.taskExit, "driver install failed"
				} else {
					c.state, c.msg = CommandSucceeded, "ok"
				}
			}
		}
	}
}

func (s *sim) observe(c Campaign) Observations {
	obs := Observations{Now: s.now, AuditedThrough: s.audited, Nodes: map[string]NodeObservation{}}
	for _, w := range c.Watchlist() {
		n := s.nodes[w.NodeID]
		o := NodeObservation{K8sNodeExists: n.exists, K8sReady: n.ready, Unschedulable: n.unsched,
			AgentConnected: n.connected, BootID: n.bootID, GPUCount: n.gpus, GPUHealthy: n.gpuHealthy}
		if d := s.drains[w.NodeID]; d != nil {
			o.Drain = DrainObservation{Attempt: d.attempt, State: d.state, Message: d.msg}
		}
		for _, id := range w.CommandIDs {
			if cmd, ok := s.cmds[id]; ok {
				if o.Commands == nil {
					o.Commands = map[string]CommandObservation{}
				}
				o.Commands[id] = CommandObservation{State: cmd.state, ExitCode: cmd.exit, Message: cmd.msg}
			}
		}
		obs.Nodes[w.NodeID] = o
	}
	return obs
}

func (s *sim) act(a Action) {
	switch a := a.(type) {
	case Cordon:
		n := s.nodes[a.NodeID]
		if n.exists && !n.unsched {
			n.unsched = true
			s.logf("%s cordon", n.name)
		}
	case Uncordon:
		n := s.nodes[a.NodeID]
		delete(s.drains, a.NodeID) // an uncordon cancels the drain
		if n.exists && n.unsched {
			n.unsched = false
			s.logf("%s uncordon", n.name)
		}
	case Drain:
		n := s.nodes[a.NodeID]
		if d := s.drains[a.NodeID]; d != nil && d.attempt >= a.Attempt {
			return
		}
		s.drains[a.NodeID] = &runDrain{attempt: a.Attempt, state: DrainRunning, doneAt: s.tick + n.drainTicks}
		s.logf("%s drain %d", n.name, a.Attempt)
	case EnqueueCommand:
		if _, ok := s.cmds[a.ID]; ok {
			return // ErrAlreadyExists: done
		}
		n := s.nodes[a.NodeID]
		if !n.unsched {
			s.t.Errorf("tick %d: %s queued for %s while it is schedulable", s.tick, a.Kind, n.name)
		}
		s.creates[a.ID]++
		s.cmds[a.ID] = &fakeCmd{id: a.ID, node: a.NodeID, kind: a.Kind, state: CommandPending}
		s.logf("%s %s", n.name, a.Kind)
	case Audit:
		if s.audits[a.Seq] == 0 {
			s.auditLog = append(s.auditLog, a)
		}
		s.audits[a.Seq]++
		if a.Seq > s.audited {
			s.audited = a.Seq
		}
	default:
		s.t.Fatalf("unknown action %T", a)
	}
}

// held counts the cordoned nodes, overall and per rack, and records the
// maxima.
func (s *sim) held() (int, map[string]int) {
	total, per := 0, map[string]int{}
	for _, n := range s.nodes {
		if n.exists && n.unsched {
			total++
			per[n.rack]++
		}
	}
	if total > s.maxHeld {
		s.maxHeld = total
	}
	for r, k := range per {
		if k > s.maxPerRack[r] {
			s.maxPerRack[r] = k
		}
	}
	return total, per
}

// step runs one turn of the runner loop.
func (s *sim) step() Campaign {
	s.tick++
	s.now = s.now.Add(tick)
	s.world()
	if s.before != nil {
		s.before(s)
	}
	c := s.load()
	obs := s.observe(c)
	var snapshot []byte
	if s.pure {
		snapshot, _ = json.Marshal(c)
	}
	next, acts := Step(c, obs)
	if s.pure {
		if after, _ := json.Marshal(c); string(after) != string(snapshot) {
			s.t.Fatalf("tick %d: Step modified its input", s.tick)
		}
	}
	// No two actions of a step conflict on a node.
	touched := map[string]string{}
	for _, a := range acts {
		var node, kind string
		switch a := a.(type) {
		case Cordon:
			node, kind = a.NodeID, "cordon"
		case Uncordon:
			node, kind = a.NodeID, "uncordon"
		case Drain:
			node, kind = a.NodeID, "cordon" // a drain goes with the cordon
		}
		if node == "" {
			continue
		}
		if k, ok := touched[node]; ok && k != kind {
			s.t.Fatalf("tick %d: both %s and %s for %s: %v", s.tick, k, kind, node, acts)
		}
		touched[node] = kind
	}
	mode, keep := noCrash, len(acts)
	if s.crash != nil {
		mode, keep = s.crash(s, acts)
	}
	if mode == crashUnsaved {
		s.crashed()
		return s.load()
	}
	s.save(next)
	if mode == crashNoActs {
		keep = 0
	}
	for i, a := range acts {
		if mode != noCrash && i >= keep {
			break
		}
		s.act(a)
		s.held()
		if s.onAct != nil {
			s.onAct(s, a)
		}
		if s.check != nil {
			s.check(s)
		}
	}
	if mode != noCrash {
		s.crashed()
	}
	return s.load()
}

func (s *sim) crashed() {
	s.crashes++
	s.roundTrip()                     // the restarted runner reads the store
	s.drains = map[string]*runDrain{} // the runner's drains die with it
	s.audited = 0
}

// run steps until the campaign is Done or max ticks pass.
func (s *sim) run(max int) Campaign {
	s.t.Helper()
	c := s.load()
	for i := 0; i < max && !c.Settled(); i++ {
		c = s.step()
	}
	if !c.Settled() {
		s.t.Fatalf("campaign not done after %d ticks: %s\n%s", max, describe(c), strings.Join(s.tail(40), "\n"))
	}
	return c
}

func (s *sim) tail(n int) []string {
	if len(s.events) <= n {
		return s.events
	}
	return s.events[len(s.events)-n:]
}

func describe(c Campaign) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s (%s) failures %d waiting %q\n", c.State, c.StateReason, c.Failures, c.Waiting)
	for _, n := range c.Nodes {
		if n.Step != StepDone {
			fmt.Fprintf(&b, "  %s %s %s %s\n", n.K8sNode, n.Step, n.Result, n.Error)
		}
	}
	return b.String()
}

func (s *sim) cordoned() []string {
	var out []string
	for _, id := range s.order {
		if n := s.nodes[id]; n.exists && n.unsched {
			out = append(out, n.name)
		}
	}
	return out
}

func nodeNamed(t *testing.T, c Campaign, name string) NodeProgress {
	t.Helper()
	for _, n := range c.Nodes {
		if n.K8sNode == name {
			return n
		}
	}
	t.Fatalf("no node %s in the campaign", name)
	return NodeProgress{}
}

// finalChecks holds for every campaign: every audit event was written, no
// command was made twice, every task ran at most once, and nothing is
// cordoned but failed nodes left cordoned by the campaign.
func (s *sim) finalChecks(c Campaign) {
	s.t.Helper()
	for seq := uint64(1); seq <= c.AuditSeq; seq++ {
		if s.audits[seq] == 0 {
			s.t.Errorf("audit event %d never written", seq)
		}
	}
	for id, k := range s.creates {
		if k != 1 {
			s.t.Errorf("command %s made %d times", id, k)
		}
	}
	for id, k := range s.taskRuns {
		if k > 1 {
			s.t.Errorf("task ran %d times on %s", k, id)
		}
	}
	var want []string
	for _, n := range c.Nodes {
		if n.Step == StepFailed && n.CordonedByUs {
			want = append(want, n.K8sNode)
		}
	}
	sort.Strings(want)
	if got := s.cordoned(); strings.Join(got, ",") != strings.Join(want, ",") {
		s.t.Errorf("cordoned at the end: %v; want the failed nodes left cordoned: %v", got, want)
	}
}
