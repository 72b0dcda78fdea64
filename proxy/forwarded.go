package proxy

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
)

// forwarding sets the X-Forwarded-* headers of outgoing requests and finds
// the client address that ip_hash and source_ip stickiness use.
//
// From a peer that is not a trusted proxy, X-Forwarded-For is replaced by
// the peer's address, X-Forwarded-Proto by the listener's scheme and
// X-Forwarded-Host by the request's Host; what the client sent is dropped.
// From a trusted peer, the peer's address is appended to X-Forwarded-For
// and X-Forwarded-Proto and X-Forwarded-Host are kept when present. A
// Forwarded header (RFC 7239) is always removed, and so are the spellings
// of these four names with underscores (see forwardingAlias).
//
// The client address is the peer's, or behind trusted proxies the first
// address in X-Forwarded-For, reading from the right, that is not a trusted
// proxy; an entry that does not parse ends the walk at the hop that
// reported it.
type forwarding struct {
	trusted []netip.Prefix
}

func (f *forwarding) trusts(a netip.Addr) bool {
	for _, p := range f.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func peerAddr(remote string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// set writes the forwarding headers of pr.Out (ReverseProxy has removed
// the client's from it).
func (f *forwarding) set(pr *httputil.ProxyRequest) { f.setHeader(pr.In, pr.Out.Header) }

// setHeader writes the forwarding headers of the request in into out,
// removing any that out holds; out may be in.Header.
func (f *forwarding) setHeader(in *http.Request, out http.Header) {
	peer := peerAddr(in.RemoteAddr)
	peerStr := ""
	if peer.IsValid() {
		peerStr = peer.String()
	}
	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	host := in.Host
	if peer.IsValid() && len(f.trusted) > 0 && f.trusts(peer) {
		if prior := in.Header["X-Forwarded-For"]; len(prior) > 0 {
			peerStr = strings.Join(prior, ", ") + ", " + peerStr
		}
		if v := in.Header["X-Forwarded-Proto"]; len(v) > 0 {
			proto = v[0]
		}
		if v := in.Header["X-Forwarded-Host"]; len(v) > 0 {
			host = v[0]
		}
	}
	// One backing array for the three values; each slice's capacity is
	// its length, so an append to one copies instead of overwriting the next.
	v := &[3]string{peerStr, proto, host}
	for k := range out {
		if strings.IndexByte(k, '_') >= 0 && forwardingAlias(k) {
			delete(out, k)
		}
	}
	delete(out, "Forwarded")
	delete(out, "X-Forwarded-Host")
	if peerStr != "" {
		out["X-Forwarded-For"] = v[0:1:1]
	} else {
		delete(out, "X-Forwarded-For")
	}
	out["X-Forwarded-Proto"] = v[1:2:2]
	if host != "" {
		out["X-Forwarded-Host"] = v[2:3:3]
	}
}

// forwardingAlias reports whether the field name k spells one of the
// forwarding headers with underscores for dashes (X_Forwarded_For). CGI,
// PHP, WSGI and Rack read both spellings as the same variable
// (HTTP_X_FORWARDED_FOR), so a client could set what sluice replaces.
func forwardingAlias(k string) bool {
	for _, name := range [...]string{"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"} {
		if len(k) != len(name) {
			continue
		}
		i := 0
		for ; i < len(k); i++ {
			c := k[i]
			if c == '_' {
				c = '-'
			} else if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != name[i] {
				break
			}
		}
		if i == len(k) {
			return true
		}
	}
	return false
}

// client returns the client address of an outgoing request whose
// X-Forwarded-For set has written (one line, ending with the peer).
func (f *forwarding) client(req *http.Request) netip.Addr {
	peer := peerAddr(req.RemoteAddr)
	if len(f.trusted) == 0 || !f.trusts(peer) {
		return peer
	}
	client := peer
	line := ""
	if v := req.Header["X-Forwarded-For"]; len(v) > 0 {
		line = v[0]
	}
	for line != "" {
		var hop string
		if i := strings.LastIndexByte(line, ','); i >= 0 {
			hop, line = line[i+1:], line[:i]
		} else {
			hop, line = line, ""
		}
		a, err := netip.ParseAddr(strings.TrimSpace(hop))
		if err != nil {
			return client
		}
		client = a.Unmap()
		if !f.trusts(client) {
			return client
		}
	}
	return client
}
