package app_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

// otlpReceiver is an OTLP/HTTP trace receiver: it keeps every span both
// processes export to it, with its service's name.
type otlpReceiver struct {
	url string
	mu  sync.Mutex
	all []span
}

type span struct {
	service string
	*tracepb.Span
}

func (s span) id() string     { return hex.EncodeToString(s.SpanId) }
func (s span) parent() string { return hex.EncodeToString(s.ParentSpanId) }
func (s span) trace() string  { return hex.EncodeToString(s.TraceId) }

func (s span) attr(key string) string {
	for _, kv := range s.Attributes {
		if kv.Key != key {
			continue
		}
		if v, ok := kv.Value.GetValue().(*commonpb.AnyValue_IntValue); ok {
			return strconv.FormatInt(v.IntValue, 10)
		}
		return kv.Value.GetStringValue()
	}
	return ""
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		var msg coltracepb.ExportTraceServiceRequest
		if err != nil || req.URL.Path != "/v1/traces" || proto.Unmarshal(body, &msg) != nil {
			http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range msg.ResourceSpans {
			service := ""
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.Key == "service.name" {
					service = kv.Value.GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					r.all = append(r.all, span{service, s})
				}
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

// trace returns the spans of one trace by name, waiting up to within for
// every name in want to arrive (the exporters send in batches).
func (r *otlpReceiver) trace(t *testing.T, traceID string, within time.Duration, want ...string) map[string][]span {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := map[string][]span{}
		r.mu.Lock()
		for _, s := range r.all {
			if s.trace() == traceID {
				got[s.Name] = append(got[s.Name], s)
			}
		}
		r.mu.Unlock()
		missing := slices.DeleteFunc(slices.Clone(want), func(n string) bool { return len(got[n]) > 0 })
		if len(missing) == 0 {
			return got
		}
		if time.Now().After(deadline) {
			names := []string{}
			for n := range got {
				names = append(names, n)
			}
			t.Fatalf("trace %s lacks %v after %s; it has %v", traceID, missing, within, names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tracedService starts a self-mode sidecar on the test engine and an S3
// server, both processes exporting their spans to a receiver through the
// standard OTEL_* variables.
func tracedService(t *testing.T, extra map[string]string) (*service, *otlpReceiver, *s3Blobs) {
	t.Helper()
	py := testsupport.EnginePython(t)
	rcv := newOTLPReceiver(t)
	// The engine inherits these; the sidecar's own exporter reads them too.
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.url)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	tr, err := telemetry.NewTracing(t.Context(), "otlp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	s3b := newS3(t, "", nil)
	env := map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_MODULE": "enginetest", "ENGINE_TINY_MODEL": "true",
		"STORAGE_URL": s3b.url(), "S3_ENDPOINT": s3b.srv.URL, "S3_FORCE_PATH_STYLE": "true", "OTEL_TRACES_EXPORTER": "otlp",
	}
	for k, v := range extra {
		env[k] = v
	}
	svc := startTraced(t, env, nil, tr)
	waitReady(t, svc, 3*time.Minute)
	s3b.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	return svc, rcv, s3b
}

const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
)

// postTraced sends an /infer as a traced caller would, with its span in
// the W3C traceparent header.
func postTraced(t *testing.T, svc *service, id string) (*http.Response, []byte) {
	t.Helper()
	body := `{"image_id":"` + id + `","original_key":"listings/42/empty.jpg","room_type":"living_room","style":"scandinavian","tier":"pro","seed":5}`
	req, err := http.NewRequest(http.MethodPost, svc.url+"/infer", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, out
}

// TestTraceFollowsAJobThroughS3AndTheEngine: one traced /infer in self mode
// on S3 is one trace, the caller's: the sidecar's server span under the
// caller's span, the job's span with its attributes, the S3 GetObject and
// PutObject spans of the SDK, the engine call (a gRPC client span) and,
// exported by the engine process itself, its Stage span and its phases
// (denoise among them) under that call. The request's log lines carry the
// trace id.
func TestTraceFollowsAJobThroughS3AndTheEngine(t *testing.T) {
	svc, rcv, _ := tracedService(t, nil)
	checkJobTrace(t, svc, rcv)
}

// TestTraceWithTheDiffusersEngine is the same trace through the real
// Diffusers engine (the tiny random SDXL-shaped model on the CPU): its
// phases are spans of the pipeline's own steps.
func TestTraceWithTheDiffusersEngine(t *testing.T) {
	t.Setenv("ENGINE_MIN_LONG_SIDE", "64") // small sizes keep the CPU run short
	svc, rcv, _ := tracedService(t, map[string]string{
		"ENGINE_MODULE": "inference", "ENGINE_DEVICE": "cpu", "INFERENCE_STEPS": "2", "OUTPUT_LONG_SIDE": "64",
	})
	checkJobTrace(t, svc, rcv)
}

// checkJobTrace sends one traced job and checks its trace and log lines.
func checkJobTrace(t *testing.T, svc *service, rcv *otlpReceiver) {
	t.Helper()
	resp, body := postTraced(t, svc, "traced-1")
	if resp.StatusCode != 200 {
		t.Fatalf("/infer = %d %s", resp.StatusCode, body)
	}
	const stage = "vstage.engine.v1.Engine/Stage"
	spans := rcv.trace(t, callerTrace, 15*time.Second,
		"POST /infer", "staging.job", "S3.GetObject", "S3.PutObject", "backend.self", stage, "denoise")

	one := func(name, service string) span {
		t.Helper()
		for _, s := range spans[name] {
			if s.service == service {
				return s
			}
		}
		t.Fatalf("no %s span from %s", name, service)
		return span{}
	}
	server := one("POST /infer", telemetry.ServiceName)
	if server.parent() != callerSpan || server.Kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("server span: parent %s kind %v, want the caller's span %s and SERVER", server.parent(), server.Kind, callerSpan)
	}
	job := one("staging.job", telemetry.ServiceName)
	if job.parent() != server.id() {
		t.Errorf("staging.job is not under the server span")
	}
	for k, want := range map[string]string{
		"vstage.image_id": "traced-1", "vstage.tier": "pro", "vstage.room_type": "living_room", "vstage.style": "scandinavian",
		"vstage.backend": "self", "vstage.seed": "5", "vstage.outcome": "ok",
	} {
		if got := job.attr(k); got != want {
			t.Errorf("staging.job %s = %q, want %q", k, got, want)
		}
	}
	if job.attr("vstage.model_rev") == "" || job.attr("vstage.output.width") == "" || job.attr("vstage.prompt") != "" {
		t.Errorf("staging.job: model_rev %q, width %q, prompt %q: want the first two, and no prompt unless TRACE_PROMPTS",
			job.attr("vstage.model_rev"), job.attr("vstage.output.width"), job.attr("vstage.prompt"))
	}
	byID := map[string]span{}
	for _, ss := range spans {
		for _, s := range ss {
			byID[s.id()] = s
		}
	}
	under := func(s span, ancestor span) bool {
		for p := s.parent(); p != ""; p = byID[p].parent() {
			if p == ancestor.id() {
				return true
			}
			if _, ok := byID[p]; !ok {
				return false
			}
		}
		return false
	}
	for _, name := range []string{"S3.GetObject", "S3.PutObject", "backend.self", "admission", "staging.record_lookup"} {
		if s := one(name, telemetry.ServiceName); !under(s, job) {
			t.Errorf("%s is not under the job's span", name)
		}
	}
	call := one(stage, telemetry.ServiceName)
	if call.Kind != tracepb.Span_SPAN_KIND_CLIENT || !under(call, one("backend.self", telemetry.ServiceName)) {
		t.Errorf("the engine call %s is kind %v, want a CLIENT span under backend.self", stage, call.Kind)
	}
	engineStage := one(stage, telemetry.EngineServiceName)
	if engineStage.parent() != call.id() || engineStage.Kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("the engine's Stage span: parent %s kind %v, want the sidecar's call %s and SERVER", engineStage.parent(), engineStage.Kind, call.id())
	}
	for _, phase := range []string{"queue", "decode", "preprocess", "denoise", "vae_decode", "encode"} {
		if s := one(phase, telemetry.EngineServiceName); !under(s, engineStage) {
			t.Errorf("the engine's %s span is not under its Stage span", phase)
		}
	}
	if one("denoise", telemetry.EngineServiceName).attr("vstage.steps") == "" {
		t.Error("denoise has no vstage.steps attribute")
	}

	// The sidecar's request line and the engine's lines for the job name
	// the trace.
	svc.logged(t, "request line and engine line with the caller's trace id", func(logs string) bool {
		var request, engine bool
		for _, line := range strings.Split(logs, "\n") {
			if !strings.Contains(line, `"trace_id":"`+callerTrace+`"`) {
				continue
			}
			request = request || strings.Contains(line, `"msg":"request"`)
			engine = engine || strings.Contains(line, `"component":"engine"`)
		}
		return request && engine
	})
	if !bytes.Contains(body, []byte(`"staged_key"`)) {
		t.Errorf("answer %s", body)
	}

	// The job's duration carries its trace id as an exemplar, in the
	// OpenMetrics exposition a scraper asks for.
	req, err := http.NewRequest(http.MethodGet, svc.url+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	mresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer mresp.Body.Close()
	exposition, _ := io.ReadAll(mresp.Body)
	found := false
	for _, line := range strings.Split(string(exposition), "\n") {
		if strings.HasPrefix(line, "vstage_staging_job_duration_seconds_bucket{") &&
			strings.Contains(line, `# {trace_id="`+callerTrace+`"}`) {
			found = true
		}
	}
	if !found {
		t.Errorf("no job-duration bucket with the exemplar trace_id %s in the OpenMetrics exposition", callerTrace)
	}
}

// TestTraceMarksAKilledEngineAsAnError: a SIGKILL of the engine mid-job
// ends the engine call's span, the job's and the server span in error.
func TestTraceMarksAKilledEngineAsAnError(t *testing.T) {
	t.Setenv("ENGINE_TEST_STEP_DELAY", "0.2") // 30 steps: a 6 s job
	svc, rcv, _ := tracedService(t, nil)
	pid := enginePID(t, svc.logs.String())
	done := make(chan int, 1)
	go func() {
		resp, _ := postTraced(t, svc, "killed-1")
		done <- resp.StatusCode
	}()
	time.Sleep(800 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if status := <-done; status != http.StatusServiceUnavailable {
		t.Fatalf("/infer after the kill = %d, want 503", status)
	}
	const stage = "vstage.engine.v1.Engine/Stage"
	spans := rcv.trace(t, callerTrace, 15*time.Second, "POST /infer", "staging.job", "backend.self", stage)
	for _, name := range []string{"POST /infer", "staging.job", "backend.self", stage} {
		for _, s := range spans[name] {
			if s.service != telemetry.ServiceName {
				continue
			}
			if s.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR {
				t.Errorf("%s status %v, want ERROR", name, s.Status)
			}
		}
	}
	if got := spans["staging.job"][0].attr("vstage.error.code"); got != "unavailable" {
		t.Errorf("staging.job error code %q, want unavailable", got)
	}
}

// TestLogsNameTheCallersTraceWithExportOff: with exporting off nothing is
// recorded, yet the request's log line still names the caller's trace, so
// logs and the caller's own trace meet.
func TestLogsNameTheCallersTraceWithExportOff(t *testing.T) {
	dir := t.TempDir()
	localBlobs{dir}.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir})
	if resp, body := postTraced(t, svc, "untraced-1"); resp.StatusCode != 200 {
		t.Fatalf("/infer = %d %s", resp.StatusCode, body)
	}
	logs := svc.logged(t, "request line", func(logs string) bool { return strings.Contains(logs, `"msg":"request"`) })
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"msg":"request"`) {
			if !strings.Contains(line, `"trace_id":"`+callerTrace+`"`) {
				t.Errorf("request line without the caller's trace id: %s", line)
			}
			return
		}
	}
}
