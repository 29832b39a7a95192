// Package syslog sends events as RFC 5424 syslog messages over TLS with RFC
// 5425 octet-counting framing ("MSG-LEN SP SYSLOG-MSG"), the transport
// rsyslog (imtcp with a TLS stream driver), syslog-ng and most SIEMs accept
// on port 6514. See Formatter for how an event becomes a message.
//
// # What plain TLS syslog guarantees
//
// Syslog has no acknowledgements. Send returns nil when every frame of the
// batch has been written and flushed to the TLS connection, that is, handed
// to this host's kernel. That is weaker than "the SIEM has it": a write
// that completed can still be lost when the connection breaks before the
// receiver read it (the receiver crashes or restarts, a middlebox drops the
// connection, the host loses its network), and nothing tells the sender.
// How much can be lost is bounded by what sits in the socket buffers and
// on the path (up to a few MiB), not by the batch size.
//
// The Client narrows that window, but does not close it:
//
//   - it flushes per batch, so a batch is never reported sent while part of
//     it still sits in the client's own buffer;
//   - a background reader notices when the server closes the connection
//     (receiver restart, or rejecting our certificate after the TLS
//     handshake, as rsyslog does) and Send then fails the batch, or
//     reconnects before the next batch instead of writing into a dead
//     connection; after a new connection is made it waits Config.Settle
//     (default 250 ms) for such a rejection before sending anything;
//   - Close sends close_notify (CloseWrite) and waits for the receiver to
//     close its side, which it does only after reading everything before it;
//   - with Config.ConfirmEachBatch every batch is confirmed that way: after
//     the flush the Client closes its side and waits for the receiver's
//     close, so a nil Send means the receiver's input has read the whole
//     batch. It costs one TLS handshake per batch.
//
// Even a confirmed batch can be lost inside the receiver (rsyslog's
// in-memory queues are lost when it is killed). Where the SIEM speaks RELP,
// the relp output (an acknowledgement per message) is the one to use for
// at-least-once delivery.
package syslog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
)

// Defaults for the zero values of Config.
const (
	DefaultAppName      = "budfleet-agent"
	DefaultDialTimeout  = 10 * time.Second
	DefaultSettle       = 250 * time.Millisecond
	DefaultWriteTimeout = 30 * time.Second
	DefaultCloseTimeout = 5 * time.Second
	// BufferSize is about how much a Send writes to the connection at a
	// time.
	BufferSize = 1 << 20
)

// Config configures a Client. Addr and TLS are required.
type Config struct {
	// Addr is the receiver's host:port.
	Addr string
	// TLS is the client configuration, from output.TLSConfig.Load.
	TLS *tls.Config
	// Format formats the messages. An empty Hostname means os.Hostname(),
	// an empty AppName DefaultAppName.
	Format Formatter
	// DialTimeout bounds connecting and the TLS handshake (default 10s).
	DialTimeout time.Duration
	// Settle is how long a new connection is watched for the server
	// closing it (how rsyslog rejects a client certificate) before the
	// first batch is written (default 250ms; negative: do not wait).
	Settle time.Duration
	// WriteTimeout fails a Send when a write makes no progress for this
	// long (default 30s).
	WriteTimeout time.Duration
	// ConfirmEachBatch closes the connection after each batch and waits
	// for the receiver to close its side; see the package documentation.
	ConfirmEachBatch bool
	// CloseTimeout bounds waiting for the receiver's close (default 5s).
	CloseTimeout time.Duration
}

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("syslog: client closed")

// ErrPeerClosed is wrapped by the error of a Send that found the
// connection closed by the receiver after writing the batch.
var ErrPeerClosed = errors.New("syslog: receiver closed the connection")

// Client sends batches to one receiver. It is safe for concurrent use;
// Sends are serialized, and Close waits for a Send in progress.
type Client struct {
	cfg Config

	mu      sync.Mutex
	closed  bool
	conn    *output.Conn
	dw      *output.DeadlineWriter
	rd      *reader
	sentAny bool   // a batch went through on conn
	buf     []byte // the frames being written
	digits  int    // of the last frame's LEN
}

var _ output.Output = (*Client)(nil)

