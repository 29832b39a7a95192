package hec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bud-ecosystem/budfleet/siem"
)

// waitLimit only guards against a hung test; no assertion depends on it.
const waitLimit = 20 * time.Second

func writeFile(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newClient(t testing.TB, f *fakeHEC, mod func(*Config)) (*Client, string) {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "hec.token")
	f.mu.Lock()
	writeFile(t, tokenFile, "  "+f.token+"\n")
	f.mu.Unlock()
	cfg := Config{
		URL:             f.srv.URL,
		TokenFile:       tokenFile,
		Index:           "bud-logs",
		Host:            "gpu-7",
		TLS:             f.tls(),
		AckPollInterval: time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, tokenFile
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123_456_789, time.UTC)

func auditEvents(n, size int) []siem.Event {
	evs := make([]siem.Event, n)
	for i := range evs {
		raw := fmt.Sprintf(`type=SYSCALL msg=audit(%d.123:%d): arch=c000003e syscall=59 success=yes exit=0 auid=1000 uid=0 comm="bash" exe="/usr/bin/bash" key="exec"`, t0.Unix(), 1000+i)
		if len(raw) < size {
			raw += " pad=" + strings.Repeat("x", size-len(raw)-5)
		}
		evs[i] = siem.Event{
			Tag: "audit", Source: "/var/log/audit/audit.log",
			Time: t0.Add(time.Duration(i) * time.Millisecond),
			Raw:  []byte(raw),
			Fields: siem.FieldsOf(map[string]string{
				"type": "SYSCALL", "serial": fmt.Sprint(1000 + i), "auid": "1000", "exe": "/usr/bin/bash", "key": "exec",
			}),
		}
	}
	return evs
}

func TestSendEncodesEvents(t *testing.T) {
	f := newFakeHEC(t, "tok-1")
	f.indexes = map[string]bool{"bud-logs": true}
	c, _ := newClient(t, f, nil)

	evs := []siem.Event{
		{Source: "/var/log/audit/audit.log", Time: t0, Raw: []byte("type=USER_CMD msg=audit(1:2): cmd=\"a<b&c>d\"\ntype=PROCTITLE msg=audit(1:2): proctitle=6C73"),
			Fields: siem.FieldsOf(map[string]string{"type": "USER_CMD", "serial": "2"})},
		{Source: "/var/log/app.log", Time: time.Unix(-1, 0).Add(250 * time.Millisecond), Raw: []byte("bad \xff\xfe utf8"), Truncated: true, Part: 2},
		{Source: "/var/log/app.log", Raw: []byte(" \t ")}, // blank: not sent
		{Source: "/var/log/app.log", Raw: []byte("no time")},
	}
	if err := c.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	got, posts := f.snapshot()
	if len(posts) != 1 || len(got) != 3 {
		t.Fatalf("posts=%d events=%d, want 1 and 3", len(posts), len(got))
	}
	e := got[0]
	if e.Time != "1772366400.123" || e.Host != "gpu-7" || e.Source != "/var/log/audit/audit.log" ||
		e.SourceType != "linux_audit" || e.Index != "bud-logs" || e.Event != string(evs[0].Raw) ||
		e.Fields["type"] != "USER_CMD" || e.Fields["serial"] != "2" {
		t.Errorf("event 0 = %+v", e)
	}
	if !strings.Contains(string(f.rawEvents[0]), `a<b&c>d`) {
		t.Errorf("HTML characters were escaped: %s", f.rawEvents[0])
	}
	e = got[1]
	if e.Time != "-0.750" || e.Event != "bad \ufffd\ufffd utf8" || e.Fields["truncated"] != "true" || e.Fields["part"] != "2" {
		t.Errorf("event 1 = %+v", e)
	}
	if e = got[2]; e.Time != "" || e.Event != "no time" || e.Fields != nil {
		t.Errorf("event 2 = %+v (%s)", e, f.rawEvents[2])
	}
	if evs[1].Fields != nil {
		t.Error("Send modified the caller's Fields")
	}

	// A batch with nothing to send makes no request.
	if err := c.Send(context.Background(), []siem.Event{{Raw: nil}}); err != nil {
		t.Fatal(err)
	}
	if _, posts = f.snapshot(); len(posts) != 1 {
		t.Errorf("posts = %d after an empty batch", len(posts))
	}
}

func TestBatchSplitsByBytes(t *testing.T) {
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gz), func(t *testing.T) {
			f := newFakeHEC(t, "tok")
			const max = 4096
			c, _ := newClient(t, f, func(c *Config) { c.MaxBatchBytes = max; c.Gzip = gz })
			evs := auditEvents(100, 300)
			huge := auditEvents(1, 3*max)[0]
			evs = append(evs[:50], append([]siem.Event{huge}, evs[50:]...)...)

			if err := c.Send(context.Background(), evs); err != nil {
				t.Fatal(err)
			}
			got, posts := f.snapshot()
			if len(got) != len(evs) {
				t.Fatalf("got %d events, want %d", len(got), len(evs))
			}
			for i := range evs {
				if got[i].Event != string(evs[i].Raw) {
					t.Fatalf("event %d out of order", i)
				}
			}
			// Greedy packing: each request is within the cap (or holds one
			// oversized event), and the next event would not have fit.
			reqs, _ := c.encode(evs)
			if len(posts) != len(reqs) || len(posts) < 10 {
				t.Fatalf("posts = %d, encode made %d", len(posts), len(reqs))
			}
			total := 0
			for i, p := range posts {
				total += p.events
				if p.gzip != gz {
					t.Errorf("post %d gzip=%v", i, p.gzip)
				}
				if p.bytes > max && p.events != 1 {
					t.Errorf("post %d: %d bytes with %d events", i, p.bytes, p.events)
				}
				if i+1 < len(reqs) {
					one, _ := c.encode(evs[reqs[i+1].first : reqs[i+1].first+1])
					if len(reqs[i].body)+len(one[0].body) <= max {
						t.Errorf("request %d (%d bytes) could have held the next event (%d bytes)", i, len(reqs[i].body), len(one[0].body))
					}
				}
				if p.bytes != len(reqs[i].body) {
					t.Errorf("post %d: server got %d bytes, encode made %d", i, p.bytes, len(reqs[i].body))
				}
			}
			if total != len(evs) {
				t.Errorf("posts carried %d events", total)
			}
		})
	}
}

