// Package hec sends events to Splunk's HTTP Event Collector (HEC).
//
// A Client POSTs each batch to {URL}/services/collector/event as
// concatenated JSON event objects, split into several requests when the
// encoded batch is larger than Config.MaxBatchBytes:
//
//	{"time":1700000000.123,"host":"gpu-7","source":"/var/log/audit/audit.log",
//	 "sourcetype":"linux_audit","index":"bud-logs","event":"type=SYSCALL ...",
//	 "fields":{"auid":"1000","type":"SYSCALL",...}}
//
// "event" is Event.Raw as a JSON string. JSON strings are UTF-8, so each
// byte of Raw that is not part of valid UTF-8 is sent as U+FFFD (what
// encoding/json does); Linux audit hex-encodes untrusted values itself, so
// this only touches raw lines that were not UTF-8 to begin with. Values in
// "fields" (indexed fields, from Event.Fields) are treated the same way.
// An event whose Raw is empty or only white space is not sent: HEC rejects a
// blank event (code 13) and with it the whole request, which would block the
// batch forever; such an event carries nothing and counts as delivered.
//
// # Delivery
//
// Send returns nil only when Splunk has taken every event of the batch, so a
// caller that removes a batch from its spool only after Send returned nil and
// resends it otherwise delivers each event at least once; any error means
// "resend the whole batch", and a resend can duplicate events that had been
// taken before the error (an earlier request of the same batch, or a request
// whose response was lost).
//
// Without Config.Ack, "taken" means HEC answered 200 with code 0: the data
// parsed and was queued for indexing. Splunk can still lose it after that (a
// crash of the HEC instance or an indexer before the data is written), so
// the guarantee is at-least-once up to HEC's queue, not up to the index.
//
// With Config.Ack (indexer acknowledgement, which must also be enabled on
// the token), every request carries the client's channel in
// X-Splunk-Request-Channel and HEC answers with an ackId; Send then polls
// {URL}/services/collector/ack until every request of the batch is reported
// true, that is indexed (and replicated, on an indexer cluster), or fails
// with ErrAckTimeout after Config.AckTimeout. This is at-least-once up to the
// index. Behind a load balancer the ack polls must reach the HEC instance that
// took the data: the Client keeps cookies, so cookie-based sticky sessions
// work; configure the balancer for them.
//
// # Token
//
// The token is read from Config.TokenFile (surrounding white space trimmed)
// when the Client is made, and read again when Splunk answers 401 or 403;
// when the file then holds a different token the request is retried once
// with it, so rotating the token means: add the new token in Splunk, write
// it to the file, remove the old one.
package hec

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
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
	DefaultSourceType      = "linux_audit"
	DefaultMaxBatchBytes   = 1 << 20
	DefaultAckPollInterval = 500 * time.Millisecond
	DefaultAckTimeout      = 60 * time.Second
	DefaultTimeout         = 30 * time.Second
)

// Config configures a Client. URL and TokenFile are required.
type Config struct {
	// URL is the HEC base URL, e.g. "https://splunk.example.com:8088". A URL
	// that already ends in /services/collector[/event] is accepted.
	URL string
	// TokenFile holds the HEC token.
	TokenFile string
	// Index, Source, SourceType and Host set the event metadata. An empty
	// Index leaves it to the token's default index; an empty Source uses
	// each event's Source (the file it was read from); SourceType defaults
	// to "linux_audit" and Host to os.Hostname().
	Index      string
	Source     string
	SourceType string
	Host       string
	// TLS is used for https URLs; nil means the system roots.
	TLS *tls.Config
	// MaxBatchBytes caps the uncompressed body of one request (default
	// 1 MiB); a larger batch is sent as several requests. A single event
	// larger than this is sent alone. Keep it below Splunk's
	// max_content_length (limits.conf [http_input]).
	MaxBatchBytes int
	// Gzip compresses request bodies (Content-Encoding: gzip).
	Gzip bool
	// Ack turns on indexer acknowledgement; see the package documentation.
	Ack bool
	// AckPollInterval is the wait between ack polls (default 500ms) and
	// AckTimeout how long Send waits for the acks of a batch after its last
	// request was taken (default 60s).
	AckPollInterval time.Duration
	AckTimeout      time.Duration
	// Channel is the X-Splunk-Request-Channel, a UUID; empty means a random
	// one, kept for the life of the Client.
	Channel string
	// Timeout bounds each HTTP request (default 30s).
	Timeout time.Duration
}

