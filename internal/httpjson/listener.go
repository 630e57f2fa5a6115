package httpjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"

	"github.com/vstage/vstage/internal/fault"
)

// netHTTPHeaderTooLarge is the whole answer net/http writes by itself, in
// one write and before any handler runs, to a client whose request header
// is over http.Server.MaxHeaderBytes.
const netHTTPHeaderTooLarge = "HTTP/1.1 431 Request Header Fields Too Large\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" +
	"431 Request Header Fields Too Large"

// NewListener returns ln with one change to what its connections send:
// net/http's plain-text answer to a request header over maxHeaderBytes
// (http.Server.MaxHeaderBytes, which the caller sets to the same value)
// becomes the error model's JSON body with code header_too_large. Every
// other byte passes through untouched. A change in net/http's text would
// let its own answer through, never corrupt another.
func NewListener(ln net.Listener, maxHeaderBytes int) net.Listener {
	return &listener{Listener: ln, headerTooLarge: headerTooLargeAnswer(maxHeaderBytes)}
}

func headerTooLargeAnswer(maxHeaderBytes int) []byte {
	body, _ := json.Marshal(errorBody{Error: errorDetail{
		Code:    fault.HeaderTooLarge,
		Message: fmt.Sprintf("the request header is larger than the %d bytes allowed (MAX_HEADER_BYTES)", maxHeaderBytes),
	}})
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"+
		"X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s\n", len(body)+1, body)
	return b.Bytes()
}

type listener struct {
	net.Listener
	headerTooLarge []byte
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, headerTooLarge: l.headerTooLarge}, nil
}

type conn struct {
	net.Conn
	headerTooLarge []byte
}

func (c *conn) Write(p []byte) (int, error) {
	if string(p) != netHTTPHeaderTooLarge {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(c.headerTooLarge); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseWrite half-closes the connection when the wrapped one can, as
// net/http does after its 431 answer so the client reads it before the
// connection goes.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