func TestPartialBatchFailure(t *testing.T) {
	f := newFakeHEC(t, "tok")
	f.afterPost = func() { f.set(func(f *fakeHEC) { f.busy = true }) } // busy after the first request
	c, _ := newClient(t, f, func(c *Config) { c.MaxBatchBytes = 4 << 10 })
	evs := auditEvents(60, 300)
	reqs, _ := c.encode(evs)
	n1 := reqs[1].first // events in the first request
	err := c.Send(context.Background(), evs)
	var he *Error
	want := fmt.Sprintf("hec: event request 2 of %d (events %d-%d of the batch): Splunk HEC is busy", len(reqs), n1, reqs[1].last)
	if !errors.As(err, &he) || he.Code != 9 || !Retryable(err) || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v, want %q...", err, want)
	}
	// The first request was taken: resending the batch duplicates it.
	got, _ := f.snapshot()
	if len(reqs) < 3 || len(got) != n1 {
		t.Errorf("server has %d events, want the first request's %d", len(got), n1)
	}
	f.set(func(f *fakeHEC) { f.busy, f.afterPost = false, nil })
	if err := c.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	if got, _ = f.snapshot(); len(got) != n1+60 {
		t.Errorf("server has %d events after the resend", len(got))
	}
}

func TestAckFlow(t *testing.T) {
	f := newFakeHEC(t, "tok")
	f.ackEnabled = true
	// Acks come true at different polls, so a client that asked again for
	// an id already reported true (Splunk forgets it) would never finish.
	f.ackAfter = func(id int64) int { return 2 + int(id%4) }
	var postsBeforeReturn int
	c, _ := newClient(t, f, func(c *Config) { c.Ack = true; c.MaxBatchBytes = 8 << 10 })

	evs := auditEvents(200, 250)
	if err := c.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	postsBeforeReturn = len(f.posts)
	issued, confirmed, polls, left := f.issued, f.confirmed, f.ackPolls, len(f.pending[c.Channel()])
	f.mu.Unlock()
	if postsBeforeReturn < 5 || issued != postsBeforeReturn || confirmed != issued || left != 0 {
		t.Fatalf("posts=%d issued=%d confirmed=%d pending=%d: Send returned before every ack was true",
			postsBeforeReturn, issued, confirmed, left)
	}
	if polls < 5 {
		t.Errorf("only %d ack polls for acks needing up to 5", polls)
	}
	_, posts := f.snapshot()
	for _, p := range posts {
		if p.channel != c.Channel() {
			t.Fatalf("channel %q, want %q", p.channel, c.Channel())
		}
	}

	// The channel is stable and ack ids keep counting on it.
	if err := c.Send(context.Background(), evs[:10]); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	next := f.nextAck[c.Channel()]
	f.mu.Unlock()
	if next != int64(postsBeforeReturn+1) {
		t.Errorf("next ack id %d, want %d", next, postsBeforeReturn+1)
	}
}

