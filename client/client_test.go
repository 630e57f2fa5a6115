package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// script answers the n-th request with the n-th reply; past the end it
// answers 200. Each reply is a status, an optional error code and
// retryable flag, and an optional Retry-After.
type reply struct {
	status     int
	code       string
	retryable  bool
	retryAfter string
	raw        string // a body other than the error model
}

type service struct {
	srv   *httptest.Server
	calls atomic.Int32
	mu    sync.Mutex
	plan  []reply
	ids   []string
}

func newService(t *testing.T, plan ...reply) *service {
	t.Helper()
	s := &service{plan: plan}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *service) serve(w http.ResponseWriter, r *http.Request) {
	n := int(s.calls.Add(1))
	var req Request
	_ = json.NewDecoder(r.Body).Decode(&req)
	s.mu.Lock()
	s.ids = append(s.ids, req.ImageID)
	s.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != "/infer" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad call", http.StatusTeapot)
		return
	}
	if n <= len(s.plan) && s.plan[n-1].status != http.StatusOK {
		p := s.plan[n-1]
		if p.retryAfter != "" {
			w.Header().Set("Retry-After", p.retryAfter)
		}
		if p.raw != "" {
			w.WriteHeader(p.status)
			fmt.Fprint(w, p.raw)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(p.status)
		fmt.Fprintf(w, `{"error":{"code":%q,"message":"scripted %d","retryable":%v}}`, p.code, p.status, p.retryable)
		return
	}
	if n > 1 {
		w.Header().Set("Idempotent-Replay", "true")
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"staged_key":"staged/%s.jpg","width":8,"height":6,"model_rev":"m","seed":3,"duration_ms":12,"warnings":["w"],"backend":"managed"}`, req.ImageID)
}

// drain reads the body, after which the server notices a client that hangs
// up and cancels the handler's context.
func drain(r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }

// waits records the pauses between attempts instead of sleeping them.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) wait(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
	return ctx.Err()
}

func newClient(t *testing.T, s *service, opts ...Option) (*Client, *waits) {
	t.Helper()
	c, err := New(s.srv.URL+"/", append([]Option{WithHTTPClient(s.srv.Client()), WithBackoff(time.Millisecond, 4*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	w := &waits{}
	c.wait = w.wait
	return c, w
}

var req = Request{ImageID: "img-1", OriginalKey: "originals/a.jpg", RoomType: "bedroom", Style: "modern"}

func TestRetryThenSuccess(t *testing.T) {
	s := newService(t, reply{status: 503, code: CodeUnavailable, retryable: true}, reply{status: 429, code: CodeOverloaded, retryable: true}, reply{status: 502, raw: "<html>bad gateway</html>"})
	c, w := newClient(t, s)
	resp, err := c.Infer(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if s.calls.Load() != 4 || len(w.d) != 3 {
		t.Fatalf("%d calls, %d waits", s.calls.Load(), len(w.d))
	}
	for i, id := range s.ids {
		if id != req.ImageID {
			t.Fatalf("attempt %d sent image_id %q; retries must reuse it", i, id)
		}
	}
	want := Response{StagedKey: "staged/img-1.jpg", Width: 8, Height: 6, ModelRev: "m", Seed: 3, DurationMS: 12, Warnings: []string{"w"}, Backend: "managed", Replay: true}
	if fmt.Sprint(*resp) != fmt.Sprint(want) {
		t.Fatalf("response %+v", *resp)
	}
	for i, d := range w.d {
		if ceiling := time.Millisecond << i; d < ceiling/2 || d > min(ceiling, 4*time.Millisecond) {
			t.Errorf("wait %d = %s, outside the jittered backoff", i, d)
		}
	}
}

func TestNoRetryOnClientErrors(t *testing.T) {
	for _, p := range []reply{
		{status: 400, code: CodeInvalidInput},
		{status: 409, code: CodeIdempotencyConflict},
		{status: 404, code: CodeNotFound},
		{status: 500, code: CodeInternal},
		{status: 418, raw: "teapot"},
	} {
		s := newService(t, p)
		c, _ := newClient(t, s)
		_, err := c.Infer(t.Context(), req)
		var e *Error
		if !errors.As(err, &e) || e.StatusCode != p.status || e.Code != p.code || e.Retryable {
			t.Fatalf("HTTP %d: %v", p.status, err)
		}
		if s.calls.Load() != 1 {
			t.Fatalf("HTTP %d was retried: %d calls", p.status, s.calls.Load())
		}
	}
}

func TestRetryAfterRespected(t *testing.T) {
	s := newService(t, reply{status: 503, code: CodeUnavailable, retryable: true, retryAfter: "2"})
	c, w := newClient(t, s)
	if _, err := c.Infer(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if len(w.d) != 1 || w.d[0] < 2*time.Second {
		t.Fatalf("waits %v, want one of at least the 2s Retry-After", w.d)
	}
	// A Retry-After past the deadline ends the call at once with the
	// service's error, its Retry-After included.
	s2 := newService(t, reply{status: 429, code: CodeOverloaded, retryable: true, retryAfter: "60"})
	c2, w2 := newClient(t, s2)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	_, err := c2.Infer(ctx, req)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeOverloaded || e.RetryAfter != time.Minute || len(w2.d) != 0 {
		t.Fatalf("err %v, waits %v", err, w2.d)
	}
}

func TestDeadlineRespected(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		drain(r)
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(block) })
	c, err := New(srv.URL, WithHTTPClient(srv.Client()), WithBackoff(time.Millisecond, 2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// The service never answers: only the deadline can end the call.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err = c.Infer(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
}

func TestAttemptTimeoutRetried(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		drain(r)
		if calls.Add(1) == 1 {
			<-r.Context().Done() // the first attempt hangs until abandoned
			return
		}
		fmt.Fprint(w, `{"staged_key":"k"}`)
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, WithHTTPClient(srv.Client()), WithAttemptTimeout(30*time.Millisecond), WithBackoff(time.Millisecond, 2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Infer(t.Context(), req)
	if err != nil || resp.StagedKey != "k" || calls.Load() != 2 {
		t.Fatalf("resp %v err %v after %d calls", resp, err, calls.Load())
	}
}

func TestBreakerOpensAndHalfOpens(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if failing.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"restarting","retryable":true}}`)
			return
		}
		fmt.Fprint(w, `{"staged_key":"k"}`)
	}))
	t.Cleanup(srv.Close)
	// Long enough that the circuit is still open for the refusals below
	// however slowly the machine runs them.
	const openFor = time.Second
	c, err := New(srv.URL, WithHTTPClient(srv.Client()), WithBackoff(time.Millisecond, 2*time.Millisecond),
		WithMaxAttempts(2), WithBreaker(3, openFor))
	if err != nil {
		t.Fatal(err)
	}
	// Two attempts, then one more: the third failure opens the circuit and
	// the fourth attempt is refused without a call.
	if _, err := c.Infer(t.Context(), req); err == nil {
		t.Fatal("want an error")
	}
	_, err = c.Infer(t.Context(), req)
	if !errors.Is(err, ErrCircuitOpen) || calls.Load() != 3 {
		t.Fatalf("err %v after %d calls, want ErrCircuitOpen after 3", err, calls.Load())
	}
	if _, err := c.Infer(t.Context(), req); !errors.Is(err, ErrCircuitOpen) || calls.Load() != 3 {
		t.Fatalf("open circuit: %v after %d calls, want ErrCircuitOpen without a call", err, calls.Load())
	}
	// After the open timeout one trial call goes through; its success
	// closes the circuit.
	time.Sleep(openFor + 10*time.Millisecond)
	failing.Store(false)
	resp, err := c.Infer(t.Context(), req)
	if err != nil || resp.StagedKey != "k" || calls.Load() != 4 {
		t.Fatalf("half-open trial: %v, %d calls", err, calls.Load())
	}
	if st := c.breaker.State().String(); st != "closed" {
		t.Fatalf("circuit %s after a successful trial", st)
	}
}

