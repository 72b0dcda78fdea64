package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// h2raw is a hand-written HTTP/2 client with prior knowledge: it sends
// frames as given (HPACK literals without indexing or Huffman) and reads
// what the server answers on one stream. It only decodes :status.
type h2raw struct {
	c  net.Conn
	br *bufio.Reader
}

func dialH2Raw(t *testing.T, url string) *h2raw {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return newH2Raw(t, c)
}

// dialH2RawTLS is dialH2Raw over TLS with ALPN h2.
func dialH2RawTLS(t *testing.T, addr string, roots *x509.CertPool) *h2raw {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN chose %q", p)
	}
	return newH2Raw(t, c)
}

func newH2Raw(t *testing.T, c net.Conn) *h2raw {
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	h := &h2raw{c: c, br: bufio.NewReader(c)}
	// SETTINGS_HEADER_TABLE_SIZE 0: the server's encoder keeps no dynamic
	// table, so that every :status is static or literal.
	h.frame(0x4, 0, 0, []byte{0, 1, 0, 0, 0, 0})
	return h
}

func (h *h2raw) frame(typ, flags byte, stream uint32, payload []byte) {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream)
	h.c.Write(append(hdr[:], payload...))
}

// headers sends a HEADERS frame of literal fields (name, value pairs).
func (h *h2raw) headers(stream uint32, endStream bool, fields ...string) {
	var b []byte
	for i := 0; i+1 < len(fields); i += 2 {
		b = append(b, 0x00)
		b = hpackLen(b, fields[i])
		b = hpackLen(b, fields[i+1])
	}
	flags := byte(0x4) // END_HEADERS
	if endStream {
		flags |= 0x1
	}
	h.frame(0x1, flags, stream, b)
}

func hpackLen(b []byte, s string) []byte {
	n := len(s)
	if n < 127 {
		b = append(b, byte(n))
	} else {
		b = append(b, 127)
		n -= 127
		for n >= 128 {
			b = append(b, byte(n%128+128))
			n /= 128
		}
		b = append(b, byte(n))
	}
	return append(b, s...)
}

func (h *h2raw) data(stream uint32, endStream bool, p string) {
	var flags byte
	if endStream {
		flags = 1
	}
	h.frame(0x0, flags, stream, []byte(p))
}

// h2Result is what the server did with one stream.
type h2Result struct {
	status int    // 0: no HEADERS
	body   string // DATA payloads
	rst    bool   // RST_STREAM
	code   uint32 // its error code
	goaway bool
	ended  bool // END_STREAM seen
}

// result reads frames until stream ends (END_STREAM, RST_STREAM, GOAWAY or
// the connection's end), acknowledging SETTINGS and PING.
func (h *h2raw) result(stream uint32) h2Result {
	var r h2Result
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
			return r
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags, id := hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:])&0x7fffffff
		p := make([]byte, n)
		if _, err := io.ReadFull(h.br, p); err != nil {
			return r
		}
		switch typ {
		case 0x4:
			if flags&1 == 0 {
				h.frame(0x4, 1, 0, nil)
			}
		case 0x6:
			if flags&1 == 0 {
				h.frame(0x6, 1, 0, p)
			}
		case 0x7:
			r.goaway = true
			return r
		}
		if id != stream {
			continue
		}
		switch typ {
		case 0x1:
			if flags&0x8 != 0 { // PADDED
				p = p[1 : len(p)-int(p[0])]
			}
			if flags&0x20 != 0 { // PRIORITY
				p = p[5:]
			}
			if r.status == 0 {
				r.status = decodeStatus(p)
			}
		case 0x0:
			r.body += string(p)
			if len(p) > 0 {
				var wu [4]byte
				binary.BigEndian.PutUint32(wu[:], uint32(len(p)))
				h.frame(0x8, 0, 0, wu[:])
			}
		case 0x3:
			r.rst, r.code = true, binary.BigEndian.Uint32(p)
			return r
		}
		if flags&1 != 0 && (typ == 0x0 || typ == 0x1) {
			r.ended = true
			return r
		}
	}
}

// decodeStatus reads :status from the start of a header block as Go's
// encoder writes it: an indexed static entry, or a literal with the name
// :status indexed (8..14) and a raw or Huffman-coded value of digits.
func decodeStatus(p []byte) int {
	if len(p) == 0 {
		return -1
	}
	for len(p) > 0 && p[0]&0xe0 == 0x20 { // dynamic table size updates
		p = p[1:]
	}
	if len(p) == 0 {
		return -1
	}
	static := map[byte]int{0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}
	if s, ok := static[p[0]]; ok {
		return s
	}
	// A literal whose name is a :status entry of the static table (8..14),
	// with incremental indexing (0x4_), without (0x0_) or never (0x1_).
	if idx := p[0] & 0x0f; idx < 8 || idx > 14 || (p[0]&0xf0 != 0x40 && p[0]&0xf0 != 0x00 && p[0]&0xf0 != 0x10) {
		return -1
	}
	i := 1
	if len(p) < i+1 {
		return -1
	}
	huff, n := p[i]&0x80 != 0, int(p[i]&0x7f)
	v := p[i+1 : i+1+n]
	if !huff {
		var s int
		fmt.Sscanf(string(v), "%d", &s)
		return s
	}
	// Huffman codes of the digits: 0-2 five bits, 3-9 six bits.
	var bits uint64
	nb := 0
	for _, c := range append(v, 0xff) { // EOS padding is ones
		bits = bits<<8 | uint64(c)
		nb += 8
	}
	s := 0
	for k := 0; k < 3; k++ {
		if (bits>>(nb-5))&0x1f <= 2 {
			s = s*10 + int((bits>>(nb-5))&0x1f)
			nb -= 5
		} else {
			s = s*10 + int((bits>>(nb-6))&0x3f) - 0x19 + 3
			nb -= 6
		}
	}
	return s
}
