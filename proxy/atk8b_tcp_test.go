package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// byteConn writes one byte per Write to the socket.
type byteConn struct{ net.Conn }

func (c byteConn) Write(p []byte) (int, error) {
	for i := range p {
		if _, err := c.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

// TestAtk8bTCPHelloPacing: a ClientHello sent a byte per write is read
// whole (SNI passthrough and TLS termination); one that trickles for
// longer than HandshakeTimeout is closed at that bound in all, not per
// byte, without an instance contacted.
func TestAtk8bTCPHelloPacing(t *testing.T) {
	ca := newCA(t)
	pa := pool(t, "round_robin", m("a", sniBackend(t, ca, "A"), 1))
	pe := pool(t, "round_robin", m("e", echoServer(t), 1))
	sni, _ := tcpFront(t, TCPOptions{SNIRoutes: []SNIRoute{{ServerName: "a.example", Service: ServiceOptions{Name: "a", Pool: pa}}},
		HandshakeTimeout: 400 * time.Millisecond})
	term, _ := tcpFront(t, TCPOptions{Service: ServiceOptions{Name: "e", Pool: pe},
		TLS: &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "a.example")}}, HandshakeTimeout: 400 * time.Millisecond})
	for name, addr := range map[string]string{"sni": sni, "terminate": term} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(byteConn{c}, &tls.Config{RootCAs: ca.pool(), ServerName: "a.example"})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(tc, "ping")
		tc.CloseWrite()
		out, err := io.ReadAll(tc)
		c.Close()
		if want := map[string]string{"sni": "A:ping", "terminate": "ping"}[name]; string(out) != want {
			t.Errorf("%s, byte by byte: %q %v, want %q", name, out, err, want)
		}

		// A trickle: one byte of a record header every 100 ms.
		c, err = net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		closed := make(chan time.Duration, 1)
		go func() {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 1))
			closed <- time.Since(start)
		}()
		tick := time.NewTicker(100 * time.Millisecond)
		hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}
		hello = append(hello, bytes.Repeat([]byte{0}, 64)...)
		var d time.Duration
	trickle:
		for _, b := range hello {
			select {
			case d = <-closed:
				break trickle
			case <-tick.C:
				c.Write([]byte{b})
			}
		}
		tick.Stop()
		if d == 0 {
			d = <-closed
		}
		c.Close()
		if d > 2*time.Second {
			t.Errorf("%s: a trickling hello was held %v (HandshakeTimeout 400ms)", name, d)
		}
	}
	if st := statsOf(pe, "e"); st.Requests() != 1 || st.Failures() != 0 {
		t.Errorf("terminate: %d connections, %d failures; want 1, 0", st.Requests(), st.Failures())
	}
	if st := statsOf(pa, "a"); st.Requests() != 1 || st.Failures() != 0 {
		t.Errorf("sni: %d connections, %d failures; want 1, 0", st.Requests(), st.Failures())
	}
}

// TestAtk8bTCPHugeHello: an endless ClientHello (records of a handshake
// message that never ends) is cut after a bounded number of bytes.
func TestAtk8bTCPHugeHello(t *testing.T) {
	ca := newCA(t)
	pa := pool(t, "round_robin", m("a", sniBackend(t, ca, "A"), 1))
	sni, _ := tcpFront(t, TCPOptions{SNIRoutes: []SNIRoute{{ServerName: "*", Service: ServiceOptions{Name: "a", Pool: pa}}}})
	for _, msgLen := range []int{0xffffff, 65000} {
		c, err := net.Dial("tcp", sni)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		first := []byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, byte(msgLen >> 16), byte(msgLen >> 8), byte(msgLen)}
		c.Write(append(first, make([]byte, 0x4000-4)...))
		record := append([]byte{0x16, 0x03, 0x01, 0x40, 0x00}, make([]byte, 0x4000)...)
		go func() {
			for sent := 0; sent < 8<<20; sent += len(record) {
				if _, err := c.Write(record); err != nil {
					return
				}
			}
		}()
		// sluice closes the client once it has read too much (or a message
		// too long was announced): the read ends with EOF or a reset, not
		// with the deadline.
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("message length %#x: the endless hello is still read after 5 s", msgLen)
		}
	}
	if st := statsOf(pa, "a"); st.Requests() != 0 {
		t.Errorf("the instance was contacted %d times", st.Requests())
	}
}