// ErrClosed is returned by Send after Close, and by a Send that Close
// interrupted.
var ErrClosed = errors.New("hec: client closed")

// ErrAckTimeout is wrapped by the error of a Send whose requests were taken
// but not all acknowledged within Config.AckTimeout. The batch must be
// resent; Retryable reports true.
var ErrAckTimeout = errors.New("hec: indexer acknowledgement timed out")

var _ output.Output = (*Client)(nil)

// Client is a HEC client. It is safe for concurrent use.
type Client struct {
	cfg      Config // defaults filled in
	eventURL string
	ackURL   string
	http     *http.Client
	tr       *http.Transport

	tokenMu sync.Mutex
	token   string

	closeCtx context.Context
	close    context.CancelFunc
}

// New checks cfg, reads the token and returns a Client. It does not contact
// Splunk.
func New(cfg Config) (*Client, error) {
	base, err := baseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.TokenFile == "" {
		return nil, errors.New("hec: TokenFile is required")
	}
	if cfg.MaxBatchBytes < 0 || cfg.AckPollInterval < 0 || cfg.AckTimeout < 0 || cfg.Timeout < 0 {
		return nil, errors.New("hec: MaxBatchBytes, AckPollInterval, AckTimeout and Timeout must not be negative")
	}
	if cfg.SourceType == "" {
		cfg.SourceType = DefaultSourceType
	}
	if cfg.Host == "" {
		if h, err := os.Hostname(); err == nil {
			cfg.Host = h
		}
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.AckPollInterval == 0 {
		cfg.AckPollInterval = DefaultAckPollInterval
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Channel == "" {
		cfg.Channel = newUUID()
	} else if !isUUID(cfg.Channel) {
		return nil, fmt.Errorf("hec: Channel %q is not a UUID", cfg.Channel)
	}

	c := &Client{cfg: cfg, eventURL: base + "/services/collector/event", ackURL: base + "/services/collector/ack"}
	if c.token, err = c.readToken(); err != nil {
		return nil, err
	}
	c.tr = http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLS != nil {
		c.tr.TLSClientConfig = cfg.TLS.Clone()
	}
	jar, _ := cookiejar.New(nil) // never fails with nil options
	c.http = &http.Client{Transport: c.tr, Jar: jar, Timeout: cfg.Timeout}
	c.closeCtx, c.close = context.WithCancel(context.Background())
	return c, nil
}

// Channel returns the X-Splunk-Request-Channel the Client uses with Ack.
func (c *Client) Channel() string { return c.cfg.Channel }

// Close interrupts Sends in progress (they return ErrClosed) and releases
// idle connections. It is safe to call more than once.
func (c *Client) Close() error {
	c.close()
	c.tr.CloseIdleConnections()
	return nil
}

// Send delivers batch; see the package documentation for what nil means.
// It returns ErrClosed after Close, the context's error when ctx ends, an
// error wrapping ErrAckTimeout, or an error that errors.As turns into *Error
// saying what Splunk answered and what to fix. Retryable tells which errors
// can go away without a change of configuration.
func (c *Client) Send(ctx context.Context, batch []siem.Event) error {
	if c.closeCtx.Err() != nil {
		return ErrClosed
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.closeCtx, func() { cancel(ErrClosed) })
	defer stop()

	reqs, err := c.encode(batch)
	if err != nil {
		return err
	}
	var acks []int64
	for i, r := range reqs {
		resp, err := c.post(ctx, "event", c.eventURL, r.body)
		if err != nil {
			if len(reqs) > 1 {
				where := fmt.Sprintf("request %d of %d (events %d-%d of the batch)", i+1, len(reqs), r.first, r.last)
				if he := (*Error)(nil); errors.As(err, &he) {
					he.where = where
				} else {
					err = fmt.Errorf("hec: %s: %w", where, err)
				}
			}
			return err
		}
		if c.cfg.Ack {
			if resp.AckID == nil {
				return &Error{Op: "event", StatusCode: http.StatusOK, Code: 0, Text: resp.Text, InvalidEvent: -1,
					hint: "Ack is set but Splunk returned no ackId: enable indexer acknowledgement on the HEC token, or set Ack to false (the data of this request was taken)"}
			}
			acks = append(acks, *resp.AckID)
		}
	}
	if len(acks) == 0 {
		return nil
	}
	return c.waitAcks(ctx, acks)
}

// request is one POST body and the batch indexes of its first and last
// event, for messages.
type request struct {
	body        []byte
	first, last int
}

// waitAcks polls the ack endpoint until every id is acknowledged. Splunk
// forgets an id once it has reported it true, so each poll asks only for the
// ids still pending.
func (c *Client) waitAcks(ctx context.Context, ids []int64) error {
	pending := make(map[int64]bool, len(ids))
	for _, id := range ids {
		pending[id] = true
	}
	ackCtx, cancel := context.WithTimeoutCause(ctx, c.cfg.AckTimeout, ErrAckTimeout)
	defer cancel()
	timer := time.NewTimer(c.cfg.AckPollInterval)
	defer timer.Stop()
	var lastErr error
	for {
		select {
		case <-ackCtx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("hec: waiting for acks: %w", context.Cause(ctx))
			}
			msg := fmt.Sprintf("%d of %d requests of the batch not acknowledged by Splunk within %s on channel %s; resend the batch",
				len(pending), len(ids), c.cfg.AckTimeout, c.cfg.Channel)
			if lastErr != nil {
				return fmt.Errorf("%w: %s (last poll: %v)", ErrAckTimeout, msg, lastErr)
			}
			return fmt.Errorf("%w: %s", ErrAckTimeout, msg)
		case <-timer.C:
		}
		query := make([]int64, 0, len(pending))
		for id := range pending {
			query = append(query, id)
		}
		body, _ := json.Marshal(struct {
			Acks []int64 `json:"acks"`
		}{query})
		resp, err := c.post(ackCtx, "ack", c.ackURL, body)
		switch {
		case err == nil:
			for id := range pending {
				if resp.Acks[strconv.FormatInt(id, 10)] {
					delete(pending, id)
				}
			}
			if len(pending) == 0 {
				return nil
			}
		case ackCtx.Err() != nil:
			continue // reported above
		case !Retryable(err):
			return err
		default:
			lastErr = err
		}
		timer.Reset(c.cfg.AckPollInterval)
	}
}

// response is what HEC answers on both endpoints.
type response struct {
	Text         string          `json:"text"`
	Code         *int            `json:"code"`
	AckID        *int64          `json:"ackId"`
	InvalidEvent *int            `json:"invalid-event-number"`
	Acks         map[string]bool `json:"acks"`
}

// post sends body to u and decodes a successful answer. On 401 or 403 it
// reads the token file again and, when the token changed, retries once.
func (c *Client) post(ctx context.Context, op, u string, body []byte) (*response, error) {
	gz := c.cfg.Gzip && op == "event"
	if gz {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write(body) // writes to a bytes.Buffer do not fail
		w.Close()
		body = b.Bytes()
	}
	token := c.currentToken()
	for attempt := 0; ; attempt++ {
		resp, err := c.do(ctx, op, u, body, gz, token)
		if err == nil {
			return resp, nil
		}
		var he *Error
		if attempt > 0 || !errors.As(err, &he) || (he.StatusCode != http.StatusUnauthorized && he.StatusCode != http.StatusForbidden) {
			return nil, err
		}
		newToken, rerr := c.reloadToken()
		if rerr != nil {
			return nil, fmt.Errorf("%w (reading the token again: %v)", err, rerr)
		}
		if newToken == token {
			return nil, err
		}
		token = newToken
	}
}

func (c *Client) do(ctx context.Context, op, u string, body []byte, gz bool, token string) (*response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("hec: %w", err)
	}
	req.Header.Set("Authorization", "Splunk "+token)
	req.Header.Set("Content-Type", "application/json")
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if c.cfg.Ack {
		req.Header.Set("X-Splunk-Request-Channel", c.cfg.Channel)
	}
	res, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("hec: %s: %w", op, context.Cause(ctx))
		}
		return nil, transportError(op, u, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20)) // let the connection be reused
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("hec: %s: %w", op, context.Cause(ctx))
		}
		return nil, transportError(op, u, err)
	}
	r, herr := c.parseResponse(op, res.StatusCode, raw)
	if herr != nil {
		return nil, herr
	}
	return r, nil
}

