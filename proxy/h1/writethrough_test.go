package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the writes on its connections.
type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// With write-through, a small answer with its Content-Length is one write:
// head and body together.
func TestWriteThroughSmallAnswerIsOneWrite(t *testing.T) {
	var writes atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(WriteThrough).SetWriteThrough(true)
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
	})}
	go s.Serve(countingListener{ln, &writes})
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := range 3 {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "hello" {
			t.Fatalf("have %q", b)
		}
		if have := writes.Load(); have != int64(1+i) {
			t.Fatalf("after answer %d: %d writes, want %d", i+1, have, 1+i)
		}
	}
}

// With write-through, each Write reaches the client before the handler
// goes on, with or without a Content-Length.
func TestWriteThroughStreams(t *testing.T) {
	for _, cl := range []string{"2", ""} {
		got := make(chan struct{})
		addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.(WriteThrough).SetWriteThrough(true)
			if cl != "" {
				w.Header().Set("Content-Length", cl)
			}
			w.Write([]byte("a"))
			select {
			case <-got:
			case <-time.After(5 * time.Second):
			}
			w.Write([]byte("b"))
		})})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 1)
		if _, err := io.ReadFull(resp.Body, first); err != nil || first[0] != 'a' {
			t.Fatalf("Content-Length %q: first byte %q, %v", cl, first, err)
		}
		close(got)
		rest, _ := io.ReadAll(resp.Body)
		if string(rest) != "b" {
			t.Fatalf("Content-Length %q: rest %q", cl, rest)
		}
		c.Close()
	}
}

// Without write-through, writes are buffered as before.
func TestNoWriteThroughBuffers(t *testing.T) {
	var writes atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 10))
		io.WriteString(w, strings.Repeat("y", 10))
	})}
	go s.Serve(countingListener{ln, &writes})
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	io.ReadAll(c)
	if have := writes.Load(); have != 1 {
		t.Fatalf("%d writes, want 1", have)
	}
}
