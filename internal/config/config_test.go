package config

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/mode"
)

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

// tiny is the least a self-mode configuration needs: a model.
var tiny = map[string]string{"ENGINE_TINY_MODEL": "true"}

// withTiny returns kv with ENGINE_TINY_MODEL=true added.
func withTiny(kv map[string]string) map[string]string {
	out := map[string]string{"ENGINE_TINY_MODEL": "true"}
	for k, v := range kv {
		out[k] = v
	}
	return out
}

func TestDefaults(t *testing.T) {
	c, err := Load(env(tiny), "/srv/app")
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenAddr != "127.0.0.1:8080" || c.Mode != mode.Self || c.StorageURL != "file:///srv/app/var/storage" {
		t.Errorf("defaults: %+v", c)
	}
	if c.MaxBodyBytes != 64<<10 || c.MaxInputBytes != 25<<20 || c.MaxInputPixels != 40_000_000 || c.OutputLongSide != 1024 {
		t.Errorf("limits: %+v", c)
	}
	if c.RequestTimeout != 120*time.Second || c.ShutdownTimeout != 30*time.Second || c.LogLevel != slog.LevelInfo || len(c.AllowedPrefixes) != 0 {
		t.Errorf("durations/level/prefixes: %+v", c)
	}
	if c.S3AttemptTimeout != 10*time.Second || c.S3MaxAttempts != 3 || c.S3MaxBackoff != time.Second {
		t.Errorf("S3 attempts: %v, %d, %v", c.S3AttemptTimeout, c.S3MaxAttempts, c.S3MaxBackoff)
	}
}

func TestOverrides(t *testing.T) {
	c, err := Load(env(map[string]string{
		"LISTEN_ADDR": ":9000", "INFERENCE_MODE": "MOCK", "STORAGE_URL": "s3://bucket/pre", "S3_ENDPOINT": "http://127.0.0.1:9000",
		"S3_FORCE_PATH_STYLE": "true", "ALLOWED_PREFIXES": "listings/, uploads", "MAX_BODY_BYTES": "128KiB",
		"MAX_INPUT_BYTES": "1048576", "MAX_INPUT_PIXELS": "1_000_000", "REQUEST_TIMEOUT": "2m", "LOG_LEVEL": "debug",
		"STAGED_KEY_TEMPLATE": "{dir}/out/{name}-{image_id}.jpg",
	}), "/")
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenAddr != ":9000" || c.Mode != mode.Mock || !c.S3ForcePathStyle || c.MaxBodyBytes != 128<<10 || c.MaxInputBytes != 1<<20 ||
		c.MaxInputPixels != 1_000_000 || c.RequestTimeout != 2*time.Minute || c.LogLevel != slog.LevelDebug {
		t.Errorf("overrides: %+v", c)
	}
	if got := c.AllowedPrefixes.String(); got != "listings,uploads" {
		t.Errorf("prefixes = %q", got)
	}
	if got := c.StagedKey("listings/7/photo.jpeg", "id9"); got != "listings/7/out/photo-id9.jpg" {
		t.Errorf("staged key = %q", got)
	}
}

func TestStagedKeyDefault(t *testing.T) {
	c, err := Load(env(tiny), "/")
	if err != nil {
		t.Fatal(err)
	}
	for orig, want := range map[string]string{
		"listings/42/empty.jpg": "listings/42/staged/img.jpg",
		"top.png":               "staged/img.jpg",
	} {
		if got := c.StagedKey(orig, "img"); got != want {
			t.Errorf("StagedKey(%q) = %q, want %q", orig, got, want)
		}
	}
}

