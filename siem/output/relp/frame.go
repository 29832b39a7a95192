package relp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Limits of the RELP frame syntax.
const (
	// MaxTxnr is the largest transaction number (9 digits); the client
	// wraps to 1 after it.
	MaxTxnr = 999_999_999
	// MaxCommandLen is the longest command name.
	MaxCommandLen = 32
	// DefaultMaxDataLen is the largest DATALEN ReadFrame accepts.
	DefaultMaxDataLen = 128 << 10
)

// Frame is one RELP frame: TXNR SP COMMAND SP DATALEN [SP DATA] TRAILER.
type Frame struct {
	Txnr    int
	Command string
	Data    []byte
}

// ErrBadFrame is wrapped by ReadFrame's errors for malformed input.
var ErrBadFrame = errors.New("bad RELP frame")

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadFrame, fmt.Sprintf(format, args...))
}

// AppendFrame appends f in RELP syntax to dst: DATALEN 0 is written
// without the SP and DATA.
func AppendFrame(dst []byte, f Frame) []byte {
	dst = strconv.AppendInt(dst, int64(f.Txnr), 10)
	dst = append(dst, ' ')
	dst = append(dst, f.Command...)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(len(f.Data)), 10)
	if len(f.Data) > 0 {
		dst = append(dst, ' ')
		dst = append(dst, f.Data...)
	}
	return append(dst, '\n')
}

// ReadFrame reads one frame with DATALEN at most DefaultMaxDataLen.
func ReadFrame(r *bufio.Reader) (Frame, error) {
	return ReadFrameLimit(r, DefaultMaxDataLen)
}

// ReadFrameLimit reads one frame, strictly: TXNR is 1-9 digits, COMMAND
// 1-32 ASCII letters, DATALEN 1-9 digits and at most maxData, each
// followed by exactly one SP (none after DATALEN 0), and the frame ends in
// LF. It returns io.EOF when r ends before a frame and
// io.ErrUnexpectedEOF when it ends inside one.
func ReadFrameLimit(r *bufio.Reader, maxData int) (Frame, error) {
	var f Frame
	txnr, term, err := readNumber(r, "TXNR", true)
	if err != nil {
		return f, err
	}
	if term != ' ' {
		return f, bad("TXNR not followed by SP")
	}
	f.Txnr = txnr
	var cmd [MaxCommandLen]byte
	n := 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			return f, unexpected(err)
		}
		if c == ' ' {
			break
		}
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return f, bad("byte %q in COMMAND", c)
		}
		if n == MaxCommandLen {
			return f, bad("COMMAND longer than %d", MaxCommandLen)
		}
		cmd[n] = c
		n++
	}
	if n == 0 {
		return f, bad("empty COMMAND")
	}
	f.Command = string(cmd[:n])
	dataLen, term, err := readNumber(r, "DATALEN", false)
	if err != nil {
		return f, unexpected(err)
	}
	if dataLen > maxData {
		return f, bad("DATALEN %d over the limit of %d", dataLen, maxData)
	}
	if dataLen == 0 {
		if term != '\n' {
			return f, bad("DATALEN 0 not followed by the LF trailer")
		}
		return f, nil
	}
	if term != ' ' {
		return f, bad("DATALEN not followed by SP")
	}
	f.Data = make([]byte, dataLen)
	if _, err := io.ReadFull(r, f.Data); err != nil {
		return f, unexpected(err)
	}
	c, err := r.ReadByte()
	if err != nil {
		return f, unexpected(err)
	}
	if c != '\n' {
		return f, bad("trailer is %q, not LF", c)
	}
	return f, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readNumber reads 1-9 digits and returns them with the byte after them.
// At the start of a frame (first) a clean EOF is io.EOF.
func readNumber(r *bufio.Reader, what string, first bool) (int, byte, error) {
	v, digits := 0, 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			if err == io.EOF && (!first || digits > 0) {
				err = io.ErrUnexpectedEOF
			}
			return 0, 0, err
		}
		if c < '0' || c > '9' {
			if digits == 0 {
				return 0, 0, bad("%s missing (byte %q)", what, c)
			}
			return v, c, nil
		}
		if digits == 9 {
			return 0, 0, bad("%s longer than 9 digits", what)
		}
		v = v*10 + int(c-'0')
		digits++
	}
}
