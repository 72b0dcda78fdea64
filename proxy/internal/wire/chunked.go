// Package wire is HTTP/1.1 syntax that both sides of sluice read the same
// way: the chunked transfer coding (request bodies in proxy/h1, answers
// from instances in proxy) and the token and whitespace rules of RFC 9110.
package wire

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
)

// MaxChunkMeta bounds the chunk extensions and the trailer section of one
// chunked body, together. Chunk sizes do not count against it.
const MaxChunkMeta = 64 << 10

// Error is a chunked body that breaks RFC 9112 §7.1. Whose fault that is
// (the client's, 400; the instance's, a failure) is the caller's to say.
type Error struct{ Reason string }

func (e *Error) Error() string { return "malformed chunked body: " + e.Reason }

// ErrChunkMetaTooLarge is a body whose chunk extensions and trailers exceed
// MaxChunkMeta.
var ErrChunkMetaTooLarge = &Error{Reason: "chunk extensions and trailers too large"}

// Waiter is told before every read of a ChunkedReader that may wait on the
// connection under its bufio.Reader, so that it can arm a read deadline.
type Waiter interface{ Wait() }

// ChunkedReader decodes one chunked body from a bufio.Reader. Data bytes
// are handed on as they arrive: a Read that has to wait reads the
// connection once and returns what came, going on to the following chunks
// only while their size lines are buffered (net/http's chunked reader
// instead fills the caller's buffer or ends the chunk first, over as many
// waits as that takes). Chunk-size and trailer lines must end in CRLF and hold no
// control character but HTAB. Trailers are kept only when asked for (see
// Reset).
//
// Read returns io.EOF after the last chunk and the trailer section (the
// bufio.Reader is then exactly at the body's end), *Error for malformed
// framing, io.ErrUnexpectedEOF when the connection ends first, and the
// connection's errors otherwise. Errors are sticky. The zero value must be
// Reset before use. It is not safe for concurrent use.
type ChunkedReader struct {
	br        *bufio.Reader
	wait      Waiter
	trailer   *http.Header
	remaining int64 // data bytes left in the current chunk
	crlf      bool  // the CRLF after a chunk's data is still to be read
	meta      int   // chunk-extension and trailer bytes so far
	last      bool  // the last chunk was read; its trailer section is next
	done      bool
	err       error
	head      [32]byte // the start of the chunk-size line read last
	line      []byte   // a trailer line, when trailers are kept
}

// Reset makes r read a new body from br. w, when not nil, is told before
// each read that may wait. When trailer is not nil, trailer fields are
// added to *trailer (made when nil) before Read returns io.EOF, their names
// canonical, as net/http does for Response.Trailer; else they are read
// and dropped.
func (r *ChunkedReader) Reset(br *bufio.Reader, w Waiter, trailer *http.Header) {
	line := r.line[:0]
	*r = ChunkedReader{br: br, wait: w, trailer: trailer, line: line}
}

func (r *ChunkedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for r.remaining == 0 {
		if r.crlf {
			if err := r.endChunk(); err != nil {
				return 0, r.fail(err)
			}
		}
		if r.done {
			return 0, io.EOF
		}
		var err error
		if r.last {
			err = r.trailers()
		} else {
			err = r.nextChunk()
		}
		if err != nil {
			return 0, r.fail(err)
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.br.Buffered() == 0 && r.wait != nil {
		r.wait.Wait()
	}
	n := 0
	for {
		q := p[n:]
		if int64(len(q)) > r.remaining {
			q = q[:r.remaining]
		}
		// Only the first read may wait: later ones find bytes buffered.
		k, err := r.br.Read(q)
		n += k
		r.remaining -= int64(k)
		if r.remaining == 0 {
			r.crlf = true
			if err == nil && r.br.Buffered() >= 2 {
				// Checked now when it costs no wait: data longer than its
				// chunk size shows with the data, not a read later.
				err = r.endChunk()
			}
		}
		if err != nil {
			return n, r.fail(err)
		}
		// Go on to the next chunk while that needs no wait, as net/http's
		// reader does: a Read per small chunk would cost the caller a
		// write per chunk. The trailer section is left to the next Read.
		if n == len(p) || r.remaining > 0 || r.crlf || !r.lineBuffered() {
			return n, nil
		}
		if err := r.nextChunk(); err != nil {
			return n, r.fail(err)
		}
		if r.last || r.br.Buffered() == 0 {
			return n, nil
		}
	}
}

// lineBuffered reports whether a whole line is in the buffer, so that
// reading it cannot wait.
func (r *ChunkedReader) lineBuffered() bool {
	buf, _ := r.br.Peek(r.br.Buffered())
	return bytes.IndexByte(buf, '\n') >= 0
}

func (r *ChunkedReader) fail(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	r.err = err
	return err
}

// fill reads more bytes into the buffer, at least one.
func (r *ChunkedReader) fill() error {
	if r.wait != nil {
		r.wait.Wait()
	}
	_, err := r.br.Peek(r.br.Buffered() + 1)
	return err
}

// nextChunk reads a chunk-size line: 1*HEXDIG (at most 15), optional
// extensions, CRLF. The last chunk (size 0) sets last: the trailer
// section follows.
func (r *ChunkedReader) nextChunk() error {
	line, lineLen, err := r.crlfLine(MaxChunkMeta-r.meta+15+2, false)
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
		return &Error{Reason: "malformed chunk size"}
	}
	if r.meta += lineLen - len(size); r.meta > MaxChunkMeta {
		return ErrChunkMetaTooLarge
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
			return &Error{Reason: "malformed chunk size"}
		}
		n = n<<4 | int64(d)
	}
	if len(ext) > 0 {
		if t := TrimOWS(ext); len(t) > 0 && t[0] != ';' {
			return &Error{Reason: "malformed chunk extension"}
		}
	}
	if n > 0 {
		r.remaining = n
	} else {
		r.last = true
	}
	return nil
}

