//go:build !unix

package rawread

import "errors"

// Supported reports whether New can return a Reader on this platform.
const Supported = false

var errUnsupported = errors.New("rawread: not supported on this platform")

// Read is never called here: New returns nil.
func (r *Reader) Read() (int, error) { return 0, errUnsupported }

// TryRead is never called here: New returns nil.
func (r *Reader) TryRead() (int, error) { return 0, errUnsupported }

func (r *Reader) try(fd uintptr) bool     { return true }
func (r *Reader) tryOnce(fd uintptr) bool { return true }

// Again is never true here.
func Again(err error) bool { return false }

// ReadFD is not supported here.
func ReadFD(fd int, p []byte) (int, error) { return 0, errUnsupported }