// parseResponse decodes HEC's answer to op ("event" or "ack"): a success,
// or an *Error saying what to fix. Whatever the body is (it comes from the
// network), exactly one of the two is non-nil.
func (c *Client) parseResponse(op string, status int, raw []byte) (*response, *Error) {
	var r response
	jerr := json.Unmarshal(raw, &r)
	switch {
	case jerr != nil:
		return nil, c.classify(op, status, nil, raw)
	case status == http.StatusOK && op == "ack" && r.Acks != nil && (r.Code == nil || *r.Code == 0):
		return &r, nil // {"acks":{"0":true,"1":false}}
	case status == http.StatusOK && op == "event" && r.Code != nil && *r.Code == 0:
		return &r, nil // {"text":"Success","code":0[,"ackId":N]}
	case r.Code == nil:
		return nil, c.classify(op, status, nil, raw)
	}
	return nil, c.classify(op, status, &r, raw)
}

// encode turns batch into request bodies of at most MaxBatchBytes each
// (a single larger event gets a request of its own).
func (c *Client) encode(batch []siem.Event) ([]request, error) {
	var (
		reqs []request
		cur  bytes.Buffer
		one  bytes.Buffer
		w    wireEvent
	)
	enc := json.NewEncoder(&one)
	enc.SetEscapeHTML(false)
	first := -1
	for i := range batch {
		ev := &batch[i]
		if len(bytes.TrimSpace(ev.Raw)) == 0 {
			continue
		}
		c.wire(ev, &w)
		one.Reset()
		if err := enc.Encode(&w); err != nil {
			return nil, fmt.Errorf("hec: encoding event %d of the batch: %w", i, err)
		}
		if cur.Len() > 0 && cur.Len()+one.Len() > c.cfg.MaxBatchBytes {
			reqs = append(reqs, request{body: bytes.Clone(cur.Bytes()), first: first, last: i - 1})
			cur.Reset()
		}
		if cur.Len() == 0 {
			first = i
		}
		cur.Write(one.Bytes())
	}
	if cur.Len() > 0 {
		reqs = append(reqs, request{body: bytes.Clone(cur.Bytes()), first: first, last: len(batch) - 1})
	}
	return reqs, nil
}

