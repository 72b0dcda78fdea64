//go:build unix

package proxy

import "syscall"

// limitFDs sets the soft and hard RLIMIT_NOFILE of this process to n.
func limitFDs(n int) error {
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: uint64(n), Max: uint64(n)})
}
