package hec

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Error is a failed request: Splunk's answer, or no answer (Err).
type Error struct {
	// Op is the endpoint: "event" or "ack".
	Op string
	// StatusCode is the HTTP status; 0 when no answer came.
	StatusCode int
	// Code is HEC's status code (0 success, 7 incorrect index, 9 busy,
	// ...); -1 when the answer was not HEC's JSON.
	Code int
	// Text is HEC's text, or the start of a body that was not HEC's JSON.
	Text string
	// InvalidEvent is HEC's invalid-event-number: the index, within the
	// request, of the event HEC rejected; -1 when HEC gave none.
	InvalidEvent int
	// Err is the transport error when no answer came.
	Err error

	temporary bool
	hint      string
	where     string // which request of a batch
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("hec: ")
	b.WriteString(e.Op)
	if e.where != "" {
		b.WriteString(" ")
		b.WriteString(e.where)
	}
	b.WriteString(": ")
	b.WriteString(e.hint)
	switch {
	case e.Err != nil:
		fmt.Fprintf(&b, ": %v", e.Err)
	case e.Code >= 0:
		fmt.Fprintf(&b, " (HTTP %d, HEC code %d %q)", e.StatusCode, e.Code, e.Text)
	case e.Text != "":
		fmt.Fprintf(&b, " (HTTP %d: %q)", e.StatusCode, e.Text)
	default:
		fmt.Fprintf(&b, " (HTTP %d)", e.StatusCode)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the same request may succeed later without a
// change of configuration (Splunk busy or unreachable, a 5xx).
func (e *Error) Temporary() bool { return e.temporary }

// Retryable reports whether err, from Send, may go away by itself: Splunk
// busy, unhealthy or unreachable, a 5xx, or ErrAckTimeout. Other errors need
// a change of configuration (token, index, URL, TLS, ack setting) or are
// the caller's own (context ended, ErrClosed). Either way nothing was lost:
// the batch is to be sent again, later.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrClosed) {
		return false
	}
	if errors.Is(err, ErrAckTimeout) {
		return true
	}
	var e *Error
	return errors.As(err, &e) && e.temporary
}

// classify turns an answer that is not a success into an *Error saying what
// to fix. r is nil when the body was not HEC's JSON.
func (c *Client) classify(op string, status int, r *response, raw []byte) *Error {
	e := &Error{Op: op, StatusCode: status, Code: -1, InvalidEvent: -1}
	e.temporary = status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout
	if r == nil {
		e.Text = snippet(raw)
		switch {
		case status == http.StatusNotFound:
			e.hint = fmt.Sprintf("no HEC endpoint at %s: check the URL (HEC listens on port 8088 by default and must be enabled in its Global Settings)", c.urlOf(op))
		case status == http.StatusRequestEntityTooLarge:
			e.hint = "the request is larger than Splunk accepts: lower MaxBatchBytes below Splunk's max_content_length"
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			e.hint = fmt.Sprintf("the token in %s was refused", c.cfg.TokenFile)
		case e.temporary:
			e.hint = fmt.Sprintf("Splunk (or a proxy in front of it) failed with %s; retry later", http.StatusText(status))
		default:
			e.hint = fmt.Sprintf("unexpected answer from %s: check that the URL points at Splunk HEC", c.urlOf(op))
		}
		return e
	}
	e.Code, e.Text = *r.Code, r.Text
	if r.InvalidEvent != nil {
		e.InvalidEvent = *r.InvalidEvent
	}
	nth := "an event"
	if e.InvalidEvent >= 0 {
		nth = fmt.Sprintf("event %d of the request", e.InvalidEvent)
	}
	switch e.Code {
	case 1:
		e.hint = fmt.Sprintf("the HEC token in %s is disabled: enable it in Splunk (Settings > Data inputs > HTTP Event Collector) or write an enabled token to the file", c.cfg.TokenFile)
	case 2:
		e.hint = fmt.Sprintf("Splunk got no token: check %s", c.cfg.TokenFile)
	case 3:
		e.hint = fmt.Sprintf("Splunk did not accept the Authorization header: check that %s holds only the token", c.cfg.TokenFile)
	case 4:
		e.hint = fmt.Sprintf("the token in %s is not a valid HEC token on this Splunk (the file was read again after the refusal): write the right token, or check the URL", c.cfg.TokenFile)
	case 5:
		e.hint = "Splunk got no data (a bug in this client)"
	case 6:
		e.hint = fmt.Sprintf("Splunk could not parse %s (invalid data format): a bug in this client, or a proxy altering the body", nth)
	case 7:
		if c.cfg.Index == "" {
			e.hint = "the token's default index is not allowed or does not exist: set Index, or fix the HEC token's default and allowed indexes"
		} else {
			e.hint = fmt.Sprintf("index %q is not allowed for this token: check the HEC token's allowed indexes (and that the index exists)", c.cfg.Index)
		}
	case 8:
		e.hint, e.temporary = "Splunk had an internal error; retry later", true
	case 9:
		e.hint, e.temporary = "Splunk HEC is busy (its queues are full); retry later", true
	case 10:
		e.hint = "the HEC token has indexer acknowledgement enabled, which needs a channel: set Ack to true, or disable indexer acknowledgement on the token"
	case 11:
		e.hint = fmt.Sprintf("Splunk rejected the channel %q: it must be a UUID", c.cfg.Channel)
	case 12, 13:
		e.hint = fmt.Sprintf("%s has no event text (a bug in this client)", nth)
	case 14:
		e.hint = "indexer acknowledgement is disabled for this HEC token: enable it on the token, or set Ack to false"
	case 15:
		e.hint = fmt.Sprintf("Splunk could not index the fields of %s: check the event's Fields", nth)
	case 18, 19, 20:
		e.hint, e.temporary = "Splunk HEC is unhealthy; retry later", true
	default:
		e.hint = fmt.Sprintf("Splunk refused the request: %s", r.Text)
	}
	return e
}

func (c *Client) urlOf(op string) string {
	if op == "ack" {
		return c.ackURL
	}
	return c.eventURL
}

// transportError wraps a request that got no answer. A failed TLS
// verification needs a configuration change; anything else (refused,
// reset, timed out) may pass.
func transportError(op, u string, err error) *Error {
	e := &Error{Op: op, Code: -1, InvalidEvent: -1, Err: err, temporary: true, hint: "POST " + u}
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	if errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &cerr) {
		e.temporary = false
		e.hint = fmt.Sprintf("TLS verification of %s failed: give the CA that signed Splunk's certificate (TLS RootCAs / ca_file) or the right server name", u)
	}
	return e
}

// snippet is the start of a body for a message.
func snippet(raw []byte) string {
	const max = 200
	s := strings.TrimSpace(string(raw))
	if len(s) > max {
		s = s[:max]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}
