// Package sshenroll enrolls an existing host into the fleet over SSH: it
// uploads the agent binary, installs the systemd unit, runs `bud-agent
// join` with a single-use token and starts the agent; and it takes all of
// that off the host again.
//
// Trust runs one way, as an operator's ssh would: the host's key must be
// in the known_hosts file the enroller was given (the host's own name and
// port, [host]:port for a port other than 22), and a host whose key is
// missing or different is refused during the key exchange, before the
// user authenticates or anything is sent. The join token travels on the
// join command's standard input, never on a command line (which other
// users of the host can read in /proc) and never in a file.
//
// What lands on the host, under its install root (/ unless the host var
// budfleet_install_root says otherwise, which lets tests run several
// "hosts" on one machine):
//
//	usr/bin/bud-agent                      the agent binary
//	etc/systemd/system/bud-agent.service   the unit, paths under the root
//	etc/budfleet/agent.yaml                an empty agent config, if none is there
//	var/lib/bud-agent/                     the agent's state (join writes it)
//	var/lib/bud-agent/enrollment           what `bud-agent status` said after the join
//
// With systemd as PID 1 and the root at /, the agent runs as the unit
// (systemctl enable --now). Elsewhere (containers, the test namespaces,
// an install root) there is no systemd to start it, so the enroller starts
// `bud-agent run` itself, detached, logging to var/log/bud-agent.log, its
// pid in run/bud-agent.pid.
//
// Enrolling is idempotent: a host whose state holds an enrollment is left
// alone (its agent is started if it is not running), so a retried
// CreateMachine never enrolls a node twice. A join the controller refuses
// (a used or expired token) takes the files it installed off again. An
// agent that joined but does not stay up is left in place with its log,
// for the operator to read.
package sshenroll

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bud-ecosystem/budfleet/packaging/systemd"
)

// Errors callers tell apart.
var (
	// ErrHostKey: the host's key is not the one known_hosts pins (or the
	// host is not in it). Nothing was sent to the host.
	ErrHostKey = errors.New("host key not trusted")
	// ErrEnrolledElsewhere: the host's agent is enrolled with another
	// controller; it is left alone.
	ErrEnrolledElsewhere = errors.New("host enrolled with another controller")
)

// Target is the host to act on.
type Target struct {
	// Name is the inventory name, also the hostname the node enrolls as.
	Name string
	// Address, Port and User are ansible_host, ansible_port, ansible_user.
	Address string
	Port    int
	User    string
	// Become runs the remote commands through `sudo -n` (ansible_become).
	Become bool
	// InstallRoot is where the agent's files go; "" means /.
	InstallRoot string
	// KeyFile is a private key for this host alone
	// (ansible_ssh_private_key_file), tried before the enroller's.
	KeyFile string
}

func (t Target) addr() string { return net.JoinHostPort(t.Address, strconv.Itoa(t.port())) }

func (t Target) port() int {
	if t.Port == 0 {
		return 22
	}
	return t.Port
}

func (t Target) root() string {
	if t.InstallRoot == "" {
		return "/"
	}
	return path.Clean(t.InstallRoot)
}

// Options configure an Enroller.
type Options struct {
	// KnownHostsFile pins the hosts' keys (OpenSSH's format). Required.
	KnownHostsFile string
	// KeyFile is an unencrypted private key in OpenSSH or PEM form. With
	// AgentSocket (SSH_AUTH_SOCK) the agent's keys are tried too; one of
	// them is required.
	KeyFile     string
	AgentSocket string
	// AgentBinary is the bud-agent binary to upload (a path on this
	// machine). Required for Enroll.
	AgentBinary string
	// DialTimeout bounds the TCP connect and SSH handshake (10 s).
	DialTimeout time.Duration
	// StartCheck is how long a started agent must stay up to count as
	// started (1 s).
	StartCheck time.Duration
	Log        *slog.Logger
}

// Enroller enrolls hosts over SSH. It is safe for concurrent use.
type Enroller struct {
	opts     Options
	hostKeys ssh.HostKeyCallback
	auth     []ssh.AuthMethod
	agentBin []byte
	agentSum string
}

