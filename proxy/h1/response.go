package h1

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluice-lb/sluice/proxy/internal/wire"
)

// response is the http.ResponseWriter of one request. It is used by the
// handler's goroutine only (ReverseProxy's 1xx callback runs on it too).
//
// Framing: a Content-Length set by the handler is honoured and enforced;
// otherwise an HTTP/1.1 answer is chunked and an HTTP/1.0 answer ends when
// the connection closes. HEAD requests and 1xx, 204 and 304 answers carry no
// body. A handler that writes nothing gets Content-Length: 0.
type response struct {
	c          *conn
	req        *http.Request
	header     http.Header
	status     int
	wrote      bool // status line and headers are out
	sent100    bool
	chunked    bool
	noBody     bool  // HEAD, 1xx, 204, 304
	cl         int64 // declared Content-Length, -1 if none
	written    int64
	closeAfter bool
	hijacked   bool
	// writeThrough: see WriteThrough.
	writeThrough bool
	// body is the request's body; nil when it has none.
	body *body
}

// WriteThrough is implemented by the HTTP/1.1 server's ResponseWriter.
// After SetWriteThrough(true) every Write is sent to the client before it
// returns (the head with the first one), except a Write that completes
// the declared Content-Length: that one goes out with the end of the
// answer, when the handler returns, so that a small answer is one write.
// A proxy that passes an answer on as it comes uses it instead of a Flush
// after each Write (which would send the head alone first).
type WriteThrough interface {
	SetWriteThrough(bool)
}

var _ WriteThrough = (*response)(nil)

// SetWriteThrough sets write-through; see WriteThrough.
func (w *response) SetWriteThrough(on bool) { w.writeThrough = on }

var (
	_ http.ResponseWriter = (*response)(nil)
	_ http.Flusher        = (*response)(nil)
	_ http.Hijacker       = (*response)(nil)
)

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.wrote || w.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic("h1: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.interim(code)
		return
	}
	if w.status == 0 {
		w.status = code
	}
}

// interim writes a 1xx answer with the current headers. A 100 Continue is
// written at most once (sluice sends its own when the body is first read).
func (w *response) interim(code int) {
	if code == http.StatusContinue {
		if w.sent100 || w.req.ProtoMinor == 0 {
			return
		}
		w.sent100 = true
	}
	if w.req.ProtoMinor == 0 {
		return // HTTP/1.0 clients do not expect interim answers
	}
	bw := w.c.bw
	writeStatusLine(bw, code)
	writeHeaders(bw, w.header)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		w.c.broken = true
	}
}

// continue100 sends 100 Continue before the body is first read, unless a
// final answer has started.
func (w *response) continue100() {
	if !w.wrote && w.status == 0 {
		saved := w.header
		w.header = nil
		w.interim(http.StatusContinue)
		w.header = saved
	}
}

func (w *response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wrote {
		w.commit(false)
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		w.closeAfter = true
		return 0, http.ErrContentLength
	}
	if len(p) == 0 {
		return 0, nil
	}
	w.written += int64(len(p))
	bw := w.c.bw
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		_, err := bw.WriteString("\r\n")
		if err == nil && w.writeThrough {
			err = bw.Flush()
		}
		if err != nil {
			w.c.broken = true
			return 0, err
		}
		return len(p), nil
	}
	n, err := bw.Write(p)
	if err == nil && w.writeThrough && w.written != w.cl {
		err = bw.Flush()
	}
	if err != nil {
		w.c.broken = true
	}
	return n, err
}

// WriteString avoids a copy for io.WriteString callers.
func (w *response) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

// Flush sends the headers if they are not out yet and everything buffered.
func (w *response) Flush() {
	if w.hijacked {
		return
	}
	if !w.wrote {
		w.commit(false)
	}
	if err := w.c.bw.Flush(); err != nil {
		w.c.broken = true
	}
}

// FlushError is Flush with its error, for http.ResponseController.
func (w *response) FlushError() error {
	w.Flush()
	if w.c.broken {
		return errWriteFailed
	}
	return nil
}

var errWriteFailed = errors.New("h1: write to client failed")

// SetReadDeadline and SetWriteDeadline serve http.ResponseController.
func (w *response) SetReadDeadline(t time.Time) error  { return w.c.rwc.SetReadDeadline(t) }
func (w *response) SetWriteDeadline(t time.Time) error { return w.c.rwc.SetWriteDeadline(t) }

// EnableFullDuplex is a no-op: reading the request body while the answer is
// written is always allowed.
func (w *response) EnableFullDuplex() error { return nil }