// TestAtk8bTCPHalfCloseBothWays: through plain forwarding and TLS
// termination, the instance may half-close first (its last bytes reach
// the client, then the client's late bytes still reach it) and the client
// may half-close first; neither is blamed.
func TestAtk8bTCPHalfCloseBothWays(t *testing.T) {
	ca := newCA(t)
	got := make(chan string, 4)
	backend := rawBackend(t, func(c net.Conn) {
		b := make([]byte, 5)
		io.ReadFull(c, b)
		if string(b) == "first" { // the instance half-closes first
			io.WriteString(c, "bye")
			c.(*net.TCPConn).CloseWrite()
			rest, _ := io.ReadAll(c)
			got <- string(rest)
			return
		}
		rest, _ := io.ReadAll(c) // the client half-closes first
		io.WriteString(c, "ack:"+string(b)+string(rest))
		got <- ""
	})
	p := pool(t, "round_robin", m("a", backend, 1))
	plain, _ := tcpFront(t, TCPOptions{Service: ServiceOptions{Name: "a", Pool: p}})
	term, _ := tcpFront(t, TCPOptions{Service: ServiceOptions{Name: "a", Pool: p},
		TLS: &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "a.example")}}})
	dial := func(addr string, useTLS bool) interface {
		net.Conn
		CloseWrite() error
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if !useTLS {
			return c.(*net.TCPConn)
		}
		tc := tls.Client(c, &tls.Config{RootCAs: ca.pool(), ServerName: "a.example"})
		return tc
	}
	for _, tc := range []struct {
		name   string
		addr   string
		useTLS bool
	}{{"plain", plain, false}, {"terminate", term, true}} {
		c := dial(tc.addr, tc.useTLS)
		io.WriteString(c, "first")
		b := make([]byte, 3)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "bye" {
			t.Fatalf("%s: %q %v", tc.name, b, err)
		}
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("%s: want EOF after the instance's half-close, have %d %v", tc.name, n, err)
		}
		io.WriteString(c, "late bytes")
		c.CloseWrite()
		if s := <-got; s != "late bytes" {
			t.Errorf("%s: after its half-close the instance got %q, want the client's late bytes", tc.name, s)
		}

		c = dial(tc.addr, tc.useTLS)
		io.WriteString(c, "other and more")
		c.CloseWrite()
		out, err := io.ReadAll(c)
		<-got
		if string(out) != "ack:other and more" {
			t.Errorf("%s: client half-closed first: %q %v", tc.name, out, err)
		}
	}
	waitFor(t, "connections judged", func() bool { return statsOf(p, "a").Requests() == 4 && inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("instance blamed %d times", n)
	}
}

// TestAtk8bTCPLargeHello: a legitimate ClientHello of about 40 KiB (three
// TLS records; here a long ALPN list) is routed by its server name and
// reaches the instance whole.
func TestAtk8bTCPLargeHello(t *testing.T) {
	ca := newCA(t)
	pa := pool(t, "round_robin", m("a", sniBackend(t, ca, "A"), 1))
	sni, _ := tcpFront(t, TCPOptions{SNIRoutes: []SNIRoute{{ServerName: "a.example", Service: ServiceOptions{Name: "a", Pool: pa}}}})
	var protos []string
	for i := 0; i < 160; i++ {
		protos = append(protos, fmt.Sprintf("%03d", i)+strings.Repeat("p", 247))
	}
	c, err := tls.Dial("tcp", sni, &tls.Config{RootCAs: ca.pool(), ServerName: "a.example", NextProtos: protos})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "ping")
	c.CloseWrite()
	if out, err := readAllTimeout(c); out != "A:ping" {
		t.Errorf("a 40 KiB hello: %q %v", out, err)
	}
}
