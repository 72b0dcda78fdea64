package e2e

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as a backend process: with SLUICE_E2E_BACKEND set to
// "http NAME" or "tcp NAME", the test binary serves on a loopback port, prints
// "LISTEN addr" and runs until killed. Tests that kill a backend with
// SIGKILL use these, so the kill is a real process dying.
func TestMain(m *testing.M) {
	if mode := os.Getenv("SLUICE_E2E_BACKEND"); mode != "" {
		runBackend(mode)
		return
	}
	os.Exit(m.Run())
}

func runBackend(mode string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	if strings.HasPrefix(mode, "tcp") {
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}
	name := strings.TrimPrefix(mode, "http ")
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	}))
}

// backendProcess is a backend running as its own process.
type backendProcess struct {
	name string
	addr string
	proc *process
}

func startBackendProcess(t *testing.T, mode, name string) *backendProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "SLUICE_E2E_BACKEND="+strings.TrimSpace(mode+" "+name))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "LISTEN ") {
		t.Fatalf("backend %s: %q %v", name, line, err)
	}
	return &backendProcess{name: name, addr: strings.TrimSpace(strings.TrimPrefix(line, "LISTEN ")), proc: p}
}

// kill sends SIGKILL and waits for the process to be gone.
func (b *backendProcess) kill() { b.proc.stop(syscall.SIGKILL) }

// controlledBackend is an in-process HTTP backend whose behaviour tests
// switch at run time: the /health answer, 500s on every other path, and a
// count of request bodies received per id.
type controlledBackend struct {
	*backend
	healthFail atomic.Bool
	fail500    atomic.Bool
	// drop: read the request, then close the connection without answering.
	drop atomic.Bool
}

func startControlledBackend(t *testing.T, name string, bodies chan<- string) *controlledBackend {
	t.Helper()
	b := &controlledBackend{backend: &backend{name: name}}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if b.healthFail.Load() {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) { wsEcho(t, w, r) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if len(body) > 0 && bodies != nil {
			bodies <- string(body)
		}
		b.hits.Add(1)
		b.last.Store(time.Now().UnixNano())
		if b.drop.Load() {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.Header().Set("X-Backend", name)
		if b.fail500.Load() {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, name)
	})
	b.srv = httptest.NewServer(mux)
	t.Cleanup(b.srv.Close)
	return b
}

// wsEcho is a minimal RFC 6455 server: it completes the handshake and
// echoes unfragmented client frames (up to 125 bytes) until a close frame.
func wsEcho(t *testing.T, w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want a websocket upgrade", http.StatusBadRequest)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		wsAccept(r.Header.Get("Sec-WebSocket-Key")))
	rw.Flush()
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(rw, hdr[:]); err != nil {
			return
		}
		op, n := hdr[0]&0x0f, int(hdr[1]&0x7f)
		var mask [4]byte
		io.ReadFull(rw, mask[:])
		payload := make([]byte, n)
		io.ReadFull(rw, payload)
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		if op == 0x8 {
			return
		}
		rw.Write(append([]byte{0x80 | op, byte(n)}, payload...))
		rw.Flush()
	}
}

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsRoundTrip dials addr, upgrades path to a WebSocket, sends msg in a
// masked text frame and returns the echoed payload.
func wsRoundTrip(addr, path, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	key := base64.StdEncoding.EncodeToString([]byte("sluice-e2e-key16"))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr, key)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		return "", fmt.Errorf("handshake: %s", resp.Status)
	}
	mask := [4]byte{1, 2, 3, 4}
	frame := []byte{0x81, 0x80 | byte(len(msg))}
	frame = append(frame, mask[:]...)
	for i := 0; i < len(msg); i++ {
		frame = append(frame, msg[i]^mask[i%4])
	}
	if _, err := c.Write(frame); err != nil {
		return "", err
	}
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return "", err
	}
	payload := make([]byte, hdr[1]&0x7f)
	if _, err := io.ReadFull(br, payload); err != nil {
		return "", err
	}
	c.Write([]byte{0x88, 0x80, 0, 0, 0, 0}) // close
	return string(payload), nil
}
