package app_test

import (
	"bytes"
	"image/jpeg"
	"strings"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/telemetry"
)

// TestUpscaleEndToEnd runs upscaled jobs through the sidecar and the test
// engine (which upscales by resampling): a pro job answers the final size
// and the engine's upscale phase is counted; a free one is refused with
// 403 before anything is read or written; a disabled upscaler answers 400.
func TestUpscaleEndToEnd(t *testing.T) {
	svc, store := slowEngine(t, "0", map[string]string{"UPSCALE_ENABLED": "true"})
	upscaled := func(id, tier string) map[string]any {
		m := job(id)
		m["tier"], m["upscale"] = tier, true
		return m
	}
	before := store.snapshot(t)
	refused := infer(t, svc, upscaled("free-1", "free"))
	if refused.status != 403 || refused.errorCode(t) != "forbidden" || !strings.Contains(string(refused.body), "tier free") {
		t.Errorf("free upscale: %d %s, want 403 forbidden naming the tier", refused.status, refused.body)
	}
	if after := store.snapshot(t); len(after) != len(before) {
		t.Errorf("a refused upscale wrote to the store: %v", after)
	}

	start := time.Now()
	pro := decodeStaged(t, infer(t, svc, upscaled("pro-1", "pro")))
	took := time.Since(start)
	if pro.Width != 2048 || pro.Height != 1536 || strings.Join(pro.Warnings, ",") != "" {
		t.Errorf("pro upscale: %+v, want 2048x1536 with no warning", pro)
	}
	data, _ := store.get(t, pro.StagedKey)
	if cfg, err := jpeg.DecodeConfig(bytes.NewReader(data)); err != nil || cfg.Width != 2048 || cfg.Height != 1536 {
		t.Errorf("staged object %+v %v, want a 2048x1536 JPEG", cfg, err)
	}
	t.Logf("upscaled job on the test engine: %v", took)

	replay := infer(t, svc, upscaled("pro-1", "pro"))
	if replay.header.Get("Idempotent-Replay") != "true" {
		t.Errorf("replay: %d %s", replay.status, replay.body)
	}
	plain := job("pro-1")
	plain["tier"] = "pro"
	if a := infer(t, svc, plain); a.status != 409 || a.errorCode(t) != "idempotency_conflict" {
		t.Errorf("the same image_id without upscale: %d %s, want 409", a.status, a.body)
	}

	metrics := string(get(t, svc.url+"/metrics").body)
	if n := metricValue(t, metrics, `vstage_engine_phase_duration_seconds_count{phase="upscale"}`); n != "1" {
		t.Errorf("upscale phases counted = %s, want 1", n)
	}
	size := telemetry.SizeLabel(2048 * 1536)
	if n := metricValue(t, metrics, `vstage_staging_job_duration_seconds_count{backend="self",size="`+size+`"}`); n != "1" {
		t.Errorf("upscaled jobs of size %s = %s, want 1: counted at the final size", size, n)
	}
}

func TestUpscaleDisabledIsRefused(t *testing.T) {
	store := localBlobs{t.TempDir()}
	store.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	svc := start(t, map[string]string{"INFERENCE_MODE": "mock", "STORAGE_URL": "file://" + store.dir})
	m := job("biz-1")
	m["tier"], m["upscale"] = "business", true
	before := store.snapshot(t)
	a := infer(t, svc, m)
	if a.status != 400 || a.errorCode(t) != "invalid_input" || !strings.Contains(string(a.body), "upscaling is disabled") {
		t.Errorf("upscale while disabled: %d %s, want 400 invalid_input naming the reason", a.status, a.body)
	}
	if after := store.snapshot(t); len(after) != len(before) {
		t.Errorf("a refused upscale wrote to the store: %v", after)
	}
}

// In mock mode an upscaled job is the original resampled to the final size,
// and the answer says so.
func TestUpscaleInMockModeResamples(t *testing.T) {
	store := localBlobs{t.TempDir()}
	store.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	svc := start(t, map[string]string{"INFERENCE_MODE": "mock", "STORAGE_URL": "file://" + store.dir, "UPSCALE_ENABLED": "true"})
	m := job("biz-2")
	m["tier"], m["upscale"] = "business", true
	b := decodeStaged(t, infer(t, svc, m))
	if b.Width != 2048 || b.Height != 1536 || strings.Join(b.Warnings, ",") != "upscale_resampled_only" {
		t.Errorf("mock upscale: %+v, want 2048x1536 with upscale_resampled_only", b)
	}
}
