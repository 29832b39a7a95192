package hec

import (
	"strings"
	"testing"
)

// FuzzResponse: whatever comes back from the network as HEC's answer
// (or from a proxy in front of it) is either a success or an *Error with
// a message, never both, never neither, never a panic; a success of the
// event endpoint is code 0 on HTTP 200, and an answer that is not HEC's
// JSON never passes.
func FuzzResponse(f *testing.F) {
	for _, s := range []struct {
		op     string
		status int
		body   string
	}{
		{"event", 200, `{"text":"Success","code":0}`},
		{"event", 200, `{"text":"Success","code":0,"ackId":7}`},
		{"ack", 200, `{"acks":{"0":true,"1":false}}`},
		{"event", 400, `{"text":"Invalid data format","code":6,"invalid-event-number":3}`},
		{"event", 403, `{"text":"Invalid token","code":4}`},
		{"event", 503, `{"text":"Server is busy","code":9}`},
		{"event", 200, `<html>proxy login</html>`},
		{"event", 200, `{"text":"Success"}`},
		{"ack", 200, `{"acks":null,"code":0}`},
		{"event", 200, `{"code":-1,"invalid-event-number":-5}`},
		{"event", 413, ``},
	} {
		f.Add(s.op, s.status, []byte(s.body))
	}
	c := &Client{cfg: Config{TokenFile: "/etc/budfleet/siem/hec.token", Index: "main", Channel: "c"}, eventURL: "https://splunk:8088/services/collector/event"}
	f.Fuzz(func(t *testing.T, op string, status int, body []byte) {
		if op != "event" && op != "ack" {
			op = "event"
		}
		r, e := c.parseResponse(op, status, body)
		if (r == nil) == (e == nil) {
			t.Fatalf("%s %d %q: response %v and error %v", op, status, body, r, e)
		}
		if e != nil {
			if msg := e.Error(); !strings.HasPrefix(msg, "hec: "+op) || e.hint == "" {
				t.Fatalf("%s %d %q: error %q without a hint", op, status, body, msg)
			}
			return
		}
		if status != 200 {
			t.Fatalf("%s %d %q: a success on HTTP %d", op, status, body, status)
		}
		if op == "event" && (r.Code == nil || *r.Code != 0) {
			t.Fatalf("%s %q: a success without code 0: %+v", op, body, r)
		}
		if op == "ack" && r.Acks == nil {
			t.Fatalf("%q: an ack success without acks", body)
		}
	})
}
