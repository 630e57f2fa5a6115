package app_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/jpeg"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

func waitReady(t *testing.T, svc *service, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		a := get(t, svc.url+"/readyz")
		if a.status == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %s: %s\n%s", within, a.body, svc.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSelfModeEndToEnd stages through the real engine (the tiny random
// SDXL-shaped Diffusers model on the CPU) with an S3-compatible store over
// HTTP.
func TestSelfModeEndToEnd(t *testing.T) {
	py := testsupport.EnginePython(t)
	s3b := newS3(t, "", nil)
	// The engine reads its own ENGINE_* settings from the environment it
	// inherits: small sizes keep the CPU run short.
	t.Setenv("ENGINE_MIN_LONG_SIDE", "64")
	svc := start(t, map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_TINY_MODEL": "true", "ENGINE_DEVICE": "cpu", "INFERENCE_STEPS": "2",
		"OUTPUT_LONG_SIDE": "64", "STORAGE_URL": s3b.url(), "S3_ENDPOINT": s3b.srv.URL, "S3_FORCE_PATH_STYLE": "true",
	})
	if a := get(t, svc.url+"/readyz"); a.status != 503 {
		t.Errorf("/readyz before the engine is warm = %d %s, want 503", a.status, a.body)
	}
	waitReady(t, svc, 3*time.Minute)
	s3b.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	// Readiness names the model, so a random-weight engine is never taken
	// for a real one.
	var ready struct {
		Status string
		Engine map[string]string
	}
	if a := get(t, svc.url+"/readyz"); json.Unmarshal(a.body, &ready) != nil || ready.Status != "ready" ||
		!strings.HasPrefix(ready.Engine["model_rev"], "tiny-random-") || ready.Engine["backend"] != "diffusers" || ready.Engine["device"] != "cpu" {
		t.Errorf("/readyz = %d %s, want the tiny model's model_rev, backend and device", a.status, a.body)
	}
	if !strings.Contains(svc.logs.String(), `"warmup_long_side":64`) {
		t.Error("the engine did not warm up at the served size (OUTPUT_LONG_SIDE=64)")
	}

	withSeed := func(id string) map[string]any {
		m := job(id)
		m["seed"] = 7
		return m
	}
	first := decodeStaged(t, infer(t, svc, withSeed("a")))
	if first.Width != 64 || first.Height != 48 || !strings.HasPrefix(first.ModelRev, "tiny-random") || *first.Seed != 7 || first.Backend != "self" {
		t.Errorf("answer = %+v, want 64x48 from the tiny model with seed 7", first)
	}
	a, _ := s3b.get(t, first.StagedKey)
	if cfg, err := jpeg.DecodeConfig(bytes.NewReader(a)); err != nil || cfg.Width != 64 || cfg.Height != 48 {
		t.Errorf("staged object: %v %dx%d, want a 64x48 JPEG", err, cfg.Width, cfg.Height)
	}
	if ct := s3b.head(t, first.StagedKey).ContentType; ct == nil || *ct != "image/jpeg" {
		t.Errorf("staged Content-Type = %v", ct)
	}

	// The request line splits the engine call into the engine's own time
	// and the rest.
	svc.logged(t, "request line with backend_ms and engine_ms", func(logs string) bool {
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, `"image_id":"a"`) {
				return strings.Contains(line, `"backend_ms":`) && strings.Contains(line, `"engine_ms":`)
			}
		}
		return false
	})

	second := decodeStaged(t, infer(t, svc, withSeed("b")))
	b, _ := s3b.get(t, second.StagedKey)
	if second.StagedKey == first.StagedKey || !bytes.Equal(a, b) {
		t.Errorf("same request and seed under another image_id gave other bytes (%s vs %s)", first.StagedKey, second.StagedKey)
	}

	replay := infer(t, svc, withSeed("a"))
	if replay.header.Get("Idempotent-Replay") != "true" {
		t.Errorf("replay: %d %s", replay.status, replay.body)
	}
	metrics := string(get(t, svc.url+"/metrics").body)
	size := telemetry.SizeLabel(float64(first.Width * first.Height))
	if n := metricValue(t, metrics, `vstage_staging_job_duration_seconds_count{backend="self",size="`+size+`"}`); n != "2" {
		t.Errorf("engine jobs = %s, want 2: the replay must not reach the engine", n)
	}
	for _, phase := range telemetry.Phases {
		if phase == "upscale" {
			continue // only upscaled jobs have it (upscale_test.go)
		}
		if n := metricValue(t, metrics, `vstage_engine_phase_duration_seconds_count{phase="`+phase+`"}`); n != "2" {
			t.Errorf("%s phases counted = %s, want 2", phase, n)
		}
	}
	if n := metricValue(t, metrics, `vstage_engine_ready`); n != "1" {
		t.Errorf("vstage_engine_ready = %s", n)
	}

	pid := enginePID(t, svc.logs.String())
	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("engine %d outlived the sidecar", pid)
	}
}

func metricValue(t *testing.T, exposition, series string) string {
	t.Helper()
	for _, line := range strings.Split(exposition, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			return rest
		}
	}
	return "(absent)"
}

var pidPattern = regexp.MustCompile(`"msg":"engine started"[^\n]*"engine_pid":(\d+)`)

func enginePID(t *testing.T, logs string) int {
	t.Helper()
	m := pidPattern.FindAllStringSubmatch(logs, -1)
	if m == nil {
		t.Fatalf("no engine started line in the log:\n%s", logs)
	}
	var pid int
	fmt.Sscan(m[len(m)-1][1], &pid)
	return pid
}
