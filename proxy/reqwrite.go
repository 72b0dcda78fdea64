package proxy

import (
	"bufio"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
)

// writeRequest writes req's head and body on bw exactly as req.Write does.
// A GET or HEAD without a body, with a plain Host and at most
// maxFastFields header fields without CR or LF, is written by hand,
// allocating only the request target; any other goes through req.Write.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	if !plainHead(req) {
		return req.Write(bw)
	}
	var arr [maxFastFields]string
	keys := arr[:0]
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if len(keys) == maxFastFields || !isToken(k) {
			return req.Write(bw)
		}
		for _, v := range vv {
			if strings.ContainsAny(v, "\r\n") {
				return req.Write(bw)
			}
		}
		keys = append(keys, k)
	}
	ua := "Go-http-client/1.1"
	if vv, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(vv) > 0 {
			ua = vv[0]
		}
		if strings.ContainsAny(ua, "\r\n") {
			return req.Write(bw)
		}
	}
	uri := req.URL.RequestURI()
	for i := 0; i < len(uri); i++ {
		if uri[i] < ' ' || uri[i] == 0x7f {
			return req.Write(bw)
		}
	}
	slices.Sort(keys)
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	if ua != "" {
		// As Request.Write: a blank value is written, trimmed to nothing.
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(ua))
		bw.WriteString("\r\n")
	}
	for _, k := range keys {
		for _, v := range req.Header[k] {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// maxFastFields is the most header fields writeRequest writes by hand.
const maxFastFields = 32

// plainHead reports whether writeRequest may write req by hand.
func plainHead(req *http.Request) bool {
	if (req.Method != http.MethodGet && req.Method != http.MethodHead) || (req.Body != nil && req.Body != http.NoBody) ||
		req.ContentLength != 0 || req.Close || len(req.TransferEncoding) > 0 || req.Trailer != nil ||
		req.URL.Opaque != "" || req.Host == "" {
		return false
	}
	for i := 0; i < len(req.Host); i++ {
		c := req.Host[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == ':' || c == '[' || c == ']' || c == '_') {
			return false
		}
	}
	return true
}

// isToken reports whether s is an RFC 9110 token (a valid field name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}
