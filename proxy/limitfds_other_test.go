//go:build !unix

package proxy

import "errors"

// limitFDs has no RLIMIT_NOFILE to set here: the descriptor-exhaustion
// tests fail, saying so.
func limitFDs(n int) error { return errors.New("no RLIMIT_NOFILE on this system") }