// New checks cfg and returns a Client; it connects on the first Send.
func New(cfg Config) (*Client, error) {
	if err := CheckEndpoint("syslog", cfg.Addr, cfg.TLS); err != nil {
		return nil, err
	}
	var err error
	if cfg.Format, err = cfg.Format.WithDefaults(); err != nil {
		return nil, fmt.Errorf("syslog: %w", err)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	return &Client{cfg: cfg}, nil
}

// reader drains the connection (a syslog receiver sends nothing) so that
// the Client learns when the receiver closes it.
type reader struct {
	done chan struct{}
	err  error // io.EOF for an orderly close
}

func startReader(c net.Conn) *reader {
	r := &reader{done: make(chan struct{})}
	go func() {
		_, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		r.err = err
		close(r.done)
	}()
	return r
}

func (r *reader) dead() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Send writes every event of batch and flushes; see the package
// documentation for what a nil error means.
func (c *Client) Send(ctx context.Context, batch []siem.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if len(batch) == 0 {
		return nil
	}
	if c.conn != nil && c.rd.dead() {
		c.dropLocked() // the receiver went away since the last batch
	}
	if c.conn == nil {
		if err := c.connectLocked(ctx); err != nil {
			return err
		}
	}
	conn := c.conn
	c.dw.Ctx = ctx
	stop := context.AfterFunc(ctx, func() { conn.SetWriteDeadline(output.LongAgo) })
	err := c.writeLocked(batch)
	if !stop() && err == nil {
		// ctx ended after the flush: the batch was written, but the
		// connection's deadline is spoiled.
		c.dropLocked()
		return nil
	}
	if err != nil {
		return c.failLocked(ctx, err)
	}
	if c.rd.dead() {
		return c.failLocked(ctx, fmt.Errorf("%w after the batch was written", ErrPeerClosed))
	}
	if c.cfg.ConfirmEachBatch {
		if err := c.confirmCloseLocked(ctx); err != nil {
			return c.failLocked(ctx, err)
		}
		c.dropLocked()
		return nil
	}
	c.sentAny = true
	return nil
}

// writeLocked formats the batch's frames ("LEN SP MSG") straight into
// c.buf and writes it in pieces of about BufferSize: formatting each
// message apart and copying it into a bufio.Writer was a tenth of the
// forwarder's CPU.
func (c *Client) writeLocked(batch []siem.Event) error {
	out := c.buf[:0]
	for i := range batch {
		out = c.cfg.Format.appendFrame(out, batch[i], &c.digits)
		if len(out) >= BufferSize {
			if err := c.writeOut(out); err != nil {
				return err
			}
			out = out[:0]
		}
	}
	c.buf = out[:0]
	if len(out) > 0 {
		return c.writeOut(out)
	}
	return nil
}

// writeOut writes b to the connection.
func (c *Client) writeOut(b []byte) error {
	_, err := c.dw.Write(b)
	return err
}

// appendFrame appends ev's frame, "LEN SP MSG", to out. LEN is not known
// before the message is formatted: as many digits as *digits says (the
// last frame's) are reserved, and the message is moved only when that was
// wrong.
func (f *Formatter) appendFrame(out []byte, ev siem.Event, digits *int) []byte {
	d := *digits
	if d <= 0 {
		d = 3
	}
	start := len(out)
	out = append(out, "0000000000"[:d]...)
	out = append(out, ' ')
	out = f.Append(out, ev)
	n := len(out) - start - d - 1
	if nd := decimalDigits(n); nd != d {
		msg := start + d + 1
		if nd > d {
			out = append(out, "0000000000"[:nd-d]...)
		}
		copy(out[msg+nd-d:], out[msg:msg+n])
		out = out[:start+nd+1+n]
		d = nd
	}
	strconv.AppendInt(out[start:start], int64(n), 10)
	out[start+d] = ' '
	*digits = d
	return out
}

func decimalDigits(n int) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// failLocked closes the connection and returns err with the best
// explanation at hand: the reader's error (an alert, a reset) is more
// telling than "broken pipe", and a failure before any batch went through
// is likely the server rejecting us after the handshake.
func (c *Client) failLocked(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		if !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%v)", ctxErr, err)
		}
	} else {
		if !errors.Is(err, ErrPeerClosed) {
			// Give the reader a moment to report why the write failed.
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-c.rd.done:
			case <-t.C:
			}
			t.Stop()
		}
		if c.rd.dead() && c.rd.err != io.EOF {
			err = fmt.Errorf("%w (receiver side: %w)", err, c.rd.err)
		} else if c.rd.dead() && !errors.Is(err, ErrPeerClosed) {
			err = fmt.Errorf("%w (%w)", err, ErrPeerClosed)
		}
	}
	// A TLS alert before any batch went through is the server refusing
	// us (TLS 1.3 servers check the client certificate after the client's
	// handshake is done).
	conn, alert := c.conn, !c.sentAny && c.rd.dead() && isRemoteAlert(c.rd.err)
	c.dropLocked()
	if alert {
		err = conn.PostHandshakeError(err)
	}
	return fmt.Errorf("syslog: send to %s: %w", c.cfg.Addr, err)
}

