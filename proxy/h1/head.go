package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"github.com/sluice-lb/sluice/proxy/internal/wire"
)

// Error is a request that sluice refuses on the client's account: it is
// answered with Status (unless the client is gone) and the connection is
// closed after the answer, because the framing of what follows on it
// cannot be trusted.
type Error struct {
	Status int    // 400, 405, 408, 417, 431, 501 or 505 (502 from the server itself)
	Reason string // short, for the answer's body and the log
}

func (e *Error) Error() string { return "client error: " + e.Reason }

func badRequest(reason string) *Error {
	return &Error{Status: http.StatusBadRequest, Reason: reason}
}

// Limits of a request head.
const (
	// DefaultMaxHeaderBytes bounds a request head: the request line and
	// every header line (431 beyond it). HTTP/2 streams get the same bound
	// as their header list size (net/http's accounting, also 431).
	DefaultMaxHeaderBytes = 64 << 10
	// maxHeaderLines bounds the number of header lines (431 beyond it).
	maxHeaderLines = 256
)

// head is a parsed request head before it becomes an *http.Request.
type head struct {
	req           *http.Request
	chunked       bool
	contentLength int64 // -1: none given
	expect100     bool
	upgrade       bool
	closeAfter    bool // the client asked to close, or HTTP/1.0 without keep-alive
}

// lineReader reads CRLF- or LF-terminated lines of a head from br within a
// byte budget. A line longer than br's buffer is assembled in scratch.
type lineReader struct {
	br      *bufio.Reader
	budget  int
	scratch []byte
}

var errHeadTooLarge = &Error{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "request head too large"}

// line returns the next line without its terminator. The slice is valid
// until the next call. A bare CR inside the line is an error.
func (lr *lineReader) line() ([]byte, error) {
	lr.scratch = lr.scratch[:0]
	var l []byte
	for {
		frag, err := lr.br.ReadSlice('\n')
		lr.budget -= len(frag)
		if lr.budget < 0 {
			return nil, errHeadTooLarge
		}
		if err == nil {
			if len(lr.scratch) > 0 {
				lr.scratch = append(lr.scratch, frag...)
				l = lr.scratch
			} else {
				l = frag
			}
			break
		}
		if err == bufio.ErrBufferFull {
			lr.scratch = append(lr.scratch, frag...)
			continue
		}
		return nil, err
	}
	l = l[:len(l)-1]
	if len(l) > 0 && l[len(l)-1] == '\r' {
		l = l[:len(l)-1]
	}
	if bytes.IndexByte(l, '\r') >= 0 {
		return nil, badRequest("bare CR in request head")
	}
	return l, nil
}