func TestBadValuesAreAllReported(t *testing.T) {
	_, err := Load(env(map[string]string{
		"LISTEN_ADDR": "8080", "INFERENCE_MODE": "gpu", "STORAGE_URL": "file://relative/dir", "S3_FORCE_PATH_STYLE": "yes please",
		"ALLOWED_PREFIXES": "a,,b", "MAX_BODY_BYTES": "64KB", "MAX_INPUT_PIXELS": "-1", "OUTPUT_LONG_SIDE": "10",
		"OUTPUT_JPEG_QUALITY": "101", "REQUEST_TIMEOUT": "30", "LOG_LEVEL": "loud", "STAGED_KEY_TEMPLATE": "{dir}/x.jpg",
		"S3_MAX_BACKOFF": "0s", "GPU_HOUR_COST": "-2", "OTEL_TRACES_EXPORTER": "jaeger", "DISCLOSURE_TEXT": "bad\ttext", "MANAGED_COST_PER_RUN": "NaN", "MANAGED_COST_PER_SECOND": "cheap",
	}), "/")
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for _, name := range []string{"LISTEN_ADDR", "INFERENCE_MODE", "STORAGE_URL", "S3_FORCE_PATH_STYLE", "ALLOWED_PREFIXES",
		"MAX_BODY_BYTES", "MAX_INPUT_PIXELS", "OUTPUT_LONG_SIDE", "OUTPUT_JPEG_QUALITY", "REQUEST_TIMEOUT", "LOG_LEVEL", "STAGED_KEY_TEMPLATE", "S3_MAX_BACKOFF",
		"GPU_HOUR_COST", "MANAGED_COST_PER_RUN", "MANAGED_COST_PER_SECOND", "OTEL_TRACES_EXPORTER", "DISCLOSURE_TEXT"} {
		if !strings.Contains(err.Error(), name+":") {
			t.Errorf("error does not mention %s:\n%v", name, err)
		}
	}
}

