package h1

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

// maxTrailerBytes bounds the trailer section of a chunked request body;
// chunk extensions count against it too.
const maxTrailerBytes = 64 << 10

// errBodyTimeout is a request body that stalled for the body timeout.
var errBodyTimeout = &Error{Status: http.StatusRequestTimeout, Reason: "request body timeout"}

// errBodyIncomplete is a request body cut short by the client.
var errBodyIncomplete = &Error{Status: http.StatusBadRequest, Reason: "request body incomplete"}

// body is the request body of one request on a connection. Reads wait at
// most the body timeout for each byte from the client; every failure is an
// *Error (the client's fault), and after one the connection is not reused.
// It is read by the handler's goroutine only; Close does not drain.
type body struct {
	c         *conn
	chunked   bool
	remaining int64 // identity: bytes left; chunked: bytes left in this chunk
	expect100 bool  // 100 Continue is owed before the first read
	done      bool  // read to its end
	err       error // sticky
	closed    bool
	trailer   int // chunk-extension and trailer bytes so far
	sawLast   bool
	head      [32]byte // the start of the line crlfLine read last
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.done {
		return 0, io.EOF
	}
	if b.expect100 {
		b.expect100 = false
		b.c.w.continue100()
	}
	n, err := b.read(p)
	if err != nil && err != io.EOF {
		b.err = err
		b.c.broken = true
		return n, err
	}
	if err == io.EOF {
		b.done = true
		b.c.r.bodyDone()
	}
	return n, err
}

func (b *body) read(p []byte) (int, error) {
	for b.remaining == 0 {
		if !b.chunked || b.sawLast {
			return 0, io.EOF
		}
		if err := b.nextChunk(); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.c.readBody(p)
	b.remaining -= int64(n)
	switch {
	case err != nil:
		return n, b.mapErr(err)
	case b.remaining > 0:
		return n, nil
	case b.chunked:
		// The chunk's data ends with exactly CRLF.
		return n, b.expectCRLF()
	}
	return n, io.EOF
}

// nextChunk reads a chunk-size line (RFC 9112 §7.1): 1*HEXDIG, optional
// extensions, CRLF. A bare LF is refused. The last chunk (size 0) is
// followed by the trailer section, which is read and discarded.
func (b *body) nextChunk() error {
	// A chunk-size line is its size (at most 15 hex digits), then any
	// extensions, which count against the trailer budget.
	line, lineLen, err := b.crlfLine(maxTrailerBytes - b.trailer + 15 + 2)
	if err != nil {
		return err
	}
	size, ext := line, []byte(nil)
	for i, c := range line {
		if c == ';' || c == ' ' || c == '\t' {
			size, ext = line[:i], line[i:]
			break
		}
	}
	if len(size) == 0 || len(size) > 15 {
		return badRequest("malformed chunk size")
	}
	if b.trailer += lineLen - len(size); b.trailer > maxTrailerBytes {
		return errChunkMetaTooLarge
	}
	var n int64
	for _, c := range size {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return badRequest("malformed chunk size")
		}
		n = n<<4 | int64(d)
	}
	if len(ext) > 0 {
		if t := trimOWS(ext); len(t) > 0 && t[0] != ';' {
			return badRequest("malformed chunk extension")
		}
	}
	if n > 0 {
		b.remaining = n
		return nil
	}
	b.sawLast = true
	for {
		line, n, err := b.crlfLine(maxTrailerBytes - b.trailer + 2)
		if err != nil {
			return err
		}
		if b.trailer += n + 2; b.trailer > maxTrailerBytes {
			return errChunkMetaTooLarge
		}
		if n == 0 {
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badRequest("obsolete line folding in trailer")
		}
	}
}

// crlfLine reads one chunk-size or trailer line, which must end in CRLF
// and hold no other control character than HTAB, and be at most limit
// bytes long (its CRLF included). It returns the line's first bytes (up to
// len(b.head), enough for a chunk size; valid until the next call) and the
// line's length without its CRLF. The caller charges the trailer budget.
func (b *body) crlfLine(limit int) ([]byte, int, error) {
	br := b.c.br
	kept, n, read := 0, 0, 0
	cr := false // the previous byte was CR
	for {
		if br.Buffered() == 0 {
			if err := b.c.fill(); err != nil {
				return nil, 0, b.mapErr(err)
			}
		}
		buf, _ := br.Peek(br.Buffered())
		for i, c := range buf {
			switch {
			case c == '\n':
				br.Discard(i + 1)
				if read+i+1 > limit {
					return nil, 0, errChunkMetaTooLarge
				}
				if !cr {
					return nil, 0, badRequest("chunk line not terminated by CRLF")
				}
				return b.head[:kept], n, nil
			case cr:
				return nil, 0, badRequest("bare CR in chunk line")
			case c == '\r':
				cr = true
			case (c < ' ' && c != '\t') || c == 0x7f:
				return nil, 0, badRequest("control character in chunk line")
			default:
				if kept < len(b.head) {
					b.head[kept] = c
					kept++
				}
				n++
			}
		}
		br.Discard(len(buf))
		if read += len(buf); read > limit {
			return nil, 0, errChunkMetaTooLarge
		}
	}
}

var errChunkMetaTooLarge = badRequest("chunk extensions and trailers too large")

// expectCRLF consumes the CRLF after a chunk's data.
func (b *body) expectCRLF() error {
	for b.c.br.Buffered() < 2 {
		if err := b.c.fill(); err != nil {
			return b.mapErr(err)
		}
	}
	crlf, _ := b.c.br.Peek(2)
	if crlf[0] != '\r' || crlf[1] != '\n' {
		return badRequest("chunk data longer than its size, or not followed by CRLF")
	}
	b.c.br.Discard(2)
	return nil
}

func (b *body) mapErr(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errBodyTimeout
	case err == io.EOF, errors.Is(err, io.ErrUnexpectedEOF):
		return errBodyIncomplete
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: http.StatusBadRequest, Reason: "request body: " + err.Error()}
}

// Close marks the body closed; unread bytes make the connection unusable
// for another request, so it is closed after the answer.
func (b *body) Close() error {
	b.closed = true
	return nil
}

// readBody reads body bytes: from the buffer when it holds some, else from
// the connection with the body deadline.
func (c *conn) readBody(p []byte) (int, error) {
	if c.br.Buffered() == 0 {
		c.rwc.SetReadDeadline(time.Now().Add(c.t.BodyTimeout))
	}
	return c.br.Read(p)
}

// fill reads more bytes into the buffer with the body deadline.
func (c *conn) fill() error {
	c.rwc.SetReadDeadline(time.Now().Add(c.t.BodyTimeout))
	_, err := c.br.Peek(c.br.Buffered() + 1)
	return err
}
