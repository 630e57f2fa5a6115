package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

type refusingStager struct{}

func (refusingStager) Stage(context.Context, staging.Request) (staging.Outcome, error) {
	return staging.Outcome{}, fault.New(fault.NotFound, "no such original")
}

func newTestServer(t *testing.T) (http.Handler, *testsupport.LogBuffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &testsupport.LogBuffer{}
	s := New(refusingStager{}, catalog.Default(), reg, telemetry.NewHTTPMetrics(reg), telemetry.NewLogger(logs, slog.LevelDebug), Options{
		MaxBodyBytes: 1 << 10, RequestTimeout: time.Second,
	})
	return s.Handler(), logs
}

func do(h http.Handler, method, path string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.Method = method
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// TestInventedMethodsDoNotGrowMetrics sends methods no client should use:
// they are counted under one "other" label, and neither /metrics nor the
// log line grows with them.
func TestInventedMethodsDoNotGrowMetrics(t *testing.T) {
	h, logs := newTestServer(t)
	do(h, http.MethodGet, "/healthz")
	do(h, "BREW", "/infer")
	baseline := do(h, http.MethodGet, "/metrics").Body.Len()

	long := strings.Repeat("M", 64<<10)
	for i := range 50 {
		for _, path := range []string{"/infer", "/nowhere", "/healthz"} {
			do(h, fmt.Sprintf("INVENTED%d", i), path)
		}
	}
	do(h, long, "/infer")
	body := do(h, http.MethodGet, "/metrics").Body.String()
	if strings.Contains(body, "INVENTED") || strings.Contains(body, "MMMM") {
		t.Fatalf("a client's method reached /metrics:\n%.2000s", body)
	}
	if !strings.Contains(body, `method="other"`) {
		t.Errorf("invented methods are not counted as other")
	}
	// The only new series are "other" on the two routes not seen before
	// with it: a few hundred bytes of histogram, never one per method.
	if grown := len(body) - baseline; grown > 8<<10 {
		t.Errorf("/metrics grew by %d bytes after 151 invented methods", grown)
	}
	if strings.Contains(logs.String(), "INVENTED") || strings.Contains(logs.String(), "MMMM") {
		t.Errorf("a client's method reached the log")
	}
}

func TestMethodNotAllowedSaysWhatIs(t *testing.T) {
	h, _ := newTestServer(t)
	for path, want := range map[string]string{
		"/infer":      "POST",
		"/healthz":    "GET",
		"/metrics":    "GET",
		"/v1/catalog": "GET",
	} {
		for _, m := range []string{http.MethodPut, http.MethodDelete, "PROPFIND"} {
			rec := do(h, m, path)
			if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != want {
				t.Errorf("%s %s: %d, Allow %q, want 405 with Allow %q", m, path, rec.Code, rec.Header().Get("Allow"), want)
			}
			if b, _ := io.ReadAll(rec.Body); !strings.Contains(string(b), `"method_not_allowed"`) {
				t.Errorf("%s %s: body %s", m, path, b)
			}
		}
	}
	if rec := do(h, http.MethodGet, "/infer"); rec.Header().Get("Allow") != "POST" {
		t.Errorf("GET /infer: Allow %q", rec.Header().Get("Allow"))
	}
}

// stalledLog is a log sink whose writes wait until release is closed.
type stalledLog struct {
	writing chan struct{}
	release chan struct{}
}

func (l *stalledLog) Write(p []byte) (int, error) {
	select {
	case l.writing <- struct{}{}:
	default:
	}
	<-l.release
	return len(p), nil
}

// TestAnswerIsSentBeforeTheLogLine: a log sink that stalls (a full pipe to
// the container runtime) delays the request's log line, not its answer.
func TestAnswerIsSentBeforeTheLogLine(t *testing.T) {
	sink := &stalledLog{writing: make(chan struct{}, 1), release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	s := New(refusingStager{}, catalog.Default(), reg, telemetry.NewHTTPMetrics(reg), telemetry.NewLogger(sink, slog.LevelInfo), Options{
		MaxBodyBytes: 1 << 10, RequestTimeout: time.Second,
	})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	defer close(sink.release)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/infer",
		strings.NewReader(`{"image_id":"a","original_key":"k.jpg","room_type":"living_room","style":"modern"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("no answer while the log line waits: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"not_found"`) {
		t.Fatalf("got %d %s (%v), want the stager's 404", resp.StatusCode, body, err)
	}
	select {
	case <-sink.writing:
	case <-ctx.Done():
		t.Fatal("the request's log line was never written")
	}
}
