package syslog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxFrameLen is the largest MSG-LEN ParseFrame accepts (16 MiB).
const MaxFrameLen = 16 << 20

// AppendFrame appends msg with RFC 5425 octet-counting framing,
// "MSG-LEN SP SYSLOG-MSG", to dst.
func AppendFrame(dst, msg []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, ' ')
	return append(dst, msg...)
}

// ErrBadFrame is wrapped by ParseFrame's errors for malformed input.
var ErrBadFrame = errors.New("bad RFC 5425 frame")

// ParseFrame reads one octet-counted frame (RFC 5425: MSG-LEN, a
// NONZERO-DIGIT followed by digits, then SP and MSG-LEN octets) and returns
// the message. It returns io.EOF when r is at its end before a frame, and
// io.ErrUnexpectedEOF when it ends inside one. The message is read as it
// arrives, so a large MSG-LEN in a short input allocates little.
func ParseFrame(r *bufio.Reader) ([]byte, error) {
	n := 0
	digits := 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			if err == io.EOF && digits > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if c == ' ' {
			if digits == 0 {
				return nil, fmt.Errorf("%w: MSG-LEN missing", ErrBadFrame)
			}
			break
		}
		if c < '0' || c > '9' {
			return nil, fmt.Errorf("%w: byte %q in MSG-LEN", ErrBadFrame, c)
		}
		if digits == 0 && c == '0' {
			return nil, fmt.Errorf("%w: MSG-LEN starts with 0", ErrBadFrame)
		}
		n = n*10 + int(c-'0')
		digits++
		if n > MaxFrameLen {
			return nil, fmt.Errorf("%w: MSG-LEN over %d", ErrBadFrame, MaxFrameLen)
		}
	}
	var buf bytes.Buffer
	if n <= 64<<10 {
		buf.Grow(n)
	}
	if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf.Bytes(), nil
}
