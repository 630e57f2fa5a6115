package engine

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/vstage/vstage/internal/testsupport"
)

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Python != "python3" || o.Module != "inference" || o.StartTimeout != 10*time.Minute || o.HealthTimeout != 10*time.Second ||
		o.StopGrace != 10*time.Second || o.WedgeGrace != 10*time.Second || o.BackoffMin != 500*time.Millisecond ||
		o.BackoffMax != 30*time.Second || o.StderrLines != 1024 || o.Logger == nil {
		t.Errorf("defaults: %+v", o)
	}
	for _, bad := range []Options{
		{BackoffMin: time.Second, BackoffMax: time.Millisecond},
		{HealthTimeout: -1},
		{MaxJobs: -1},
		{SocketDir: "/" + strings.Repeat("d", 90)},
		{WarmupLongSide: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
}

func TestEngineCommandLine(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want []string
	}{
		{Options{}, []string{"-m", "inference", "--socket", "/s"}},
		{
			Options{Module: "enginetest", ModelDir: "/models", Device: "cuda", WarmupLongSide: 512, Args: []string{"--concurrency", "2"}},
			[]string{"-m", "enginetest", "--socket", "/s", "--model-dir", "/models", "--device", "cuda",
				"--warmup-long-side", "512", "--concurrency", "2"},
		},
		{Options{TinyModel: true}, []string{"-m", "inference", "--socket", "/s", "--tiny-model"}},
	} {
		o, err := tc.o.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if got := o.args("/s"); !slices.Equal(got, tc.want) {
			t.Errorf("%+v:\n got %q\nwant %q", tc.o, got, tc.want)
		}
	}
}

func TestScrubEnv(t *testing.T) {
	env := []string{
		"PATH=/usr/bin", "HOME=/root", "AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b",
		"HF_TOKEN=c", "HF_HOME=/cache", "GITHUB_TOKEN=d", "DB_PASSWORD=e", "API_KEY=f",
		"CUDA_VISIBLE_DEVICES=0", "ENGINE_CONCURRENCY=2", "OTEL_EXPORTER_OTLP_HEADERS_SECRET=g",
		"LD_LIBRARY_PATH=/lib", "SIGNING_KEY_ID=h",
		// The engine exports its traces to a collector beside it: it gets the
		// exporter's settings, never the headers that may hold a key.
		"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318",
		"OTEL_EXPORTER_OTLP_HEADERS=api-key=i", "OTEL_EXPORTER_OTLP_TRACES_HEADERS=x-key=j",
	}
	got := scrubEnv(env)
	want := []string{"PATH=/usr/bin", "HOME=/root", "HF_HOME=/cache", "CUDA_VISIBLE_DEVICES=0",
		"ENGINE_CONCURRENCY=2", "LD_LIBRARY_PATH=/lib",
		"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318"}
	if !slices.Equal(got, want) {
		t.Errorf("scrubEnv:\n got %q\nwant %q", got, want)
	}
}

func TestExitReason(t *testing.T) {
	exited := func(code int) syscall.WaitStatus { return syscall.WaitStatus(code << 8) }
	signaled := func(sig syscall.Signal) syscall.WaitStatus { return syscall.WaitStatus(sig) }
	for _, tc := range []struct {
		name               string
		ws                 syscall.WaitStatus
		byUs               bool
		before, after      uint64
		haveOOM            bool
		reason, detailPart string
	}{
		{"exit code", exited(70), false, 0, 0, true, ReasonExit, "exit code 70"},
		{"segfault", signaled(syscall.SIGSEGV), false, 0, 0, true, ReasonSignal, "SIGSEGV"},
		{"our SIGKILL", signaled(syscall.SIGKILL), true, 0, 1, true, ReasonSignal, "SIGKILL"},
		{"OOM counter rose", signaled(syscall.SIGKILL), false, 2, 3, true, ReasonOOMKill, "OOM"},
		{"OOM counter flat", signaled(syscall.SIGKILL), false, 2, 2, true, ReasonSignal, "SIGKILL"},
		{"no counter", signaled(syscall.SIGKILL), false, 0, 0, false, ReasonOOMKill, "OOM"},
	} {
		reason, detail := exitReason(tc.ws, tc.byUs, tc.before, tc.after, tc.haveOOM)
		if reason != tc.reason || !strings.Contains(detail, tc.detailPart) {
			t.Errorf("%s: got %q %q, want %q and %q", tc.name, reason, detail, tc.reason, tc.detailPart)
		}
	}
}

func TestParseOOMKills(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory.events")
	if err := os.WriteFile(p, []byte("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, ok := parseOOMKills(p); !ok || n != 2 {
		t.Errorf("got %d %v, want 2 true", n, ok)
	}
	if _, ok := parseOOMKills(p + ".missing"); ok {
		t.Error("a missing file must report no counter")
	}
}

func TestForwarder(t *testing.T) {
	var logs testsupport.LogBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("source", "engine")
	dropped := 0
	f := newForwarder(log, 100, func() { dropped++ })
	in := strings.Join([]string{
		`{"time":"2026-01-01T00:00:00Z","level":"warning","msg":"job stopped","job_id":"a~1","reason":"cancelled"}`,
		`Traceback (most recent call last):`,
		`{"level":"info","msg":"job queued","job_id":"a~2"}`,
		"x" + strings.Repeat("y", 2*maxLineBytes),
		"",
	}, "\n")
	f.read(strings.NewReader(in))
	f.write()
	var entries []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad log line %q: %v", line, err)
		}
		entries = append(entries, m)
	}
	if len(entries) != 4 {
		t.Fatalf("got %d entries, want 4: %s", len(entries), logs.String())
	}
	e := entries[0]
	if e["msg"] != "job stopped" || e["level"] != "WARN" || e["source"] != "engine" || e["job_id"] != "a~1" ||
		e["reason"] != "cancelled" || e["engine_time"] != "2026-01-01T00:00:00Z" {
		t.Errorf("JSON line: %v", e)
	}
	if entries[1]["msg"] != "Traceback (most recent call last):" || entries[1]["level"] != "WARN" {
		t.Errorf("plain line: %v", entries[1])
	}
	if n := len(entries[3]["msg"].(string)); n != maxLineBytes {
		t.Errorf("long line kept %d bytes, want %d", n, maxLineBytes)
	}
	if dropped != 0 {
		t.Errorf("dropped %d", dropped)
	}

	// Nobody reads the lines: the reader must not block, and counts drops.
	f = newForwarder(log, 2, func() { dropped++ })
	f.read(strings.NewReader(strings.Repeat("line\n", 10)))
	if dropped != 8 {
		t.Errorf("dropped %d lines, want 8", dropped)
	}
}

func TestMetricsPassPromlint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	m.startDuration.Observe(1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	want := []string{
		"vstage_engine_jobs_in_flight", "vstage_engine_ready", "vstage_engine_resident_memory_bytes",
		"vstage_engine_restarts_total", "vstage_engine_start_duration_seconds",
		"vstage_engine_stderr_lines_dropped_total", "vstage_engine_up",
	}
	if !slices.Equal(names, want) {
		t.Errorf("metrics %q, want %q", names, want)
	}
}
