package httpjson

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func serveWithLimit(t *testing.T, limit int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}),
		MaxHeaderBytes:    limit,
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(NewListener(ln, limit)) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// TestHeaderTooLargeIsTheErrorModel sends a header over the limit: the
// answer is 431 with the JSON error body, where net/http alone would send
// plain text.
func TestHeaderTooLargeIsTheErrorModel(t *testing.T) {
	addr := serveWithLimit(t, 1024)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("b", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body errorBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get("Content-Type") != "application/json" ||
		body.Error.Code != "header_too_large" || body.Error.Retryable || !strings.Contains(body.Error.Message, "1024 bytes") {
		t.Errorf("got %d %q %+v", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// TestOtherTrafficPassesUntouched checks ordinary answers, and an answer
// whose body happens to be net/http's 431 text, go through as they are.
func TestOtherTrafficPassesUntouched(t *testing.T) {
	addr := serveWithLimit(t, 1024)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 2 { // twice on one connection: keep-alive still works
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != `{"status":"ok"}` {
			t.Errorf("got %d %s", resp.StatusCode, b)
		}
	}
	// A write of anything but the exact answer is passed through.
	var sink strings.Builder
	pc := &conn{Conn: writerConn{&sink}, headerTooLarge: []byte("replaced")}
	if _, err := pc.Write([]byte(netHTTPHeaderTooLarge + " ")); err != nil || sink.String() != netHTTPHeaderTooLarge+" " {
		t.Errorf("a near match was rewritten: %q", sink.String())
	}
}

// writerConn is a connection that only records what is written to it.
type writerConn struct {
	w io.Writer
}

func (c writerConn) Write(p []byte) (int, error)    { return c.w.Write(p) }
func (writerConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (writerConn) Close() error                     { return nil }
func (writerConn) LocalAddr() net.Addr              { return nil }
func (writerConn) RemoteAddr() net.Addr             { return nil }
func (writerConn) SetDeadline(time.Time) error      { return nil }
func (writerConn) SetReadDeadline(time.Time) error  { return nil }
func (writerConn) SetWriteDeadline(time.Time) error { return nil }
