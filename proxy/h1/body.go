package h1

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/sluice-lb/sluice/proxy/internal/wire"
)

// errBodyTimeout is a request body that stalled for the body timeout.
var errBodyTimeout = &Error{Status: http.StatusRequestTimeout, Reason: "request body timeout"}

// errBodyIncomplete is a request body cut short by the client.
var errBodyIncomplete = &Error{Status: http.StatusBadRequest, Reason: "request body incomplete"}

// body is the request body of one request on a connection. Reads wait at
// most the body timeout for each byte from the client; every failure is an
// *Error (the client's fault), and after one the connection is not reused.
// It is read by the handler's goroutine only; Close does not drain. A
// chunked body is decoded by wire.ChunkedReader (trailers read and dropped;
// chunk extensions and trailers bounded by wire.MaxChunkMeta).
type body struct {
	c         *conn
	chunked   bool
	remaining int64 // identity: bytes left
	expect100 bool  // 100 Continue is owed before the first read
	done      bool  // read to its end
	err       error // sticky
	closed    bool
	cr        wire.ChunkedReader // when chunked
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
	if b.chunked {
		n, err := b.cr.Read(p)
		if err != nil && err != io.EOF {
			err = b.mapErr(err)
		}
		return n, err
	}
	if b.remaining == 0 {
		return 0, io.EOF
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
	}
	return n, io.EOF
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
	var we *wire.Error
	if errors.As(err, &we) {
		return badRequest(we.Reason)
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

// bodyWaiter arms the body deadline before a chunked body's reads wait.
type bodyWaiter conn

func (w *bodyWaiter) Wait() { w.rwc.SetReadDeadline(time.Now().Add(w.t.BodyTimeout)) }
