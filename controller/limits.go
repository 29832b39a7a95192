package controller

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the controller's limits (README, security section).
const (
	// DefaultEnrollRate and DefaultEnrollBurst: each source address may
	// call Enroll 10 times a second on average, 100 at once.
	DefaultEnrollRate  = 10.0
	DefaultEnrollBurst = 100
	// DefaultMaxConnections and DefaultMaxConnectionsPerSource bound the
	// open connections overall and from one IP address; more are closed
	// as they are accepted.
	DefaultMaxConnections          = 16384
	DefaultMaxConnectionsPerSource = 128
	// MaxConnectionIdle closes a connection without a stream this long.
	MaxConnectionIdle = 2 * time.Minute
	// addrLimiterMax bounds the addresses an addrLimiter remembers.
	addrLimiterMax = 16384
)

// addrLimiter is a token bucket per source address.
type addrLimiter struct {
	r     rate.Limit
	burst int
	now   func() time.Time

	mu  sync.Mutex
	per map[string]*addrBucket
}

type addrBucket struct {
	l    *rate.Limiter
	last time.Time
}

func newAddrLimiter(perSecond float64, burst int, now func() time.Time) *addrLimiter {
	if now == nil {
		now = time.Now
	}
	return &addrLimiter{r: rate.Limit(perSecond), burst: burst, now: now, per: map[string]*addrBucket{}}
}

// hostOf is the IP of a host:port (the address itself when it has none).
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// allow spends a token of addr's bucket.
func (a *addrLimiter) allow(addr string) bool {
	key := hostOf(addr)
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.per[key]
	if b == nil {
		if len(a.per) >= addrLimiterMax {
			// Forget the buckets that have refilled: they hold nothing.
			full := time.Duration(float64(a.burst)/float64(a.r)*float64(time.Second)) + time.Second
			for k, v := range a.per {
				if now.Sub(v.last) > full {
					delete(a.per, k)
				}
			}
			if len(a.per) >= addrLimiterMax {
				return false
			}
		}
		b = &addrBucket{l: rate.NewLimiter(a.r, a.burst)}
		a.per[key] = b
	}
	b.last = now
	return b.l.AllowN(now, 1)
}

// limitListener closes accepted connections over the limits, overall and
// per source IP, before any TLS work is done for them.
type limitListener struct {
	net.Listener
	total, perSource int
	refused          func(addr string, reason string)

	mu    sync.Mutex
	open  int
	bySrc map[string]int
}

func newLimitListener(l net.Listener, total, perSource int, refused func(addr, reason string)) *limitListener {
	if total <= 0 {
		total = DefaultMaxConnections
	}
	if perSource <= 0 {
		perSource = DefaultMaxConnectionsPerSource
	}
	return &limitListener{Listener: l, total: total, perSource: perSource, refused: refused, bySrc: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := hostOf(c.RemoteAddr().String())
		l.mu.Lock()
		reason := ""
		switch {
		case l.open >= l.total:
			reason = "too many connections"
		case l.bySrc[src] >= l.perSource:
			reason = "too many connections from this address"
		default:
			l.open++
			l.bySrc[src]++
		}
		l.mu.Unlock()
		if reason != "" {
			c.Close()
			if l.refused != nil {
				l.refused(c.RemoteAddr().String(), reason)
			}
			continue
		}
		return &limitConn{Conn: c, l: l, src: src}, nil
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	src  string
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		if c.l.bySrc[c.src]--; c.l.bySrc[c.src] <= 0 {
			delete(c.l.bySrc, c.src)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// counts returns the open connections overall and from src (tests).
func (l *limitListener) counts(src string) (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.bySrc[src]
}