func isRemoteAlert(err error) bool {
	return err != nil && strings.Contains(err.Error(), "remote error: tls: ")
}

func (c *Client) connectLocked(ctx context.Context) error {
	conn, err := output.Dial(ctx, c.cfg.Addr, c.cfg.TLS, c.cfg.DialTimeout)
	if err != nil {
		return fmt.Errorf("syslog: %w", err)
	}
	rd := startReader(conn)
	if c.cfg.Settle > 0 {
		t := time.NewTimer(c.cfg.Settle)
		defer t.Stop()
		select {
		case <-rd.done:
			conn.NetConn().Close()
			return fmt.Errorf("syslog: %w", conn.PostHandshakeError(rd.err))
		case <-ctx.Done():
			conn.NetConn().Close()
			<-rd.done
			return fmt.Errorf("syslog: connect to %s: %w", c.cfg.Addr, ctx.Err())
		case <-t.C:
		}
	}
	c.conn, c.rd, c.sentAny = conn, rd, false
	c.dw = &output.DeadlineWriter{Conn: conn, Timeout: c.cfg.WriteTimeout, Ctx: ctx}
	return nil
}

// confirmCloseLocked sends close_notify and waits for the receiver to close
// its side, which it does after reading everything we sent.
func (c *Client) confirmCloseLocked(ctx context.Context) error {
	if err := c.conn.CloseWrite(); err != nil {
		return err
	}
	t := time.NewTimer(c.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-c.rd.done:
		if c.rd.err != io.EOF {
			return fmt.Errorf("waiting for the receiver to close: %w", c.rd.err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("receiver did not close the connection within %v of ours", c.cfg.CloseTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) dropLocked() {
	if c.conn == nil {
		return
	}
	// Close the TCP connection under TLS: tls.Conn.Close would first try
	// to send close_notify, which blocks for up to 5s on a stuck peer.
	c.conn.NetConn().Close()
	<-c.rd.done
	c.conn, c.rd, c.dw, c.sentAny = nil, nil, nil, false
}

// Close closes the connection the orderly way (CloseWrite, then waiting up
// to Config.CloseTimeout for the receiver to close) and makes later Sends
// fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.conn == nil {
		return nil
	}
	err := c.confirmCloseLocked(context.Background())
	c.dropLocked()
	if err != nil {
		return fmt.Errorf("syslog: close: %w", err)
	}
	return nil
}

// CheckEndpoint checks what every TLS output needs: a host:port address and
// a TLS configuration. proto prefixes the errors.
func CheckEndpoint(proto, addr string, tc *tls.Config) error {
	if addr == "" {
		return fmt.Errorf("%s: address is empty", proto)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s: address %q: %w", proto, addr, err)
	}
	if tc == nil {
		return fmt.Errorf("%s: TLS config is required", proto)
	}
	return nil
}

// WithDefaults fills an empty Hostname (os.Hostname) and AppName
// (DefaultAppName) and checks the SD-ID.
func (f Formatter) WithDefaults() (Formatter, error) {
	if f.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return f, fmt.Errorf("hostname: %w", err)
		}
		f.Hostname = h
	}
	if f.AppName == "" {
		f.AppName = DefaultAppName
	}
	if f.SDID != "" && !ValidSDName(f.SDID) {
		return f, fmt.Errorf("SD-ID %q is not a valid SD-NAME (1-32 printable ASCII characters, none of = ] \" or space)", f.SDID)
	}
	return f, nil
}