func TestManagedNeedsAVersionAndOneToken(t *testing.T) {
	for name, kv := range map[string]map[string]string{
		"no version":  {"INFERENCE_MODE": "managed", "MANAGED_API_TOKEN": "t"},
		"no token":    {"INFERENCE_MODE": "managed", "MANAGED_MODEL_VERSION": "v"},
		"two tokens":  {"MANAGED_MODEL_VERSION": "v", "MANAGED_API_TOKEN": "t", "MANAGED_API_TOKEN_FILE": "/f"},
		"bad mode":    {"INFERENCE_MODE": "gpu"},
		"bad canary":  {"INFERENCE_CANARY_PERCENT": "101"},
		"bad admin":   {"ADMIN_ADDR": "localhost"},
		"bad enabled": {"INFERENCE_ENABLED": "maybe"},
	} {
		if _, err := Load(env(kv), "/"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c, err := Load(env(map[string]string{"INFERENCE_MODE": "managed", "MANAGED_MODEL_VERSION": "v1", "MANAGED_API_TOKEN": "secret",
		"INFERENCE_CANARY_PERCENT": "10", "INFERENCE_ENABLED": "false", "FALLBACK_TO_MOCK": "true"}), "/")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := Load(env(withTiny(map[string]string{"ADMIN_ADDR": "off"})), "/"); err != nil || c.Rollout.AdminAddr != "" {
		t.Errorf("ADMIN_ADDR=off: %q %v", c.Rollout.AdminAddr, err)
	}
	if c.Mode != mode.Managed || c.Managed.Version != "v1" || c.Rollout.CanaryPercent != 10 || c.Rollout.Enabled || !c.Managed.FallbackToMock ||
		c.Rollout.AdminAddr != "127.0.0.1:9091" || c.Managed.BaseURL != "https://api.replicate.com" {
		t.Errorf("managed config: %+v %+v %+v", c.Mode, c.Managed, c.Rollout)
	}
	if strings.Contains(fmt.Sprint(err), "secret") {
		t.Error("token in an error")
	}
}

func TestAdmissionAndGPUSettings(t *testing.T) {
	c, err := Load(env(withTiny(map[string]string{"CONCURRENCY": "2", "QUEUE_DEPTH": "4", "QUEUE_TIMEOUT": "5s", "FREE_QUEUE_SHARE": "0.25",
		"VRAM_HEADROOM_MB": "512", "ENGINE_MAX_GPU_MEMORY": "30GiB", "GPU_DEDICATED": "true"})), "/")
	if err != nil {
		t.Fatal(err)
	}
	a, g := c.Admission, c.GPU
	if a.Concurrency != 2 || a.QueueDepth != 4 || a.QueueTimeout != 5*time.Second || a.FreeQueueShare != 0.25 || a.VRAMHeadroom != 512<<20 ||
		a.VRAMBase != 10240<<20 || g.MaxEngineMemory != 30<<30 || !g.Dedicated || g.SampleInterval != time.Second {
		t.Errorf("admission %+v gpu %+v", a, g)
	}
	for _, kv := range []map[string]string{{"CONCURRENCY": "0"}, {"FREE_QUEUE_SHARE": "0"}, {"FREE_QUEUE_SHARE": "1.5"}, {"QUEUE_DEPTH": "-1"}} {
		if _, err := Load(env(kv), "/"); err == nil {
			t.Errorf("%v accepted", kv)
		}
	}
}

func TestEngineSettings(t *testing.T) {
	wd := t.TempDir()
	c, err := Load(env(tiny), wd)
	if err != nil {
		t.Fatal(err)
	}
	e := c.Engine
	if e.Python != "python3" || e.Module != "inference" || !e.TinyModel || e.Device != "auto" || e.Steps != 30 || e.HealthTimeout != 10*time.Second || e.MaxRSS != 0 || e.BackoffMax != 30*time.Second {
		t.Errorf("engine defaults: %+v", e)
	}
	venv := filepath.Join(wd, ".venv", "bin", "python")
	if err := os.MkdirAll(filepath.Dir(venv), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(venv, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err = Load(env(map[string]string{"ENGINE_MAX_RSS": "24GiB", "MODEL_DIR": wd, "ENGINE_DEVICE": "CUDA", "INFERENCE_STEPS": "8"}), wd)
	if err != nil {
		t.Fatal(err)
	}
	if e := c.Engine; e.Python != venv || e.MaxRSS != 24<<30 || e.ModelDir != wd || e.TinyModel || e.Device != "cuda" || e.Steps != 8 {
		t.Errorf("engine settings: %+v", e)
	}
	_, err = Load(env(map[string]string{"MODEL_DIR": filepath.Join(wd, "nope"), "ENGINE_DEVICE": "tpu", "INFERENCE_STEPS": "0",
		"ENGINE_BACKOFF_MIN": "1m", "ENGINE_BACKOFF_MAX": "1s"}), wd)
	for _, name := range []string{"MODEL_DIR", "ENGINE_DEVICE", "INFERENCE_STEPS", "ENGINE_BACKOFF_MAX"} {
		if err == nil || !strings.Contains(err.Error(), name+":") {
			t.Errorf("error does not mention %s: %v", name, err)
		}
	}
}

// TestSelfModeNamesItsModel: self mode starts only with MODEL_DIR or the
// tiny model asked for by name, never both; the other modes need neither.
func TestSelfModeNamesItsModel(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		kv   map[string]string
		fail string
	}{
		{nil, "MODEL_DIR: is required with INFERENCE_MODE=self"},
		{map[string]string{"ENGINE_TINY_MODEL": "false"}, "MODEL_DIR:"},
		{map[string]string{"MODEL_DIR": dir, "ENGINE_TINY_MODEL": "true"}, "ENGINE_TINY_MODEL:"},
		{map[string]string{"ENGINE_TINY_MODEL": "yes please"}, "ENGINE_TINY_MODEL:"},
		{map[string]string{"ENGINE_TINY_MODEL": "true", "ENGINE_MODULE": "engine test"}, "ENGINE_MODULE:"},
		{map[string]string{"ENGINE_TINY_MODEL": "true", "ENGINE_MODULE": ".inference"}, "ENGINE_MODULE:"},
		{map[string]string{"MODEL_DIR": dir}, ""},
		{map[string]string{"ENGINE_TINY_MODEL": "true", "ENGINE_MODULE": "enginetest"}, ""},
		{map[string]string{"INFERENCE_MODE": "mock"}, ""},
	} {
		c, err := Load(env(tc.kv), "/")
		switch {
		case tc.fail == "" && err != nil:
			t.Errorf("%v: %v", tc.kv, err)
		case tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)):
			t.Errorf("%v: got %v, want an error with %q", tc.kv, err, tc.fail)
		case tc.fail == "" && tc.kv["ENGINE_MODULE"] != "" && c.Engine.Module != tc.kv["ENGINE_MODULE"]:
			t.Errorf("%v: module %q", tc.kv, c.Engine.Module)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "64KiB": 64 << 10, "25MiB": 25 << 20, "1GiB": 1 << 30, "2 MiB": 2 << 20} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "1.5MiB", "-1", "9999999999999GiB", "10MB"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) accepted", in)
		}
	}
}