func TestAckLostTimesOut(t *testing.T) {
	f := newFakeHEC(t, "tok")
	f.ackEnabled, f.loseAcks = true, true
	c, _ := newClient(t, f, func(c *Config) { c.Ack = true; c.AckTimeout = 30 * time.Millisecond })

	err := c.Send(context.Background(), auditEvents(10, 100))
	if !errors.Is(err, ErrAckTimeout) || !Retryable(err) {
		t.Fatalf("err = %v, want a retryable ErrAckTimeout", err)
	}
	if !strings.Contains(err.Error(), "resend the batch") || !strings.Contains(err.Error(), c.Channel()) {
		t.Errorf("message %q", err)
	}
	// The data did reach Splunk: resending it duplicates (at-least-once).
	if got, _ := f.snapshot(); len(got) != 10 {
		t.Errorf("server has %d events", len(got))
	}
}

func TestAckNotEnabledOnToken(t *testing.T) {
	f := newFakeHEC(t, "tok") // acks off on the token
	c, _ := newClient(t, f, func(c *Config) { c.Ack = true })
	err := c.Send(context.Background(), auditEvents(1, 100))
	if err == nil || !strings.Contains(err.Error(), "enable indexer acknowledgement on the HEC token, or set Ack to false") || Retryable(err) {
		t.Fatalf("err = %v", err)
	}
}