// New checks the options and reads the known_hosts file, the key and the
// agent binary once, so a bad path is an error now rather than at the
// first enrollment.
func New(opts Options) (*Enroller, error) {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.StartCheck <= 0 {
		opts.StartCheck = time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.KnownHostsFile == "" {
		return nil, errors.New("known_hosts is required: the hosts' keys are pinned from it (ssh-keyscan HOST >> FILE, then check the keys)")
	}
	cb, err := knownhosts.New(opts.KnownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("known_hosts %s: %w", opts.KnownHostsFile, err)
	}
	e := &Enroller{opts: opts, hostKeys: cb}
	if opts.KeyFile != "" {
		signer, err := readKey(opts.KeyFile)
		if err != nil {
			return nil, err
		}
		e.auth = append(e.auth, ssh.PublicKeys(signer))
	}
	if len(e.auth) == 0 && opts.AgentSocket == "" {
		return nil, errors.New("no SSH credentials: set ssh_key_file, or run with SSH_AUTH_SOCK pointing at an ssh-agent that holds the key")
	}
	if opts.AgentBinary != "" {
		b, err := os.ReadFile(opts.AgentBinary)
		if err != nil {
			return nil, fmt.Errorf("agent_package: %w", err)
		}
		if !bytes.HasPrefix(b, []byte("\x7fELF")) {
			return nil, fmt.Errorf("agent_package %s is not an ELF binary: give the bud-agent binary for the hosts' architecture", opts.AgentBinary)
		}
		sum := sha256.Sum256(b)
		e.agentBin, e.agentSum = b, hex.EncodeToString(sum[:])
	}
	return e, nil
}

func readKey(file string) (ssh.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ssh_key_file: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	var pp *ssh.PassphraseMissingError
	if errors.As(err, &pp) {
		return nil, fmt.Errorf("ssh_key_file %s is encrypted with a passphrase: load it into an ssh-agent (ssh-add) and give the controller SSH_AUTH_SOCK instead", file)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh_key_file %s: %w", file, err)
	}
	return signer, nil
}

// Result is the outcome of Enroll.
type Result struct {
	// NodeID is the node the host's agent enrolled as ("" when the host
	// was enrolled by hand and its agent holds its state, so it cannot be
	// read).
	NodeID string
	// Already: the host was enrolled before; nothing was installed.
	Already bool
}

// Bootstrap is what the join needs.
type Bootstrap struct {
	Controller string // host:port the agent dials
	Token      string // single use
	// AgentPath, when set, is a bud-agent binary already on the host to
	// install instead of uploading Options.AgentBinary.
	AgentPath string
}

// Enroll enrolls t with the controller in b (see the package
// documentation).
func (e *Enroller) Enroll(ctx context.Context, t Target, b Bootstrap) (Result, error) {
	if b.Controller == "" || b.Token == "" {
		return Result{}, errors.New("enroll: the bootstrap needs the controller address and a join token")
	}
	if e.agentBin == nil && b.AgentPath == "" {
		return Result{}, errors.New("enroll: no agent to install: set agent_package in the provider config")
	}
	c, err := e.dial(ctx, t)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	p := paths(t)
	log := e.opts.Log.With("host", t.Name, "address", t.addr())

	st, err := e.probe(ctx, c, t, p)
	if err != nil {
		return Result{}, err
	}
	if st.enrolled {
		if st.controller != "" && st.controller != b.Controller {
			return Result{}, fmt.Errorf("host %s: %w (%s, not %s): delete the machine first, or leave the host alone", t.Name, ErrEnrolledElsewhere, st.controller, b.Controller)
		}
		if !st.running {
			if err := e.start(ctx, c, t, p); err != nil {
				return Result{}, err
			}
		}
		log.InfoContext(ctx, "host already enrolled; left alone", "node_id", st.nodeID, "was_running", st.running)
		return Result{NodeID: st.nodeID, Already: true}, nil
	}

	// Three SSH sessions in all (the probe, the upload, the rest): each
	// costs the host a login shell, which on hosts with a heavy profile
	// is most of an enrollment's time.
	install := ""
	if b.AgentPath != "" {
		install = fmt.Sprintf("mkdir -p %s && cp %s %s.tmp && chmod 0755 %s.tmp && mv -f %s.tmp %s || fail %s\n",
			q(path.Dir(p.bin)), q(b.AgentPath), q(p.bin), q(p.bin), q(p.bin), q(p.bin), q("install "+b.AgentPath+" as the agent"))
	} else if err := e.upload(ctx, c, t, p); err != nil {
		return Result{}, err
	}
	script := e.agentFuncs(p) + "\n" + install + e.installScript(p) + fmt.Sprintf(`%s join --state-dir %s --controller %s --hostname %s --token-file /dev/stdin >&2 || { undo; fail 'bud-agent join'; }
%s status --state-dir %s > %s.tmp && mv -f %s.tmp %s || fail 'bud-agent status after the join'
`, q(p.bin), q(p.state), q(b.Controller), q(t.Name), q(p.bin), q(p.state), q(p.enrollment), q(p.enrollment), q(p.enrollment)) +
		e.startScript(p) + fmt.Sprintf("cat %s\n", q(p.enrollment))
	out, err := e.run(ctx, c, t, script, strings.NewReader(b.Token+"\n"))
	if err != nil {
		return Result{}, fmt.Errorf("host %s: %w", t.Name, err)
	}
	nodeID := statusField(out, "node_id")
	log.InfoContext(ctx, "host enrolled", "node_id", nodeID)
	return Result{NodeID: nodeID}, nil
}

// Status reports whether t is enrolled and its agent runs.
func (e *Enroller) Status(ctx context.Context, t Target) (enrolled, running bool, nodeID string, err error) {
	c, err := e.dial(ctx, t)
	if err != nil {
		return false, false, "", err
	}
	defer c.Close()
	st, err := e.probe(ctx, c, t, paths(t))
	return st.enrolled, st.running, st.nodeID, err
}

// Remove stops the agent and takes its files off t: the binary, the unit,
// the state (the node's key and certificate), the log and pid file, and
// the agent config when it is still the empty one Enroll wrote. A host
// with nothing on it is not an error.
func (e *Enroller) Remove(ctx context.Context, t Target) error {
	c, err := e.dial(ctx, t)
	if err != nil {
		return err
	}
	defer c.Close()
	p := paths(t)
	script := fmt.Sprintf(`%s
if [ %s = / ] && [ -d /run/systemd/system ] && [ -e %s ]; then
	systemctl disable --now bud-agent.service >/dev/null 2>&1 || true
fi
stop_agent
rm -f %s %s %s %s %s
rm -rf %s
if [ -f %s ] && [ "$(cat %s)" = %s ]; then rm -f %s; fi
if [ %s = / ] && [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
`, e.agentFuncs(p), q(p.root), q(p.unit),
		q(p.bin), q(p.unit), q(p.log), q(p.pid), q(p.bin+".tmp"),
		q(p.state),
		q(p.config), q(p.config), q(strings.TrimSuffix(configMarker, "\n")), q(p.config),
		q(p.root))
	if _, err := e.run(ctx, c, t, script, nil); err != nil {
		return fmt.Errorf("host %s: remove the agent: %w", t.Name, err)
	}
	e.opts.Log.InfoContext(ctx, "agent removed", "host", t.Name)
	return nil
}

// remotePaths are the agent's files on a host.
type remotePaths struct {
	root, bin, unit, config, state, enrollment, log, pid string
}

func paths(t Target) remotePaths {
	r := t.root()
	j := func(p string) string { return path.Join(r, p) }
	return remotePaths{
		root:       r,
		bin:        j("usr/bin/bud-agent"),
		unit:       j("etc/systemd/system/bud-agent.service"),
		config:     j("etc/budfleet/agent.yaml"),
		state:      j("var/lib/bud-agent"),
		enrollment: j("var/lib/bud-agent/enrollment"),
		log:        j("var/log/bud-agent.log"),
		pid:        j("run/bud-agent.pid"),
	}
}

// configMarker is the agent config Enroll writes when the host has none;
// Remove deletes the file only while it still reads exactly this.
const configMarker = "# written by bud-provider-baremetal: the agent's defaults; edit freely\n"

type hostState struct {
	enrolled, running  bool
	nodeID, controller string
}

// agentFuncs defines shell functions the scripts share: agent_pid prints
// the pid of the agent this enroller started (checking that the pid is
// still that binary, not a process that reused the number), stop_agent
// stops it (SIGTERM, SIGKILL after 30 s).
func (e *Enroller) agentFuncs(p remotePaths) string {
	return fmt.Sprintf(`fail() { echo "$1 failed" >&2; exit 1; }
agent_pid() {
	[ -f %[1]s ] || return 1
	p=$(cat %[1]s)
	case $p in ''|*[!0-9]*) return 1 ;; esac
	[ -r /proc/$p/cmdline ] || return 1
	tr '\0' '\n' < /proc/$p/cmdline | head -n 1 | grep -qxF %[2]s || return 1
	echo "$p"
}
# stop_agent waits on agent_pid, not kill -0: an agent that exited may stay
# a zombie (its parent, init, reaps it when it gets to it), and a zombie
# has no cmdline.
stop_agent() {
	pid=$(agent_pid) || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	i=0
	while agent_pid >/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
	if agent_pid >/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
}
# undo takes off what a join that failed leaves (the host was not
# enrolled before, so none of it is anyone else's).
undo() {
	rm -f %[2]s %[4]s
	rm -rf %[5]s
	if [ -f %[6]s ] && [ "$(cat %[6]s)" = %[7]s ]; then rm -f %[6]s; fi
}
agent_running() {
	if [ %[3]s = / ] && [ -d /run/systemd/system ]; then
		systemctl is-active --quiet bud-agent.service && return 0
	fi
	agent_pid >/dev/null
}`, q(p.pid), q(p.bin), q(p.root), q(p.unit), q(p.state), q(p.config), q(strings.TrimSuffix(configMarker, "\n")))
}

// probe reads the host's enrollment without changing anything.
func (e *Enroller) probe(ctx context.Context, c *ssh.Client, t Target, p remotePaths) (hostState, error) {
	script := fmt.Sprintf(`%s
if agent_running; then echo running=yes; else echo running=no; fi
if [ -f %s ]; then echo enrolled=yes; cat %s; exit 0; fi
if [ -f %s/agent.db ] && [ -x %s ]; then
	if out=$(%s status --state-dir %s 2>/dev/null); then echo enrolled=yes; echo "$out"; exit 0; fi
	# A running agent holds its state locked, so status cannot read it:
	# the agent runs, so the host is enrolled.
	if agent_running; then echo enrolled=yes; exit 0; fi
fi
echo enrolled=no
`, e.agentFuncs(p), q(p.enrollment), q(p.enrollment), q(p.state), q(p.bin), q(p.bin), q(p.state))
	out, err := e.run(ctx, c, t, script, nil)
	if err != nil {
		return hostState{}, fmt.Errorf("host %s: read its enrollment: %w", t.Name, err)
	}
	return hostState{
		enrolled:   statusField(out, "enrolled") == "yes",
		running:    statusField(out, "running") == "yes",
		nodeID:     statusField(out, "node_id"),
		controller: statusField(out, "controller"),
	}, nil
}

// upload copies the agent binary to the host, checks its SHA-256 there
// and renames it into place, so a cut connection or a damaged copy never
// leaves half a binary where the unit points.
func (e *Enroller) upload(ctx context.Context, c *ssh.Client, t Target, p remotePaths) error {
	tmp := p.bin + ".tmp"
	script := fmt.Sprintf(`umask 022
mkdir -p %[1]s || exit 1
cat > %[2]s || exit 1
sum=$(sha256sum %[2]s | cut -d' ' -f1)
if [ "$sum" != %[3]s ]; then rm -f %[2]s; echo "the uploaded agent's SHA-256 is $sum, not %[3]s: the copy was damaged; try again" >&2; exit 1; fi
chmod 0755 %[2]s && mv -f %[2]s %[4]s
`, q(path.Dir(p.bin)), q(tmp), e.agentSum, q(p.bin))
	if _, err := e.run(ctx, c, t, script, bytes.NewReader(e.agentBin)); err != nil {
		return fmt.Errorf("host %s: upload the agent: %w", t.Name, err)
	}
	return nil
}

// installScript writes the unit (paths moved under the install root) and
// an empty agent config when there is none.
func (e *Enroller) installScript(p remotePaths) string {
	unit := string(systemd.AgentUnit)
	if p.root != "/" {
		unit = strings.NewReplacer(
			"/usr/bin/bud-agent", p.bin,
			"/var/lib/bud-agent", p.state,
			"/etc/budfleet/agent.yaml", p.config,
		).Replace(unit)
	}
	if !strings.HasSuffix(unit, "\n") {
		unit += "\n"
	}
	return fmt.Sprintf(`umask 022
mkdir -p %s %s || fail 'make the unit and config directories'
cat > %s.tmp <<'BUDFLEET_UNIT_EOF' || fail 'write the unit'
%sBUDFLEET_UNIT_EOF
mv -f %s.tmp %s || fail 'install the unit'
if [ ! -e %s ]; then printf '%%s\n' %s > %s || fail 'write the agent config'; fi
`, q(path.Dir(p.unit)), q(path.Dir(p.config)),
		q(p.unit), unit, q(p.unit), q(p.unit),
		q(p.config), q(strings.TrimSuffix(configMarker, "\n")), q(p.config))
}

// start starts the agent of an enrolled host (see startScript).
func (e *Enroller) start(ctx context.Context, c *ssh.Client, t Target, p remotePaths) error {
	if _, err := e.run(ctx, c, t, e.agentFuncs(p)+"\n"+e.startScript(p), nil); err != nil {
		return fmt.Errorf("host %s: %w", t.Name, err)
	}
	return nil
}

// startScript starts the agent: through systemd where systemd runs and
// the root is /, else detached with a pid file. It checks the agent is
// still up after StartCheck, so an agent that dies at once (a bad config,
// a wrong architecture) is an error here, with the end of its log.
func (e *Enroller) startScript(p remotePaths) string {
	wait := strconv.FormatFloat(e.opts.StartCheck.Seconds(), 'f', 1, 64)
	return fmt.Sprintf(`if [ %[1]s = / ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload && systemctl enable --now bud-agent.service >&2 || fail 'systemctl enable --now bud-agent.service'
	sleep %[2]s
	if ! systemctl is-active --quiet bud-agent.service; then
		journalctl -u bud-agent.service -n 20 --no-pager >&2 || true
		fail 'start the agent (the unit is not active)'
	fi
elif ! agent_pid >/dev/null; then
	mkdir -p %[3]s %[4]s || fail 'make the log and pid directories'
	setsid %[5]s run --state-dir %[6]s --config %[7]s </dev/null >>%[8]s 2>&1 &
	echo $! > %[9]s
	sleep %[2]s
	if ! agent_pid >/dev/null; then
		echo "the end of %[8]s:" >&2
		tail -n 20 %[8]s >&2
		fail 'start the agent (bud-agent exited at once)'
	fi
fi
`, q(p.root), wait, q(path.Dir(p.log)), q(path.Dir(p.pid)),
		q(p.bin), q(p.state), q(p.config), q(p.log), q(p.pid))
}

// statusField reads "key: value" or "key=value" lines.
func statusField(out, key string) string {
	for _, line := range strings.Split(out, "\n") {
		for _, sep := range []string{": ", "="} {
			if v, ok := strings.CutPrefix(line, key+sep); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return ""
}

// dial connects to t and authenticates, checking its host key against
// known_hosts during the key exchange.
func (e *Enroller) dial(ctx context.Context, t Target) (*ssh.Client, error) {
	auth := e.auth
	if t.KeyFile != "" {
		signer, err := readKey(t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("host %s: ansible_ssh_private_key_file: %w", t.Name, err)
		}
		auth = append([]ssh.AuthMethod{ssh.PublicKeys(signer)}, auth...)
	}
	if e.opts.AgentSocket != "" {
		// One agent connection per dial, closed once the handshake has
		// signed with it.
		ac, err := net.Dial("unix", e.opts.AgentSocket)
		switch {
		case err == nil:
			defer ac.Close()
			auth = append(auth, ssh.PublicKeysCallback(agent.NewClient(ac).Signers))
		case len(auth) == 0:
			return nil, fmt.Errorf("host %s: no SSH key: ssh_key_file is not set and the ssh-agent at %s (SSH_AUTH_SOCK) cannot be reached: %w", t.Name, e.opts.AgentSocket, err)
		default:
			// A key file is there: an agent that is gone costs nothing.
			e.opts.Log.DebugContext(ctx, "ssh-agent not reachable; using ssh_key_file alone", "socket", e.opts.AgentSocket, "error", err)
		}
	}
	addr := t.addr()
	cfg := &ssh.ClientConfig{
		User: t.User,
		Auth: auth,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := e.hostKeys(hostname, remote, key)
			var ke *knownhosts.KeyError
			if errors.As(err, &ke) {
				fp := ssh.FingerprintSHA256(key)
				if len(ke.Want) == 0 {
					return fmt.Errorf("%w: %s (%s) is not in known_hosts %s; its %s key is %s: check it on the host's console, then add it (ssh-keyscan -p %d %s)",
						ErrHostKey, t.Name, addr, e.opts.KnownHostsFile, key.Type(), fp, t.port(), t.Address)
				}
				w := ke.Want[0]
				return fmt.Errorf("%w: %s (%s) offered %s key %s, but known_hosts %s line %d pins %s: the host was reinstalled or someone is in between; check the key on the host's console before you change the file",
					ErrHostKey, t.Name, addr, key.Type(), fp, w.Filename, w.Line, ssh.FingerprintSHA256(w.Key))
			}
			if err != nil {
				return fmt.Errorf("%w: %s (%s): %v", ErrHostKey, t.Name, addr, err)
			}
			return nil
		},
		// Only the key types known_hosts holds for this host are
		// negotiated: otherwise a host offering ed25519 first while the
		// file pins its ECDSA key would look like a changed key.
		HostKeyAlgorithms: e.pinnedAlgorithms(addr),
		Timeout:           e.opts.DialTimeout,
	}
	d := net.Dialer{Timeout: e.opts.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("host %s: connect to %s: %w", t.Name, addr, err)
	}
	deadline := time.Now().Add(e.opts.DialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		if errors.Is(err, ErrHostKey) {
			return nil, err
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("host %s: SSH login as %s at %s refused: put the provider's public key in that user's authorized_keys (or set ansible_user): %w", t.Name, t.User, addr, err)
		}
		return nil, fmt.Errorf("host %s: SSH handshake with %s: %w", t.Name, addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// pinnedAlgorithms returns the host key algorithms known_hosts holds for
// addr, nil (the library's defaults) when it holds none.
func (e *Enroller) pinnedAlgorithms(addr string) []string {
	// Asking about a key nobody has yields a KeyError listing the pinned
	// keys for the address.
	probe := probeKey{}
	err := e.hostKeys(knownhosts.Normalize(addr), &net.TCPAddr{IP: net.IPv4zero}, probe)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			algos = append(algos, a)
		}
	}
	for _, w := range ke.Want {
		switch w.Key.Type() {
		case ssh.KeyAlgoRSA:
			// An RSA key signs with SHA-2 today; ssh-rsa (SHA-1) last.
			add(ssh.KeyAlgoRSASHA512)
			add(ssh.KeyAlgoRSASHA256)
			add(ssh.KeyAlgoRSA)
		default:
			add(w.Key.Type())
		}
	}
	return algos
}

// probeKey is a public key no host has.
type probeKey struct{}

func (probeKey) Type() string                        { return "budfleet-probe" }
func (probeKey) Marshal() []byte                     { return []byte("budfleet-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key") }

// run runs script with sh on the host (through sudo -n when t.Become),
// stdin as its input, and returns its stdout. A non-zero exit is an error
// carrying the end of stderr. ctx ending closes the session.
func (e *Enroller) run(ctx context.Context, c *ssh.Client, t Target, script string, stdin io.Reader) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", fmt.Errorf("open an SSH session: %w", err)
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != nil {
		s.Stdin = stdin
	}
	cmd := "sh -c " + q(script)
	if t.Become {
		cmd = "sudo -n " + cmd
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return "", ctx.Err()
	}
	if err != nil {
		var ee *ssh.ExitError
		msg := strings.TrimSpace(tail(stderr.String(), 2000))
		if errors.As(err, &ee) {
			if t.Become && strings.Contains(msg, "sudo:") {
				return "", fmt.Errorf("sudo -n as %s failed (ansible_become needs passwordless sudo for the provider): %s", t.User, msg)
			}
			return "", fmt.Errorf("exit status %d: %s", ee.ExitStatus(), msg)
		}
		return "", fmt.Errorf("%w: %s", err, msg)
	}
	return stdout.String(), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

var safeShellRe = regexp.MustCompile(`^[A-Za-z0-9_./:@%+=,-]+$`)

// q quotes s for sh.
func q(s string) string {
	if safeShellRe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