// wireEvent is one HEC event object.
type wireEvent struct {
	Time       json.Number       `json:"time,omitempty"`
	Host       string            `json:"host,omitempty"`
	Source     string            `json:"source,omitempty"`
	SourceType string            `json:"sourcetype,omitempty"`
	Index      string            `json:"index,omitempty"`
	Event      string            `json:"event"`
	Fields     map[string]string `json:"fields,omitempty"`
}

func (c *Client) wire(ev *siem.Event, w *wireEvent) {
	*w = wireEvent{
		Time:       epoch(ev.Time),
		Host:       c.cfg.Host,
		Source:     c.cfg.Source,
		SourceType: c.cfg.SourceType,
		Index:      c.cfg.Index,
		Event:      string(ev.Raw),
		Fields:     ev.Fields.Map(),
	}
	if w.Source == "" {
		w.Source = ev.Source
	}
	if ev.Truncated {
		f := w.Fields
		if f == nil {
			f = make(map[string]string, 2)
		}
		if _, ok := f["truncated"]; !ok {
			f["truncated"] = "true"
		}
		if _, ok := f["part"]; !ok {
			f["part"] = fmt.Sprint(ev.Part)
		}
		w.Fields = f
	}
}

// epoch formats t as epoch seconds with milliseconds ("1700000000.123");
// the zero time gives "" so HEC uses the time it received the event.
func epoch(t time.Time) json.Number {
	if t.IsZero() {
		return ""
	}
	ms, sign := t.UnixMilli(), ""
	if ms < 0 {
		ms, sign = -ms, "-"
	}
	return json.Number(fmt.Sprintf("%s%d.%03d", sign, ms/1000, ms%1000))
}

func (c *Client) readToken() (string, error) {
	b, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("hec: reading the token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("hec: token file %s is empty", c.cfg.TokenFile)
	}
	return t, nil
}

func (c *Client) currentToken() string {
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	return c.token
}

func (c *Client) reloadToken() (string, error) {
	t, err := c.readToken()
	if err != nil {
		return "", err
	}
	c.tokenMu.Lock()
	c.token = t
	c.tokenMu.Unlock()
	return t, nil
}

// baseURL checks u and strips a trailing /services/collector... path.
func baseURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("hec: URL %q must look like https://splunk.example.com:8088", s)
	}
	p := strings.TrimRight(u.Path, "/")
	if i := strings.Index(p, "/services/collector"); i >= 0 {
		p = p[:i]
	}
	u.Path, u.RawPath, u.RawQuery, u.Fragment = p, "", "", ""
	return u.String(), nil
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}