func TestClientErrorsKeepCircuitClosed(t *testing.T) {
	s := newService(t, reply{status: 400, code: CodeInvalidInput}, reply{status: 400, code: CodeInvalidInput}, reply{status: 409, code: CodeIdempotencyConflict})
	c, _ := newClient(t, s, WithBreaker(2, time.Minute))
	for range 3 {
		var e *Error
		if _, err := c.Infer(t.Context(), req); !errors.As(err, &e) {
			t.Fatalf("err %v", err)
		}
	}
	if _, err := c.Infer(t.Context(), req); err != nil {
		t.Fatalf("after client errors: %v", err)
	}
}

// A job another replica is running is retried after the server's
// Retry-After until its result is there, and never opens the circuit,
// however long the other replica takes.
func TestInProgressIsRetriedAndKeepsCircuitClosed(t *testing.T) {
	busy := reply{status: 409, code: CodeInProgress, retryable: true, retryAfter: "2"}
	s := newService(t, busy, busy, busy)
	c, w := newClient(t, s, WithBreaker(2, time.Minute))
	resp, err := c.Infer(t.Context(), req)
	if err != nil || resp.StagedKey == "" || s.calls.Load() != 4 {
		t.Fatalf("err %v after %d calls, want the result at the fourth", err, s.calls.Load())
	}
	for i, d := range w.d {
		if d < 2*time.Second {
			t.Errorf("wait %d = %s, want at least the 2s Retry-After", i, d)
		}
	}
	if st := c.breaker.State().String(); st != "closed" {
		t.Fatalf("circuit %s after in_progress answers", st)
	}
}

func TestNewValidates(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "http://", "::"} {
		if _, err := New(u); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	if _, err := New("http://x", WithMaxAttempts(0)); err == nil {
		t.Error("zero attempts accepted")
	}
	e := &Error{StatusCode: 502, Message: "Bad Gateway"}
	if !strings.Contains(e.Error(), "http_502") {
		t.Errorf("Error() = %q", e.Error())
	}
}

func TestRequestJSONOmitsUnset(t *testing.T) {
	b, _ := json.Marshal(req)
	if s := string(b); strings.Contains(s, "seed") || strings.Contains(s, "tier") || strings.Contains(s, "mask_key") {
		t.Fatalf("unset optional fields sent: %s", s)
	}
}
