package proxy

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestAtk8bH2ResetClosesUpstream: an h2 client's RST_STREAM, mid-upload or
// mid-answer, ends the exchange with the instance at once: the instance
// sees its connection closed (not parked until a timeout), the instance is
// not blamed, in-flight returns to 0, and the connection goes on serving.
func TestAtk8bH2ResetClosesUpstream(t *testing.T) {
	ended := make(chan string, 4)
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		switch req.URL.Path {
		case "/upload":
			_, err = io.Copy(io.Discard, req.Body)
		case "/none":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			return
		case "/answer":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
			buf := make([]byte, 64<<10)
			for err == nil {
				_, err = c.Write(buf)
			}
		}
		select {
		case ended <- req.URL.Path:
		default: // the rapid resets below
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	h := dialH2Raw(t, f.URL)
	rst := func(id uint32) {
		var code [4]byte
		binary.BigEndian.PutUint32(code[:], 0x8) // CANCEL
		h.frame(0x3, 0, id, code[:])
	}

	h.headers(1, false, ":method", "POST", ":scheme", "http", ":path", "/upload", ":authority", "x")
	h.data(1, false, "part of a body")
	waitFor(t, "the upload in flight", func() bool { return inflight(p) == 1 })
	rst(1)
	select {
	case path := <-ended:
		if path != "/upload" {
			t.Fatalf("ended %s", path)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mid-upload reset: the instance's connection is still open 5 s later")
	}

	h.headers(3, true, ":method", "GET", ":scheme", "http", ":path", "/answer", ":authority", "x")
	for { // until the answer's HEADERS
		var hdr [9]byte
		if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
			t.Fatal(err)
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		if _, err := io.ReadFull(h.br, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		if hdr[3] == 0x1 && binary.BigEndian.Uint32(hdr[5:]) == 3 {
			break
		}
	}
	rst(3)
	select {
	case path := <-ended:
		if path != "/answer" {
			t.Fatalf("ended %s", path)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mid-answer reset: the instance's connection is still open 5 s later")
	}
	// A reset right behind the request head, on streams 5 to 203: the
	// exchange may not have started; either way nothing is left over.
	for id := uint32(5); id < 205; id += 2 {
		h.headers(id, true, ":method", "GET", ":scheme", "http", ":path", "/answer", ":authority", "x")
		rst(id)
	}
	h.headers(205, true, ":method", "GET", ":scheme", "http", ":path", "/none", ":authority", "x")
	if r := h.result(205); r.status != http.StatusOK {
		t.Errorf("after 100 resets the connection answers %+v", r)
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("instance blamed %d times for resets", n)
	}
}