func TestTokenRotation(t *testing.T) {
	f := newFakeHEC(t, "tok-1")
	c, tokenFile := newClient(t, f, nil)
	evs := auditEvents(3, 100)
	if err := c.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}

	// Rotated in Splunk and in the file: one refusal, a re-read, a retry.
	f.set(func(f *fakeHEC) { f.token = "tok-2" })
	writeFile(t, tokenFile, "tok-2\n")
	if err := c.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	fails, n := f.authFails, f.eventCount
	f.mu.Unlock()
	if fails != 1 || n != 6 {
		t.Errorf("authFails=%d events=%d, want 1 and 6", fails, n)
	}
	if err := c.Send(context.Background(), evs); err != nil { // the new token is kept
		t.Fatal(err)
	}
	if f.mu.Lock(); f.authFails != 1 {
		t.Errorf("authFails=%d after the rotation", f.authFails)
	}
	f.mu.Unlock()

	// Rotated in Splunk only: the error names the file.
	f.set(func(f *fakeHEC) { f.token = "tok-3" })
	err := c.Send(context.Background(), evs)
	var he *Error
	if !errors.As(err, &he) || he.Code != 4 || he.StatusCode != 403 || Retryable(err) ||
		!strings.Contains(err.Error(), "the token in "+tokenFile+" is not a valid HEC token") {
		t.Fatalf("err = %v", err)
	}

	// Rotated while waiting for acks: the ack poll re-reads the file too.
	writeFile(t, tokenFile, "tok-3")
	f.set(func(f *fakeHEC) {
		f.ackEnabled = true
		f.ackAfter = func(int64) int { return 1 }
		f.afterPost = func() {
			f.set(func(f *fakeHEC) { f.token, f.afterPost = "tok-4", nil })
			os.WriteFile(tokenFile, []byte("tok-4"), 0o600) // checked by the Send below
		}
	})
	c2, _ := newClient(t, f, func(cfg *Config) { cfg.Ack = true; cfg.TokenFile = tokenFile })
	if err := c2.Send(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		setup     func(f *fakeHEC)
		cfg       func(c *Config)
		status    int
		code      int
		retryable bool
		want      string
	}{
		{"incorrect index", func(f *fakeHEC) { f.indexes = map[string]bool{"main": true} }, nil,
			400, 7, false, `index "bud-logs" is not allowed for this token: check the HEC token's allowed indexes`},
		{"default index", func(f *fakeHEC) { f.indexes = map[string]bool{"bud-logs": true} }, func(c *Config) { c.Index = "" },
			400, 7, false, `the token's default index is not allowed`},
		{"token disabled", func(f *fakeHEC) { f.disabled = true }, nil,
			403, 1, false, `is disabled: enable it in Splunk`},
		{"busy", func(f *fakeHEC) { f.busy = true }, nil,
			503, 9, true, `Splunk HEC is busy (its queues are full); retry later`},
		{"ack required by token", func(f *fakeHEC) { f.ackEnabled = true }, nil,
			400, 10, false, `set Ack to true, or disable indexer acknowledgement on the token`},
		{"wrong path", nil, func(c *Config) { c.URL += "/proxy" },
			404, -1, false, `no HEC endpoint at https://`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHEC(t, "tok")
			if tc.setup != nil {
				tc.setup(f)
			}
			c, _ := newClient(t, f, tc.cfg)
			err := c.Send(context.Background(), auditEvents(2, 100))
			var he *Error
			if !errors.As(err, &he) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if he.StatusCode != tc.status || he.Code != tc.code || Retryable(err) != tc.retryable {
				t.Errorf("status=%d code=%d retryable=%v", he.StatusCode, he.Code, Retryable(err))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("message %q lacks %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}

func TestClassify(t *testing.T) {
	c := &Client{cfg: Config{TokenFile: "/etc/bud/hec.token", Index: "bud-logs", Channel: "c"}, eventURL: "https://s/services/collector/event"}
	code := func(n int) *response { return &response{Code: &n, Text: "t", InvalidEvent: &n} }
	for _, tc := range []struct {
		status    int
		r         *response
		raw       string
		retryable bool
		want      string
	}{
		{400, code(6), "", false, "could not parse event 6 of the request"},
		{400, code(14), "", false, "indexer acknowledgement is disabled for this HEC token"},
		{400, code(15), "", false, "fields of event 15 of the request"},
		{401, code(2), "", false, "Splunk got no token: check /etc/bud/hec.token"},
		{500, code(8), "", true, "internal error"},
		{503, code(18), "", true, "unhealthy"},
		{502, nil, "<html>Bad Gateway</html>", true, `Bad Gateway; retry later (HTTP 502: "<html>Bad Gateway</html>")`},
		{413, nil, "", false, "lower MaxBatchBytes"},
		{200, nil, "<html>login</html>", false, "check that the URL points at Splunk HEC"},
	} {
		e := c.classify("event", tc.status, tc.r, []byte(tc.raw))
		if e.Temporary() != tc.retryable || !strings.Contains(e.Error(), tc.want) {
			t.Errorf("%d %v: %q temporary=%v", tc.status, tc.r, e, e.Temporary())
		}
	}
}

func TestTLSVerificationError(t *testing.T) {
	f := newFakeHEC(t, "tok")
	c, _ := newClient(t, f, func(c *Config) { c.TLS = nil }) // system roots
	err := c.Send(context.Background(), auditEvents(1, 100))
	if err == nil || Retryable(err) || !strings.Contains(err.Error(), "TLS verification of") {
		t.Fatalf("err = %v", err)
	}
}

func TestContextCancel(t *testing.T) {
	t.Run("waiting for acks", func(t *testing.T) {
		f := newFakeHEC(t, "tok")
		polled := make(chan struct{}, 1)
		f.ackEnabled, f.loseAcks = true, true
		f.onAckPoll = func() {
			select {
			case polled <- struct{}{}:
			default:
			}
		}
		c, _ := newClient(t, f, func(c *Config) { c.Ack = true; c.AckTimeout = time.Hour })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Send(ctx, auditEvents(5, 100)) }()
		<-polled
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || Retryable(err) {
				t.Fatalf("err = %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("Send did not return after cancel")
		}
	})
	t.Run("during POST", func(t *testing.T) {
		f := newFakeHEC(t, "tok")
		f.block, f.arrived = make(chan struct{}), make(chan struct{}, 1)
		defer close(f.block)
		c, _ := newClient(t, f, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Send(ctx, auditEvents(5, 100)) }()
		<-f.arrived
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || Retryable(err) {
				t.Fatalf("err = %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("Send did not return after cancel")
		}
	})
	t.Run("Close", func(t *testing.T) {
		f := newFakeHEC(t, "tok")
		polled := make(chan struct{}, 1)
		f.ackEnabled, f.loseAcks = true, true
		f.onAckPoll = func() {
			select {
			case polled <- struct{}{}:
			default:
			}
		}
		c, _ := newClient(t, f, func(c *Config) { c.Ack = true; c.AckTimeout = time.Hour })
		done := make(chan error, 1)
		go func() { done <- c.Send(context.Background(), auditEvents(5, 100)) }()
		<-polled
		c.Close()
		select {
		case err := <-done:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("err = %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("Send did not return after Close")
		}
		if err := c.Send(context.Background(), auditEvents(1, 10)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Send after Close: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConcurrentSends(t *testing.T) {
	f := newFakeHEC(t, "tok")
	f.ackEnabled = true
	f.ackAfter = func(id int64) int { return 1 + int(id%3) }
	c, _ := newClient(t, f, func(c *Config) { c.Ack = true; c.MaxBatchBytes = 4 << 10 })
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Send(context.Background(), auditEvents(50, 200))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.eventCount != 400 || f.confirmed != f.issued {
		t.Errorf("events=%d confirmed=%d issued=%d", f.eventCount, f.confirmed, f.issued)
	}
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "tok")
	writeFile(t, tok, "abc\n")
	empty := filepath.Join(dir, "empty")
	writeFile(t, empty, " \n")
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "splunk:8088", TokenFile: tok}, "must look like https://"},
		{Config{URL: "https://s:8088"}, "TokenFile is required"},
		{Config{URL: "https://s:8088", TokenFile: filepath.Join(dir, "missing")}, "no such file"},
		{Config{URL: "https://s:8088", TokenFile: empty}, "is empty"},
		{Config{URL: "https://s:8088", TokenFile: tok, Channel: "nope"}, "not a UUID"},
		{Config{URL: "https://s:8088", TokenFile: tok, AckTimeout: -1}, "must not be negative"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	c, err := New(Config{URL: "https://s:8088/services/collector/event/", TokenFile: tok})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.eventURL != "https://s:8088/services/collector/event" || c.ackURL != "https://s:8088/services/collector/ack" ||
		c.token != "abc" || !isUUID(c.Channel()) || c.cfg.SourceType != "linux_audit" || c.cfg.MaxBatchBytes != 1<<20 {
		t.Errorf("client %+v", c)
	}
}