// commit writes the status line and headers. final is set when the handler
// has returned, so an answer without a written body gets Content-Length: 0.
func (w *response) commit(final bool) {
	w.wrote = true
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.header
	code := w.status
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || (code >= 100 && code < 200)
	w.cl = -1
	if v := h["Content-Length"]; len(v) > 0 {
		if n, ok := parseContentLength([]byte(v[0])); ok && len(v) == 1 {
			w.cl = n
		} else {
			delete(h, "Content-Length")
		}
	}
	delete(h, "Transfer-Encoding")
	if wire.HasToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	delete(h, "Connection")
	delete(h, "Keep-Alive")
	switch {
	case w.noBody:
		if code == http.StatusNoContent || code < 200 {
			delete(h, "Content-Length")
		}
	case w.cl >= 0:
	case final:
		w.cl = 0
		h["Content-Length"] = zeroLength
	case w.req.ProtoMinor == 1:
		w.chunked = true
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	// A body not read to its end when the answer starts is taken to be
	// left unread: the connection closes after the answer (see
	// conn.serveRequest), and the answer says so.
	if w.c.srv.shuttingDown() || w.req.Close || w.c.broken || (w.body != nil && !w.body.done) {
		w.closeAfter = true
	}
	bw := w.c.bw
	writeStatusLine(bw, code)
	writeHeaders(bw, h)
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	switch {
	case w.closeAfter:
		bw.WriteString("Connection: close\r\n")
	case w.req.ProtoMinor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
}

var zeroLength = []string{"0"}

// finish ends the answer after the handler returned: headers if none were
// sent, the last chunk with any trailers, and a flush. It reports whether
// the connection may carry another request.
func (w *response) finish() bool {
	if w.hijacked {
		return false
	}
	if !w.wrote {
		w.commit(true)
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	}
	if err := bw.Flush(); err != nil {
		w.c.broken = true
	}
	if w.cl >= 0 && !w.noBody && w.written != w.cl {
		return false // the client waits for bytes that will not come
	}
	return !w.closeAfter && !w.c.broken
}

// writeTrailers writes the values of the trailers the handler announced in
// its Trailer header, and of keys prefixed with http.TrailerPrefix.
func (w *response) writeTrailers() {
	bw := w.c.bw
	for _, decl := range w.header["Trailer"] {
		for k := range strings.SplitSeq(decl, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if k == "" || isForbiddenTrailer(k) {
				continue
			}
			for _, v := range w.header[k] {
				writeHeaderLine(bw, k, v)
			}
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && name != "" && !isForbiddenTrailer(http.CanonicalHeaderKey(name)) {
			for _, v := range vv {
				writeHeaderLine(bw, name, v)
			}
		}
	}
}

func isForbiddenTrailer(k string) bool {
	switch k {
	case "Content-Length", "Transfer-Encoding", "Connection", "Host", "Trailer":
		return true
	}
	return false
}

// Hijack hands the connection to the caller. Bytes the client sent after
// the request head that sluice already buffered are read first from the
// returned conn (and from the returned reader), so nothing a client sends
// right after an Upgrade request is lost. Deadlines are cleared.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wrote {
		return nil, nil, errors.New("h1: hijack after the answer started")
	}
	c := w.c
	c.r.abortPendingRead()
	w.hijacked = true
	c.hijacked = true
	c.rwc.SetDeadline(time.Time{})
	probePeer(c.netConn)
	if err := c.bw.Flush(); err != nil {
		return nil, nil, err
	}
	hc := &hijackedConn{Conn: c.rwc, counter: c.closer, srv: c.srv, tlsState: c.tlsState}
	if n := c.br.Buffered(); n > 0 {
		buf, _ := c.br.Peek(n)
		hc.pending = append([]byte(nil), buf...)
	}
	if c.r.hasByte {
		// A byte the background read took comes after what bufio holds.
		hc.pending = append(hc.pending, c.r.byteBuf[0])
		c.r.hasByte = false
	}
	rw := bufio.NewReadWriter(bufio.NewReaderSize(hc, 4096), bufio.NewWriterSize(hc, 4096))
	return hc, rw, nil
}

// probePeer turns on TCP keep-alive probes (Go's defaults) on a client
// connection handed on: neither an upgraded stream nor an HTTP/2
// connection with a stream open has an idle timeout here, and a listener
// may have accepted it without probes (sluice's do), so that a peer gone
// without a FIN or RST would hold it for good. Other connections: no-op.
func probePeer(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true})
	}
}

// hijackedConn is a client connection handed on (hijacked, or to the
// HTTP/2 server) whose first reads return the bytes sluice buffered before.
// It is deliberately no tls.Conn and has no ConnectionState method, even
// over TLS: net/http must serve it as h2c (see Server.init).
type hijackedConn struct {
	net.Conn
	pending  []byte
	counter  ConnCloser // told of the first Close, when not nil
	srv      *Server    // its slot is freed at the first Close
	tlsState *tls.ConnectionState
	streams  atomic.Int32 // HTTP/2 streams in a handler
	closed   atomic.Bool
	// firstStream closes an HTTP/2 connection whose first stream has not
	// started by its HeaderTimeout; started is set by the first stream or
	// by the timer, whichever comes first. nil for hijacked connections.
	firstStream *time.Timer
	started     atomic.Bool
}

// Close closes the connection; the first Close tells the ConnCounter and
// frees the connection's slot (Server.MaxConns).
func (h *hijackedConn) Close() error {
	err := h.Conn.Close()
	if h.closed.CompareAndSwap(false, true) {
		if h.firstStream != nil {
			h.firstStream.Stop()
		}
		if h.counter != nil {
			h.counter.ConnClosed()
		}
		h.srv.connDone()
	}
	return err
}

func (h *hijackedConn) Read(p []byte) (int, error) {
	if len(h.pending) > 0 {
		n := copy(p, h.pending)
		h.pending = h.pending[n:]
		return n, nil
	}
	return h.Conn.Read(p)
}

// CloseWrite half-closes a TCP connection, so an upgraded stream can pass
// the client's EOF on.
func (h *hijackedConn) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.Conn.Close()
}

// writeStatusLine writes "HTTP/1.1 CODE TEXT\r\n".
func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	var buf [3]byte
	bw.Write(strconv.AppendInt(buf[:0], int64(code), 10))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
}

// writeHeaders writes h; values with CR or LF have them replaced by spaces
// so a value cannot start a line of its own. Trailer values (keys with
// http.TrailerPrefix) are skipped.
func writeHeaders(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) || !wire.IsToken(k) {
			continue
		}
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
}

func writeHeaderLine(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' {
				return ' '
			}
			return r
		}, v)
	}
	bw.WriteString(v)
	bw.WriteString("\r\n")
}
