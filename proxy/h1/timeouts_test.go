package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestTimeoutsDefaultsAndPrecedence(t *testing.T) {
	s := &Server{HeaderTimeout: time.Hour}
	s.init()
	defer s.Close()
	want := Timeouts{HeaderTimeout: time.Hour, BodyTimeout: DefaultBodyTimeout, WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout}
	if have := *s.currentTimeouts(); have != want {
		t.Errorf("fields: want %+v, have %+v", want, have)
	}
	s.SetTimeouts(Timeouts{BodyTimeout: time.Second})
	want = Timeouts{HeaderTimeout: DefaultHeaderTimeout, BodyTimeout: time.Second, WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout}
	if have := *s.currentTimeouts(); have != want {
		t.Errorf("after SetTimeouts: want %+v, have %+v", want, have)
	}
}

// TestSetTimeoutsAppliesToNextRequest: timeouts set while a keep-alive
// connection is open apply to its next request, and to new connections,
// over the fields set before Serve.
func TestSetTimeoutsAppliesToNextRequest(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(echo), HeaderTimeout: time.Hour, BodyTimeout: time.Hour}
	addr := serve(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // catches a hang, not a speed
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}

	s.SetTimeouts(Timeouts{HeaderTimeout: 100 * time.Millisecond, BodyTimeout: 100 * time.Millisecond})
	io.WriteString(c, "GET /two HTTP/1.1\r\nHost: x\r\n") // the head never ends
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("second request on the same connection: %v (the old header timeout still applies?)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled head after SetTimeouts: want 408, have %d", resp.StatusCode)
	}

	have := raw(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	if !strings.HasPrefix(have, "HTTP/1.1 408 ") {
		t.Errorf("stalled body on a new connection: want 408, have %q", have)
	}
}

// TestSetTimeoutsH2CStream: an h2c stream that starts after SetTimeouts
// has its body timeout.
func TestSetTimeoutsH2CStream(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(echo), BodyTimeout: time.Hour}
	addr := serve(t, s)
	s.SetTimeouts(Timeouts{BodyTimeout: 100 * time.Millisecond})
	client := h2cClient()
	defer client.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", pr)
	go io.WriteString(pw, "abc")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.ProtoMajor != 2 {
		t.Fatalf("stalled h2c body: want 408 over HTTP/2, have %d over %s", resp.StatusCode, resp.Proto)
	}
}
