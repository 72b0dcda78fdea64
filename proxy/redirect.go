package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// redirectHTTPS answers r with 308 to the same host, path and query over
// https, or 400 when its Host is not a host name or an IP literal, or its
// target is not a path. The request body is not read.
func (h *router) redirectHTTPS(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	status := http.StatusPermanentRedirect
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/" // an absolute-form target without a path ("GET http://a.example HTTP/1.1")
	}
	loc, ok := redirectLocation(r.Host, h.httpsPort, path, r.URL.RawQuery)
	if ok {
		hd := w.Header()
		hd.Set("Location", loc)
		hd.Set("Content-Length", "0")
		w.WriteHeader(status)
	} else {
		status = http.StatusBadRequest
		writeJSONError(w, status, "invalid host for redirect", "")
	}
	h.redirects.Observe(status, time.Since(start))
	if h.log != nil {
		h.log.write(&logEntry{listener: h.listener, client: r.RemoteAddr, method: r.Method, path: r.URL.Path,
			status: status, start: start})
	}
}

// redirectLocation builds https://host[port]path[?query] from a request's
// Host (with or without a port, which is dropped) or reports false: the
// host must be a DNS name (letters, digits, '-', '_' in dot-separated
// labels of 1 to 63 bytes, at most 253 in all, an optional final dot) or
// an IP literal (IPv6 in brackets, without zone), so no userinfo, no
// second authority and no control byte reaches the Location; path must
// start with "/" (so "//x" stays a path under host); path and query must
// hold no byte below 0x21 nor 0x7f and above.
func redirectLocation(hostport, port, path, query string) (string, bool) {
	host, ok := redirectHost(hostport)
	if !ok || path == "" || path[0] != '/' || !printable(path) || !printable(query) {
		return "", false
	}
	var b strings.Builder
	b.Grow(len("https://") + len(host) + len(port) + len(path) + 1 + len(query))
	b.WriteString("https://")
	b.WriteString(host)
	b.WriteString(port)
	b.WriteString(path)
	if query != "" {
		b.WriteByte('?')
		b.WriteString(query)
	}
	return b.String(), true
}

// redirectHost returns the host of a Host header value, lowercased and
// without its port, when it is a valid DNS name or IP literal.
func redirectHost(hostport string) (string, bool) {
	host := hostport
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 || !validPort(hostport[end+1:]) {
			return "", false
		}
		a, err := netip.ParseAddr(hostport[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", false
		}
		return "[" + a.String() + "]", true
	}
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		if !validPort(hostport[i:]) {
			return "", false
		}
		host = hostport[:i]
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if !a.Is4() {
			return "", false // IPv6 must be bracketed
		}
		return a.String(), true
	}
	if !validHostName(host) {
		return "", false
	}
	return strings.ToLower(host), true
}

// validPort reports whether s is "" or ":" followed by 1 to 5 digits.
func validPort(s string) bool {
	if s == "" {
		return true
	}
	if s[0] != ':' || len(s) < 2 || len(s) > 6 {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// validHostName reports whether s is a DNS name as redirectLocation says.
func validHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// printable reports whether s holds only bytes 0x21 to 0x7e.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
