package proxy

import (
	"io"
	"strconv"
	"sync"
	"time"
)

// AccessLog writes one line per HTTP request or TCP connection, in logfmt:
//
//	2026-11-28T03:04:05.678Z listener=public service=web instance=node-1/web-1 client=127.0.0.1:5555 method=GET path=/x status=200 bytes=123 duration_ms=1.234 attempts=1
//	2026-11-28T03:04:05.678Z listener=db service=pg instance=node-1/pg-1 client=127.0.0.1:5555 bytes_in=10 bytes_out=20 duration_ms=1.234 attempts=1
//
// A tcp line of a TLS listener (terminated or SNI passthrough) has
// server_name=NAME after bytes_out when the client sent one.
//
// A line is built in a pooled buffer and written with one Write call; it
// allocates nothing else. Values are written as they are: the path is
// quoted when it holds a space, a quote or a control character.
type AccessLog struct {
	w    io.Writer // safe for concurrent Write (an *os.File is)
	bufs sync.Pool
}

// NewAccessLog writes lines to w.
func NewAccessLog(w io.Writer) *AccessLog {
	return &AccessLog{w: w, bufs: sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}}
}

// logEntry is what one line says.
type logEntry struct {
	listener, service, instance, client string
	method, path                        string // http only
	status                              int    // http only
	bytes, bytesIn                      int64  // http: bytes = body bytes sent; tcp: bytesIn and bytes (out)
	tcp                                 bool
	serverName                          string // tcp: the TLS server name, when known
	start                               time.Time
	attempts                            int
}

func (l *AccessLog) write(e *logEntry) {
	bp := l.bufs.Get().(*[]byte)
	b := (*bp)[:0]
	end := time.Now()
	b = end.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = appendField(b, "listener", e.listener)
	b = appendField(b, "service", e.service)
	b = appendField(b, "instance", e.instance)
	b = appendField(b, "client", e.client)
	if e.tcp {
		b = append(b, " bytes_in="...)
		b = strconv.AppendInt(b, e.bytesIn, 10)
		b = append(b, " bytes_out="...)
		b = strconv.AppendInt(b, e.bytes, 10)
		if e.serverName != "" {
			b = appendField(b, "server_name", e.serverName)
		}
	} else {
		b = appendField(b, "method", e.method)
		b = appendField(b, "path", e.path)
		b = append(b, " status="...)
		b = strconv.AppendInt(b, int64(e.status), 10)
		b = append(b, " bytes="...)
		b = strconv.AppendInt(b, e.bytes, 10)
	}
	b = append(b, " duration_ms="...)
	b = strconv.AppendFloat(b, float64(end.Sub(e.start).Microseconds())/1000, 'f', 3, 64)
	b = append(b, " attempts="...)
	b = strconv.AppendInt(b, int64(e.attempts), 10)
	b = append(b, '\n')
	_, _ = l.w.Write(b)
	*bp = b
	l.bufs.Put(bp)
}

// appendField appends " key=value", quoting value when needed and writing
// "-" for an empty one.
func appendField(b []byte, key, value string) []byte {
	b = append(b, ' ')
	b = append(b, key...)
	b = append(b, '=')
	if value == "" {
		return append(b, '-')
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c <= ' ' || c == '"' || c == 0x7f {
			return strconv.AppendQuote(b, value)
		}
	}
	return append(b, value...)
}
