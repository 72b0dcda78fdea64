//go:build unix

package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
)

// TestTokenFileEnvFIFODoesNotBlock: the same with a FIFO there, which
// would block the client constructor (at start, or a reload on the main
// loop) for good if it were read.
func TestTokenFileEnvFIFODoesNotBlock(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", fifo)
	done := make(chan error, 1)
	go func() { _, err := newConsulClient(config.Consul{Address: "127.0.0.1:8500", Token: ""}); done <- err }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		// unblock the reader so the goroutine ends
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("newConsulClient blocked reading $CONSUL_HTTP_TOKEN_FILE (a FIFO)")
	}
}
