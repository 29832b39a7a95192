package hec

import (
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeHEC is a Splunk HTTP Event Collector, faithful where the client
// depends on it: token check (codes 1-4), per-token allowed indexes (7),
// event validation (6, 12, 13, 15, with invalid-event-number and the events
// before the bad one kept), busy (9, HTTP 503), channels (10, 11), ackId
// issuance per channel, and an ack endpoint that reports an id true once it
// has been polled ackAfter times and then forgets it, as Splunk does.
type fakeHEC struct {
	srv *httptest.Server

	mu         sync.Mutex
	token      string
	disabled   bool
	indexes    map[string]bool // allowed; nil allows any
	ackEnabled bool
	ackAfter   func(id int64) int // polls before id is acknowledged
	loseAcks   bool               // never acknowledge
	busy       bool
	discard    bool // keep counts only (benchmarks)

	events     []hecEvent
	rawEvents  []json.RawMessage
	posts      []post
	nextAck    map[string]int64
	pending    map[string]map[int64]int // channel -> id -> polls
	issued     int
	confirmed  int
	ackPolls   int
	authFails  int
	eventCount int

	afterPost func()        // called (without mu) after a POST was taken
	onAckPoll func()        // called (without mu) at each ack poll
	block     chan struct{} // when set, the event endpoint signals arrived and waits on it
	arrived   chan struct{}
}

type post struct {
	bytes   int // uncompressed
	events  int
	gzip    bool
	channel string
}

type hecEvent struct {
	Time       json.Number    `json:"time"`
	Host       string         `json:"host"`
	Source     string         `json:"source"`
	SourceType string         `json:"sourcetype"`
	Index      string         `json:"index"`
	Event      any            `json:"event"`
	Fields     map[string]any `json:"fields"`
}

func newFakeHEC(t testing.TB, token string) *fakeHEC {
	f := &fakeHEC{token: token, nextAck: map[string]int64{}, pending: map[string]map[int64]int{},
		ackAfter: func(int64) int { return 1 }}
	mux := http.NewServeMux()
	mux.HandleFunc("/services/collector/event", f.event)
	mux.HandleFunc("/services/collector/ack", f.ack)
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TestTLSVerificationError's handshake failures
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// tls is a client configuration that trusts the server.
func (f *fakeHEC) tls() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(f.srv.Certificate())
	return &tls.Config{RootCAs: pool}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

type hecReply struct {
	Text         string `json:"text"`
	Code         int    `json:"code"`
	AckID        *int64 `json:"ackId,omitempty"`
	InvalidEvent *int   `json:"invalid-event-number,omitempty"`
}

// auth checks the token; it reports false after answering.
func (f *fakeHEC) auth(w http.ResponseWriter, r *http.Request) bool {
	h := r.Header.Get("Authorization")
	f.mu.Lock()
	defer f.mu.Unlock()
	var status int
	var rep hecReply
	switch {
	case h == "":
		status, rep = 401, hecReply{Text: "Token is required", Code: 2}
	case !strings.HasPrefix(h, "Splunk "):
		status, rep = 401, hecReply{Text: "Invalid authorization", Code: 3}
	case strings.TrimPrefix(h, "Splunk ") != f.token:
		status, rep = 403, hecReply{Text: "Invalid token", Code: 4}
	case f.disabled:
		status, rep = 403, hecReply{Text: "Token disabled", Code: 1}
	default:
		return true
	}
	f.authFails++
	reply(w, status, rep)
	return false
}

// channel checks X-Splunk-Request-Channel when acks are on for the token.
func (f *fakeHEC) channel(w http.ResponseWriter, r *http.Request) (string, bool) {
	ch := r.Header.Get("X-Splunk-Request-Channel")
	if ch == "" {
		ch = r.URL.Query().Get("channel")
	}
	if ch == "" {
		reply(w, 400, hecReply{Text: "Data channel is missing", Code: 10})
		return "", false
	}
	if !isUUID(ch) {
		reply(w, 400, hecReply{Text: "Invalid data channel", Code: 11})
		return "", false
	}
	return ch, true
}

func (f *fakeHEC) event(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if f.block != nil {
		f.arrived <- struct{}{}
		select {
		case <-f.block:
		case <-r.Context().Done():
			return
		}
	}
	if !f.auth(w, r) {
		return
	}
	f.mu.Lock()
	busy, ackOn := f.busy, f.ackEnabled
	f.mu.Unlock()
	if busy {
		reply(w, 503, hecReply{Text: "Server is busy", Code: 9})
		return
	}
	var ch string
	if ackOn {
		var ok bool
		if ch, ok = f.channel(w, r); !ok {
			return
		}
	}
	var body io.Reader = r.Body
	gz := r.Header.Get("Content-Encoding") == "gzip"
	if gz {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			reply(w, 400, hecReply{Text: "Invalid data format", Code: 6})
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		reply(w, 400, hecReply{Text: "Invalid data format", Code: 6})
		return
	}
	if len(bytes.TrimSpace(data)) == 0 {
		reply(w, 400, hecReply{Text: "No data", Code: 5})
		return
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	var got []hecEvent
	var raws []json.RawMessage
	fail := func(i int, text string, code int) {
		f.mu.Lock()
		f.keep(got, raws) // HEC indexes the events before the bad one
		f.mu.Unlock()
		reply(w, 400, hecReply{Text: text, Code: code, InvalidEvent: &i})
	}
	for i := 0; dec.More(); i++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			fail(i, "Invalid data format", 6)
			return
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			fail(i, "Invalid data format", 6)
			return
		}
		var ev hecEvent
		if json.Unmarshal(raw, &ev) != nil {
			fail(i, "Invalid data format", 6)
			return
		}
		if _, ok := m["event"]; !ok {
			fail(i, "Event field is required", 12)
			return
		}
		if s, ok := ev.Event.(string); ok && strings.TrimSpace(s) == "" {
			fail(i, "Event field cannot be blank", 13)
			return
		}
		f.mu.Lock()
		idx := ev.Index
		if idx == "" {
			idx = "main"
		}
		badIndex := f.indexes != nil && !f.indexes[idx]
		f.mu.Unlock()
		if badIndex {
			fail(i, "Incorrect index", 7)
			return
		}
		for _, v := range ev.Fields {
			switch v := v.(type) {
			case string:
			case []any:
				for _, e := range v {
					if _, ok := e.(string); !ok {
						fail(i, "Error in handling indexed fields", 15)
						return
					}
				}
			default:
				fail(i, "Error in handling indexed fields", 15)
				return
			}
		}
		got = append(got, ev)
		raws = append(raws, raw)
	}

	f.mu.Lock()
	f.keep(got, raws)
	f.posts = append(f.posts, post{bytes: len(data), events: len(got), gzip: gz, channel: r.Header.Get("X-Splunk-Request-Channel")})
	rep := hecReply{Text: "Success", Code: 0}
	if ackOn {
		id := f.nextAck[ch]
		f.nextAck[ch]++
		if f.pending[ch] == nil {
			f.pending[ch] = map[int64]int{}
		}
		f.pending[ch][id] = 0
		f.issued++
		rep.AckID = &id
	}
	after := f.afterPost
	f.mu.Unlock()
	reply(w, 200, rep)
	if after != nil {
		after()
	}
}

func (f *fakeHEC) keep(evs []hecEvent, raws []json.RawMessage) {
	f.eventCount += len(evs)
	if !f.discard {
		f.events = append(f.events, evs...)
		f.rawEvents = append(f.rawEvents, raws...)
	}
}

func (f *fakeHEC) ack(w http.ResponseWriter, r *http.Request) {
	if !f.auth(w, r) {
		return
	}
	f.mu.Lock()
	ackOn := f.ackEnabled
	f.mu.Unlock()
	if !ackOn {
		reply(w, 400, hecReply{Text: "ACK is disabled", Code: 14})
		return
	}
	ch, ok := f.channel(w, r)
	if !ok {
		return
	}
	var q struct {
		Acks []int64 `json:"acks"`
	}
	if err := json.NewDecoder(r.Body).Decode(&q); err != nil || q.Acks == nil {
		reply(w, 400, hecReply{Text: "Invalid data format", Code: 6})
		return
	}
	f.mu.Lock()
	f.ackPolls++
	res := map[string]bool{}
	for _, id := range q.Acks {
		polls, known := f.pending[ch][id]
		if !known { // never issued, or already reported true
			res[strconv.FormatInt(id, 10)] = false
			continue
		}
		polls++
		f.pending[ch][id] = polls
		done := !f.loseAcks && polls >= f.ackAfter(id)
		if done {
			delete(f.pending[ch], id)
			f.confirmed++
		}
		res[strconv.FormatInt(id, 10)] = done
	}
	hook := f.onAckPoll
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	reply(w, 200, map[string]any{"acks": res})
}

func (f *fakeHEC) set(fn func(f *fakeHEC)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeHEC) snapshot() (events []hecEvent, posts []post) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]hecEvent(nil), f.events...), append([]post(nil), f.posts...)
}