// readHead reads and validates one request head from br. Framing is
// strict (RFC 9112): a request with both Content-Length and
// Transfer-Encoding, an HTTP/1.0 request with Transfer-Encoding and any
// obs-folded header line are refused, with the connection closed after the
// answer. Errors are *Error, or the read error when the head did not arrive
// whole (io.EOF before its first byte is returned as is).
func readHead(br *bufio.Reader, maxBytes int) (*head, error) {
	lr := lineReader{br: br, budget: maxBytes}
	line, err := lr.line()
	if err != nil {
		return nil, err
	}
	// RFC 9112 §2.2: a server SHOULD ignore at least one empty line
	// before the request line.
	if len(line) == 0 {
		if line, err = lr.line(); err != nil {
			return nil, err
		}
	}
	h := &head{contentLength: -1}
	req := &http.Request{Header: make(http.Header, 8)}
	h.req = req

	method, rest, ok1 := bytes.Cut(line, []byte{' '})
	target, version, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || len(method) == 0 || len(target) == 0 || !wire.IsToken(method) {
		return nil, badRequest("malformed request line")
	}
	switch string(version) {
	case "HTTP/1.1":
		req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/1.1", 1, 1
	case "HTTP/1.0":
		req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/1.0", 1, 0
	default:
		if len(version) == 8 && bytes.HasPrefix(version, []byte("HTTP/")) && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]) {
			return nil, &Error{Status: http.StatusHTTPVersionNotSupported, Reason: "HTTP version not supported"}
		}
		return nil, badRequest("malformed request line")
	}
	req.Method = methodString(method)
	for _, c := range target {
		if c <= ' ' || c >= 0x7f {
			return nil, badRequest("invalid character in request target")
		}
	}
	req.RequestURI = string(target)
	switch {
	case req.Method == http.MethodConnect:
		return nil, &Error{Status: http.StatusMethodNotAllowed, Reason: "CONNECT is not supported"}
	case req.RequestURI == "*":
		if req.Method != http.MethodOptions {
			return nil, badRequest("asterisk-form target without OPTIONS")
		}
		req.URL = &url.URL{Path: "*"}
	default:
		if req.RequestURI[0] != '/' && !hasHTTPScheme(req.RequestURI) {
			return nil, badRequest("malformed request target")
		}
		if req.URL, err = url.ParseRequestURI(req.RequestURI); err != nil {
			return nil, badRequest("malformed request target")
		}
	}

	// Header lines.
	var hosts, cls, tes int
	var clValue []byte
	lines := 0
	for {
		line, err := lr.line()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		if lines++; lines > maxHeaderLines {
			return nil, errHeadTooLarge
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, badRequest("obsolete line folding in request header")
		}
		name, value, ok := bytes.Cut(line, []byte{':'})
		if !ok || len(name) == 0 || !wire.IsToken(name) {
			return nil, badRequest("malformed request header line")
		}
		value = wire.TrimOWS(value)
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return nil, badRequest("invalid character in request header value")
			}
		}
		key := canonicalKey(name)
		v := string(value)
		switch key {
		case "Host":
			hosts++
		case "Content-Length":
			// Several equal values (or a list of equal values) are one.
			for part := range strings.SplitSeq(v, ",") {
				part = strings.Trim(part, " \t")
				if clValue == nil {
					clValue = []byte(part)
				} else if part != string(clValue) {
					return nil, badRequest("conflicting Content-Length")
				}
				cls++
			}
		case "Transfer-Encoding":
			tes++
		}
		req.Header[key] = append(req.Header[key], v)
	}

	// Host: exactly one in HTTP/1.1 (RFC 9112 §3.2).
	if hosts > 1 || (hosts == 0 && req.ProtoMinor == 1) {
		return nil, badRequest("missing or repeated Host header")
	}
	if hosts == 1 {
		req.Host = req.Header["Host"][0]
		if !validHost(req.Host) {
			return nil, badRequest("malformed Host header")
		}
	}
	if req.URL.Host != "" || req.URL.Scheme != "" {
		// absolute-form: the target's authority wins over Host, and is
		// held to the same rules.
		if req.URL.User != nil || req.URL.Host == "" || !validHost(req.URL.Host) {
			return nil, badRequest("malformed authority in request target")
		}
		req.Host = req.URL.Host
	}

	// Framing (RFC 9112 §6).
	if tes > 0 {
		if req.ProtoMinor == 0 {
			return nil, badRequest("Transfer-Encoding in an HTTP/1.0 request")
		}
		if cls > 0 {
			return nil, badRequest("both Content-Length and Transfer-Encoding")
		}
		codings := strings.Join(req.Header["Transfer-Encoding"], ",")
		var last string
		n := 0
		for c := range strings.SplitSeq(codings, ",") {
			c = strings.Trim(c, " \t")
			if c == "" {
				continue
			}
			n++
			last = c
		}
		switch {
		case n == 1 && strings.EqualFold(last, "chunked"):
			h.chunked = true
			req.TransferEncoding = []string{"chunked"}
			req.ContentLength = -1
		case n == 0 || !strings.EqualFold(last, "chunked"):
			return nil, badRequest("Transfer-Encoding does not end in chunked")
		default:
			return nil, &Error{Status: http.StatusNotImplemented, Reason: "unsupported transfer coding"}
		}
		delete(req.Header, "Transfer-Encoding")
	} else if cls > 0 {
		n, ok := parseContentLength(clValue)
		if !ok {
			return nil, badRequest("malformed Content-Length")
		}
		h.contentLength = n
		req.ContentLength = n
	}

	// Connection management and expectations.
	conn := req.Header["Connection"]
	if req.ProtoMinor == 0 {
		h.closeAfter = !wire.HasToken(conn, "keep-alive")
	} else {
		h.closeAfter = wire.HasToken(conn, "close")
	}
	req.Close = h.closeAfter
	if ex, ok := req.Header["Expect"]; ok {
		if len(ex) != 1 || !strings.EqualFold(strings.TrimSpace(ex[0]), "100-continue") {
			return nil, &Error{Status: http.StatusExpectationFailed, Reason: "unsupported expectation"}
		}
		// sluice answers the expectation itself when the body is first
		// read; the instance never sees it.
		delete(req.Header, "Expect")
		h.expect100 = req.ProtoMinor == 1 && (h.chunked || h.contentLength > 0)
	}
	h.upgrade = wire.HasToken(conn, "upgrade") && len(req.Header["Upgrade"]) > 0
	return h, nil
}

// methodString returns common methods without allocating.
func methodString(m []byte) string {
	switch string(m) {
	case "GET":
		return http.MethodGet
	case "HEAD":
		return http.MethodHead
	case "POST":
		return http.MethodPost
	case "PUT":
		return http.MethodPut
	case "DELETE":
		return http.MethodDelete
	case "OPTIONS":
		return http.MethodOptions
	case "PATCH":
		return http.MethodPatch
	case "CONNECT":
		return http.MethodConnect
	case "TRACE":
		return http.MethodTrace
	}
	return string(m)
}

// canonicalKey returns the canonical form of a header name, without
// allocating for common names.
func canonicalKey(name []byte) string {
	switch string(name) {
	case "Host", "host":
		return "Host"
	case "User-Agent", "user-agent":
		return "User-Agent"
	case "Accept", "accept":
		return "Accept"
	case "Content-Length", "content-length":
		return "Content-Length"
	case "Content-Type", "content-type":
		return "Content-Type"
	case "Connection", "connection":
		return "Connection"
	case "Transfer-Encoding", "transfer-encoding":
		return "Transfer-Encoding"
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

func hasHTTPScheme(s string) bool {
	return len(s) > 7 && (strings.EqualFold(s[:7], "http://") || (len(s) > 8 && strings.EqualFold(s[:8], "https://")))
}

// parseContentLength accepts 1*DIGIT that fits in an int64.
func parseContentLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// validHost accepts an RFC 3986 authority without userinfo: reg-name,
// IPv4 or [IPv6], with an optional port; empty is allowed (RFC 9112 §3.2).
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:[]%", c) >= 0:
		default:
			return false
		}
	}
	return true
}