// trailers reads the trailer section after the last chunk, to its empty
// line.
func (r *ChunkedReader) trailers() error {
	for {
		line, n, err := r.crlfLine(MaxChunkMeta-r.meta+2, r.trailer != nil)
		if err != nil {
			return err
		}
		if r.meta += n + 2; r.meta > MaxChunkMeta {
			return ErrChunkMetaTooLarge
		}
		if n == 0 {
			r.done = true
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return &Error{Reason: "obsolete line folding in trailer"}
		}
		if r.trailer != nil {
			if err := r.addTrailer(line); err != nil {
				return err
			}
		}
	}
}

// addTrailer parses a trailer field line ("name: value") into *r.trailer.
func (r *ChunkedReader) addTrailer(line []byte) error {
	i := 0
	for i < len(line) && line[i] != ':' {
		i++
	}
	if i == len(line) || !IsToken(line[:i]) {
		return &Error{Reason: "malformed trailer field"}
	}
	if *r.trailer == nil {
		*r.trailer = make(http.Header)
	}
	k := http.CanonicalHeaderKey(string(line[:i]))
	(*r.trailer)[k] = append((*r.trailer)[k], string(TrimOWS(line[i+1:])))
	return nil
}

// crlfLine reads one chunk-size or trailer line, at most limit bytes long
// with its CRLF. It returns the line (whole when full, else its first
// len(r.head) bytes with each run of spaces and tabs kept as its first
// byte: enough for a chunk size and the byte after its whitespace; valid
// until the next call) and the line's length without its CRLF. The caller
// charges the meta budget.
func (r *ChunkedReader) crlfLine(limit int, full bool) ([]byte, int, error) {
	br := r.br
	kept, n, read := 0, 0, 0
	r.line = r.line[:0]
	cr := false // the previous byte was CR
	for {
		if br.Buffered() == 0 {
			if err := r.fill(); err != nil {
				return nil, 0, err
			}
		}
		buf, _ := br.Peek(br.Buffered())
		for i, c := range buf {
			switch {
			case c == '\n':
				br.Discard(i + 1)
				if read+i+1 > limit {
					return nil, 0, ErrChunkMetaTooLarge
				}
				if !cr {
					return nil, 0, &Error{Reason: "chunk line not terminated by CRLF"}
				}
				if full {
					return r.line, n, nil
				}
				return r.head[:kept], n, nil
			case cr:
				return nil, 0, &Error{Reason: "bare CR in chunk line"}
			case c == '\r':
				cr = true
			case (c < ' ' && c != '\t') || c == 0x7f:
				return nil, 0, &Error{Reason: "control character in chunk line"}
			default:
				if full {
					r.line = append(r.line, c)
				} else if kept < len(r.head) && !(isOWS(c) && kept > 0 && isOWS(r.head[kept-1])) {
					r.head[kept] = c
					kept++
				}
				n++
			}
		}
		br.Discard(len(buf))
		if read += len(buf); read > limit {
			return nil, 0, ErrChunkMetaTooLarge
		}
	}
}

// endChunk consumes the CRLF after a chunk's data.
func (r *ChunkedReader) endChunk() error {
	for r.br.Buffered() < 2 {
		if err := r.fill(); err != nil {
			return err
		}
	}
	crlf, _ := r.br.Peek(2)
	if crlf[0] != '\r' || crlf[1] != '\n' {
		return &Error{Reason: "chunk data longer than its size, or not followed by CRLF"}
	}
	r.br.Discard(2)
	r.crlf = false
	return nil
}