// TestReadmeListsEverySetting keeps the README's settings table honest.
func TestReadmeListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings {
		row := "| `" + s.Name + "` | `" + s.Default + "` |"
		if s.Default == "" {
			row = "| `" + s.Name + "` | (none) |"
		}
		if !strings.Contains(string(readme), row) {
			t.Errorf("README lacks the row %q", row)
		}
	}
}

func TestChecks(t *testing.T) {
	c, err := Load(env(tiny), "/")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Checks{ContentPolicy: ContentWarn, StructureMin: 0.5, Retries: 0}); c.Checks != want {
		t.Errorf("defaults: %+v, want %+v", c.Checks, want)
	}
	c, err = Load(env(withTiny(map[string]string{"CONTENT_POLICY": "Reject", "QA_STRUCTURE_MIN": "0", "QA_RETRIES": "3"})), "/")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Checks{ContentPolicy: ContentReject, StructureMin: 0, Retries: 3}); c.Checks != want {
		t.Errorf("overrides: %+v, want %+v", c.Checks, want)
	}
	for name, bad := range map[string][]string{
		"CONTENT_POLICY":   {"block", "on", "warn,reject"},
		"QA_STRUCTURE_MIN": {"-0.1", "1.01", "NaN", "half"},
		"QA_RETRIES":       {"-1", "4", "1.5"},
	} {
		for _, v := range bad {
			_, err := Load(env(withTiny(map[string]string{name: v})), "/")
			if err == nil || !strings.Contains(err.Error(), name+":") {
				t.Errorf("%s=%q: error %v does not name it", name, v, err)
			}
		}
	}
}

func TestUpscale(t *testing.T) {
	c, err := Load(env(tiny), "/")
	if err != nil {
		t.Fatal(err)
	}
	if c.Upscale.Enabled || c.Upscale.LongSide != 2048 || fmt.Sprint(c.Upscale.Tiers) != "[pro business]" {
		t.Errorf("defaults: %+v", c.Upscale)
	}
	c, err = Load(env(withTiny(map[string]string{
		"UPSCALE_ENABLED": "true", "UPSCALE_TIERS": " business , free,business", "UPSCALE_LONG_SIDE": "4096",
	})), "/")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Upscale.Enabled || c.Upscale.LongSide != 4096 || fmt.Sprint(c.Upscale.Tiers) != "[business free]" {
		t.Errorf("overrides: %+v", c.Upscale)
	}
	// A render size at or above the upscale is refused only while upscaling is on.
	if _, err := Load(env(withTiny(map[string]string{"OUTPUT_LONG_SIDE": "2048"})), "/"); err != nil {
		t.Errorf("OUTPUT_LONG_SIDE 2048 without upscaling: %v", err)
	}
	for kv, want := range map[[2]string]string{
		{"UPSCALE_LONG_SIDE", "2050"}:  "UPSCALE_LONG_SIDE: must be a multiple of 8",
		{"UPSCALE_LONG_SIDE", "4104"}:  "UPSCALE_LONG_SIDE: must be a whole number from 64 to 4096",
		{"UPSCALE_LONG_SIDE", "1024"}:  "UPSCALE_LONG_SIDE: must be above OUTPUT_LONG_SIDE (1024)",
		{"UPSCALE_TIERS", "pro,gold"}:  "UPSCALE_TIERS: must be a comma-separated list of free, pro and business",
		{"UPSCALE_TIERS", "pro,,free"}: "UPSCALE_TIERS: must be a comma-separated list",
		{"UPSCALE_ENABLED", "maybe"}:   "UPSCALE_ENABLED: must be true or false",
	} {
		_, err := Load(env(withTiny(map[string]string{"UPSCALE_ENABLED": "true", kv[0]: kv[1]})), "/")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=%s: got %v, want %q", kv[0], kv[1], err, want)
		}
	}
}
