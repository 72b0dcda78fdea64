package h1

// Review tests of issue 11 (TLS edge): each fails on the code it was
// written against and shows the finding described above it. Raw sockets,
// loopback only.

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// h2SettingsFrame is an empty SETTINGS frame.
var h2SettingsFrame = []byte{0, 0, 0, 0x4, 0, 0, 0, 0, 0}

// TestReview11H2FirstStreamDue shows: an HTTP/2 connection (ALPN h2 or
// h2c) that sends its preface and SETTINGS and then no request was kept
// for IdleTimeout (2 min by default), holding a MaxConns slot that is
// never freed for room: four such connections blocked a listener with
// max_connections = 4 for two minutes (HAProxy 2.6 closes them at
// "timeout http-request"). Server.TLSConfig's contract says the first
// request head is due HeaderTimeout after the accept. Expected: the
// connection is closed at HeaderTimeout when no stream has started, and a
// connection that started one is not.
func TestReview11H2FirstStreamDue(t *testing.T) {
	pki := newPKI(t)
	for _, secure := range []bool{true, false} {
		s := &Server{HeaderTimeout: 300 * time.Millisecond, IdleTimeout: time.Minute}
		dial := func(t *testing.T, addr string) net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		if secure {
			s.TLSConfig = pki.serverConfig()
			dial = func(t *testing.T, addr string) net.Conn {
				c, err := tls.Dial("tcp", addr, pki.clientConfig("h2"))
				if err != nil {
					t.Fatal(err)
				}
				if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
					t.Fatalf("ALPN %q", p)
				}
				return c
			}
		}
		release := make(chan struct{})
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/wait" {
				<-release
			}
			echo(w, r)
		})
		addr := serve(t, s)
		// A: a connection with a stream (held open until B is closed).
		var prot http.Protocols
		prot.SetUnencryptedHTTP2(!secure)
		prot.SetHTTP2(secure)
		tr := &http.Transport{Protocols: &prot, TLSClientConfig: pki.clientConfig()}
		defer tr.CloseIdleConnections()
		var dials atomic.Int32
		tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, a)
		}
		scheme := "http://"
		if secure {
			scheme = "https://"
		}
		get := func(path string) error {
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(scheme + addr + path)
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || !strings.Contains(string(b), path) {
				t.Errorf("tls %v: %s %q", secure, resp.Proto, b)
			}
			return nil
		}
		first := make(chan error, 1)
		go func() { first <- get("/wait") }()
		waitUntil(t, "A dialled", func() bool { return dials.Load() == 1 })
		// B: preface and SETTINGS, then nothing.
		c := dial(t, addr)
		defer c.Close()
		c.Write(h2Preface)
		c.Write(h2SettingsFrame)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("tls %v: a connection without a stream was kept past HeaderTimeout: %v after %v", secure, err, time.Since(start).Round(time.Millisecond))
		}
		// A's HeaderTimeout has passed too: its stream kept it open.
		close(release)
		if err := <-first; err != nil {
			t.Fatalf("tls %v: the stream of a connection past its HeaderTimeout: %v", secure, err)
		}
		if err := get("/again"); err != nil {
			t.Fatal(err)
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("tls %v: a connection that had a stream was closed (%d dials)", secure, n)
		}
	}
}

// TestReview11UnreadBodyAnnouncesClose shows: an answer written while the
// request body is still unread (sluice's 413 for max_body_bytes, a 308
// redirect, a 404 to a POST) was sent without "Connection: close", yet
// the connection was closed after it (its unread body would be read as
// the next request). A keep-alive client then sends its next request on
// a connection being closed, and a non-idempotent one cannot be retried
// safely. Expected: such an answer says Connection: close (as net/http
// does for an Expect: 100-continue body it never asked for); a body read
// whole before the answer keeps the connection.
func TestReview11UnreadBodyAnnouncesClose(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/read" {
			io.Copy(io.Discard, r.Body)
		}
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "no")
	})})
	for _, tc := range []struct{ name, req string }{
		{"body pending", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"},
		{"expect 100-continue", "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"},
		{"chunked pending", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
	} {
		have := raw(t, addr, tc.req)
		if !strings.HasPrefix(have, "HTTP/1.1 413 ") || !strings.Contains(have, "\r\nConnection: close\r\n") {
			t.Errorf("%s: an answer before the body was read does not announce the close: %q", tc.name, have)
		}
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _ := c.Read(buf)
	if have := string(buf[:n]); !strings.HasPrefix(have, "HTTP/1.1 413 ") || strings.Contains(have, "Connection: close") {
		t.Errorf("a body read whole: want the connection kept, have %q", have)
	}
}
