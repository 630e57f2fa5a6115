package app_test

import (
	"bytes"
	"encoding/json"
	"image/jpeg"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/vstage/vstage/internal/disclosure"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Idle keep-alive connections of the shared HTTP clients.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

type stagedBody struct {
	StagedKey  string   `json:"staged_key"`
	Width      int      `json:"width"`
	Height     int      `json:"height"`
	ModelRev   string   `json:"model_rev"`
	Seed       *uint32  `json:"seed"`
	DurationMS *int64   `json:"duration_ms"`
	Warnings   []string `json:"warnings"`
	Backend    string   `json:"backend"`
}

func decodeStaged(t *testing.T, a answer) stagedBody {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	var b stagedBody
	dec := json.NewDecoder(bytes.NewReader(a.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
	if b.Seed == nil || b.DurationMS == nil {
		t.Fatalf("seed or duration_ms missing: %s", a.body)
	}
	return b
}

func job(id string) map[string]any {
	return map[string]any{"image_id": id, "original_key": "listings/42/empty.jpg", "room_type": "living_room", "style": "scandinavian"}
}

func TestInferEndToEnd(t *testing.T) {
	t.Run("s3", func(t *testing.T) {
		s3b := newS3(t, "tenant/", nil)
		svc := start(t, map[string]string{
			"STORAGE_URL": s3b.url(), "S3_ENDPOINT": s3b.srv.URL, "S3_FORCE_PATH_STYLE": "true",
			"ALLOWED_PREFIXES": "listings/",
		})
		checkEndToEnd(t, svc, s3b)
		head := s3b.head(t, "listings/42/staged/img-1.jpg")
		if ct := aws.ToString(head.ContentType); ct != "image/jpeg" {
			t.Errorf("staged Content-Type = %q", ct)
		}
		if _, ok := s3b.get(t, "listings/42/staged/img-1.jpg.json"); !ok {
			t.Error("no idempotency record beside the staged object")
		}
	})
	t.Run("local", func(t *testing.T) {
		dir := t.TempDir()
		svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir, "ALLOWED_PREFIXES": "listings/"})
		checkEndToEnd(t, svc, localBlobs{dir})
	})
}

func checkEndToEnd(t *testing.T, svc *service, store blobs) {
	t.Helper()
	store.put(t, "listings/42/empty.jpg", photo(t, 1600, 1200))
	b := decodeStaged(t, infer(t, svc, job("img-1")))
	if b.StagedKey != "listings/42/staged/img-1.jpg" || b.Width != 1024 || b.Height != 768 || b.ModelRev != "mock" || b.Backend != "mock" {
		t.Errorf("answer = %+v", b)
	}
	data, ok := store.get(t, b.StagedKey)
	if !ok {
		t.Fatalf("staged object %s not written", b.StagedKey)
	}
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(data))
	if err != nil || cfg.Width != 1024 || cfg.Height != 768 {
		t.Errorf("staged object: %v %dx%d, want a 1024x768 JPEG", err, cfg.Width, cfg.Height)
	}
}

// TestPhoneOrientationAndMetadata stages a photo a phone took upright
// (stored sideways with an EXIF orientation tag): the staged image is
// upright and carries no metadata.
func TestPhoneOrientationAndMetadata(t *testing.T) {
	dir := t.TempDir()
	store := localBlobs{dir}
	original := withOrientation(photo(t, 400, 300), 6)
	if !hasMarker(original, 0xe1) {
		t.Fatal("fixture has no EXIF")
	}
	store.put(t, "listings/42/empty.jpg", original)
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir})
	b := decodeStaged(t, infer(t, svc, job("phone")))
	if b.Width != 300 || b.Height != 400 {
		t.Errorf("staged %dx%d, want the upright 300x400", b.Width, b.Height)
	}
	data, _ := store.get(t, b.StagedKey)
	for _, m := range []byte{0xe2, 0xed, 0xfe} { // ICC, IPTC, comment
		if hasMarker(data, m) {
			t.Errorf("staged image has marker %#x", m)
		}
	}
	// The one APP1 left is the disclosure's XMP packet, not the EXIF.
	if bytes.Contains(data, []byte("Exif\x00\x00")) || !bytes.Contains(data, []byte(disclosure.DigitalSourceType)) {
		t.Error("the staged image keeps its EXIF, or lacks the disclosure")
	}
}

func TestReplayConflictAndRestart(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"STORAGE_URL": "file://" + dir}
	store := localBlobs{dir}
	store.put(t, "listings/42/empty.jpg", photo(t, 640, 480))
	svc := start(t, env)

	first := infer(t, svc, job("img-1"))
	b := decodeStaged(t, first)
	if first.header.Get("Idempotent-Replay") != "" {
		t.Error("first answer marked as a replay")
	}
	staged, _ := store.get(t, b.StagedKey)

	again := infer(t, svc, job("img-1"))
	if again.status != http.StatusOK || again.header.Get("Idempotent-Replay") != "true" || !bytes.Equal(again.body, first.body) {
		t.Fatalf("replay: %d %q %s, want 200, replay header, same body %s", again.status, again.header.Get("Idempotent-Replay"), again.body, first.body)
	}
	withSeed := job("img-1")
	withSeed["seed"] = *b.Seed
	if a := infer(t, svc, withSeed); a.status != http.StatusOK || a.header.Get("Idempotent-Replay") != "true" {
		t.Errorf("replay with the recorded seed: %d %s", a.status, a.body)
	}

	for name, change := range map[string]func(map[string]any){
		"style":    func(m map[string]any) { m["style"] = "industrial" },
		"seed":     func(m map[string]any) { m["seed"] = *b.Seed + 1 },
		"strength": func(m map[string]any) { m["strength"] = 0.5 },
		"mask":     func(m map[string]any) { m["mask_key"] = "listings/42/mask.png" },
	} {
		m := job("img-1")
		change(m)
		a := infer(t, svc, m)
		if a.status != http.StatusConflict || a.errorCode(t) != "idempotency_conflict" {
			t.Errorf("%s changed: %d %s, want 409 idempotency_conflict", name, a.status, a.body)
		}
	}
	if now, _ := store.get(t, b.StagedKey); !bytes.Equal(now, staged) {
		t.Error("a replay or conflict rewrote the staged object")
	}

	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	restarted := start(t, env)
	if a := infer(t, restarted, job("img-1")); a.status != http.StatusOK || a.header.Get("Idempotent-Replay") != "true" || !bytes.Equal(a.body, first.body) {
		t.Errorf("after restart: %d %s, want the recorded answer", a.status, a.body)
	}
}

func TestBadInputsWriteNothing(t *testing.T) {
	dir := t.TempDir()
	store := localBlobs{dir}
	svc := start(t, map[string]string{
		"STORAGE_URL": "file://" + dir, "ALLOWED_PREFIXES": "listings/", "MAX_INPUT_BYTES": "200KiB", "MAX_INPUT_PIXELS": "4000000",
	})
	store.put(t, "listings/1/ok.jpg", photo(t, 320, 240))
	store.put(t, "listings/1/big.jpg", bytes.Repeat([]byte{0xff}, 300<<10))
	store.put(t, "listings/1/bomb.png", pngClaiming(30000, 30000))
	store.put(t, "listings/1/anim.jpg", []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"))
	store.put(t, "listings/1/text.png", []byte("hello, this is not an image"))
	store.put(t, "listings/1/corrupt.jpg", []byte("\xff\xd8\xff\xe0garbage"))
	store.put(t, "listings/1/small-mask.png", pngOf(t, 10, 10))
	store.put(t, "outside/x.jpg", photo(t, 64, 64))
	// A finished job, so that a different request under its image_id
	// conflicts.
	decodeStaged(t, infer(t, svc, map[string]any{"image_id": "done", "original_key": "listings/1/ok.jpg", "room_type": "bedroom", "style": "modern"}))

	with := func(kv ...any) []byte {
		m := map[string]any{"image_id": "img", "original_key": "listings/1/ok.jpg", "room_type": "bedroom", "style": "modern"}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		b, _ := json.Marshal(m)
		return b
	}
	cases := []struct {
		name   string
		body   []byte
		ctype  string
		status int
		code   string
	}{
		{"malformed json", []byte(`{"image_id":`), "", 400, "invalid_input"},
		{"empty body", nil, "", 400, "invalid_input"},
		{"array body", []byte(`[]`), "", 400, "invalid_input"},
		{"unknown field", with("staged_key", "listings/1/x.jpg"), "", 400, "invalid_input"},
		{"form content type", with(), "application/x-www-form-urlencoded", 415, "unsupported_media_type"},
		{"body over 64 KiB", with("style", strings.Repeat("x", 70<<10)), "", 413, "payload_too_large"},
		{"no image_id", with("image_id", nil), "", 400, "invalid_input"},
		{"image_id too long", with("image_id", strings.Repeat("a", 129)), "", 400, "invalid_input"},
		{"image_id slash", with("image_id", "a/b"), "", 400, "invalid_input"},
		{"image_id space", with("image_id", "a b"), "", 400, "invalid_input"},
		{"image_id unicode", with("image_id", "café"), "", 400, "invalid_input"},
		{"no original_key", with("original_key", nil), "", 400, "invalid_input"},
		{"absolute key", with("original_key", "/listings/1/ok.jpg"), "", 400, "invalid_input"},
		{"dotdot key", with("original_key", "listings/../etc/passwd"), "", 400, "invalid_input"},
		{"dot segment", with("original_key", "listings/./1/ok.jpg"), "", 400, "invalid_input"},
		{"empty segment", with("original_key", "listings//1/ok.jpg"), "", 400, "invalid_input"},
		{"trailing slash", with("original_key", "listings/1/"), "", 400, "invalid_input"},
		{"backslash", with("original_key", `listings\1\ok.jpg`), "", 400, "invalid_input"},
		{"nul in key", with("original_key", "listings/1/ok.jpg\x00"), "", 400, "invalid_input"},
		{"newline in key", with("original_key", "listings/1/\nok.jpg"), "", 400, "invalid_input"},
		{"key over 1024 bytes", with("original_key", "listings/"+strings.Repeat("a", 1020)), "", 400, "invalid_input"},
		{"key outside prefixes", with("original_key", "outside/x.jpg"), "", 403, "forbidden"},
		{"prefix look-alike", with("original_key", "listings-evil/x.jpg"), "", 403, "forbidden"},
		{"mask outside prefixes", with("mask_key", "outside/x.jpg"), "", 403, "forbidden"},
		{"bad mask key", with("mask_key", "listings/../x"), "", 400, "invalid_input"},
		{"unknown room type", with("room_type", "garage"), "", 400, "invalid_input"},
		{"unknown style", with("style", "gothic"), "", 400, "invalid_input"},
		{"strength zero", with("strength", 0), "", 400, "invalid_input"},
		{"strength above one", with("strength", 1.01), "", 400, "invalid_input"},
		{"guidance negative", with("guidance_scale", -0.5), "", 400, "invalid_input"},
		{"guidance above 30", with("guidance_scale", 30.5), "", 400, "invalid_input"},
		{"seed negative", with("seed", -1), "", 400, "invalid_input"},
		{"seed 2^32", with("seed", 1<<32), "", 400, "invalid_input"},
		{"seed fraction", with("seed", 0.5), "", 400, "invalid_input"},
		{"unknown tier", with("tier", "gold"), "", 400, "invalid_input"},
		{"original missing", with("original_key", "listings/1/nope.jpg"), "", 404, "not_found"},
		{"mask missing", with("mask_key", "listings/1/nope.png"), "", 404, "not_found"},
		{"original over MAX_INPUT_BYTES", with("original_key", "listings/1/big.jpg"), "", 413, "payload_too_large"},
		{"gif named jpg", with("original_key", "listings/1/anim.jpg"), "", 415, "unsupported_media_type"},
		{"text named png", with("original_key", "listings/1/text.png"), "", 415, "unsupported_media_type"},
		{"pixel bomb", with("original_key", "listings/1/bomb.png"), "", 422, "image_too_large"},
		{"corrupt jpeg", with("original_key", "listings/1/corrupt.jpg"), "", 400, "invalid_input"},
		{"mask of another size", with("mask_key", "listings/1/small-mask.png"), "", 400, "invalid_input"},
		{"image_id reused", with("image_id", "done", "style", "industrial"), "", 409, "idempotency_conflict"},
	}
	before := store.snapshot(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctype := tc.ctype
			if ctype == "" {
				ctype = "application/json"
			}
			a := post(t, svc.url+"/infer", ctype, tc.body)
			if a.status != tc.status {
				t.Errorf("status = %d, want %d: %s", a.status, tc.status, a.body)
			}
			if code := a.errorCode(t); code != tc.code {
				t.Errorf("code = %s, want %s", code, tc.code)
			}
			if after := store.snapshot(t); !maps.Equal(before, after) {
				t.Errorf("the store changed: before %v, after %v", before, after)
			}
		})
	}
}

func TestRoutesAndMetrics(t *testing.T) {
	dir := t.TempDir()
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir})
	if a := get(t, svc.url+"/healthz"); a.status != 200 {
		t.Errorf("/healthz = %d", a.status)
	}
	if a := get(t, svc.url+"/readyz"); a.status != 200 {
		t.Errorf("/readyz = %d", a.status)
	}
	if a := get(t, svc.url+"/infer"); a.status != 405 || a.errorCode(t) != "method_not_allowed" {
		t.Errorf("GET /infer = %d %s", a.status, a.body)
	}
	if a := get(t, svc.url+"/nope"); a.status != 404 || a.errorCode(t) != "route_not_found" {
		t.Errorf("GET /nope = %d %s", a.status, a.body)
	}
	cat := get(t, svc.url+"/v1/catalog")
	var c struct {
		RoomTypes []struct{ ID, Name string } `json:"room_types"`
		Styles    []struct{ ID, Name string } `json:"styles"`
	}
	if err := json.Unmarshal(cat.body, &c); err != nil || len(c.RoomTypes) < 8 || len(c.Styles) < 10 || c.RoomTypes[0].ID == "" || c.Styles[0].Name == "" {
		t.Errorf("catalog = %d %s (%v)", cat.status, cat.body, err)
	}
	infer(t, svc, job("x")) // a not_found job, so job metrics have a sample

	m := get(t, svc.url+"/metrics")
	if m.status != 200 {
		t.Fatalf("/metrics = %d", m.status)
	}
	for _, want := range []string{
		`vstage_http_requests_total{method="POST",route="/infer",status="404"} 1`,
		`vstage_staging_jobs_total{backend="mock",outcome="not_found",tier="free"} 1`,
		"vstage_build_info{", "go_goroutines ", "process_resident_memory_bytes ",
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	problems, err := promlint.New(bytes.NewReader(m.body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	svc.logged(t, "request line with image_id and code", func(logs string) bool {
		return strings.Contains(logs, `"image_id":"x"`) && strings.Contains(logs, `"code":"not_found"`)
	})
}

// TestDrain stops the service while a job waits on a slow storage read: the
// job finishes, new work and readiness get 503 meanwhile, and Serve returns
// cleanly.
func TestDrain(t *testing.T) {
	s3b := newS3(t, "", map[string]time.Duration{"/" + bucket + "/listings/42/empty.jpg": 1500 * time.Millisecond})
	s3b.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	svc := start(t, map[string]string{
		"STORAGE_URL": s3b.url(), "S3_ENDPOINT": s3b.srv.URL, "S3_FORCE_PATH_STYLE": "true",
		"DRAIN_DELAY": "1s", "SHUTDOWN_TIMEOUT": "10s",
	})
	var wg sync.WaitGroup
	var slow answer
	wg.Add(1)
	go func() {
		defer wg.Done()
		body, _ := json.Marshal(job("slow"))
		resp, err := http.Post(svc.url+"/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			slow = answer{status: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		slow = answer{status: resp.StatusCode}
	}()
	time.Sleep(300 * time.Millisecond) // the job is now waiting on storage
	stopped := make(chan error, 1)
	go func() { stopped <- svc.stop() }()
	deadline := time.Now().Add(900 * time.Millisecond)
	var sawReady, sawInfer bool
	for time.Now().Before(deadline) && !(sawReady && sawInfer) {
		if a := get(t, svc.url+"/readyz"); a.status == 503 {
			sawReady = true
		}
		if a := infer(t, svc, job("late")); a.status == 503 && a.errorCode(t) == "unavailable" && a.header.Get("Retry-After") != "" {
			sawInfer = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !sawReady || !sawInfer {
		t.Errorf("while draining: readyz 503 seen=%v, infer 503 unavailable seen=%v", sawReady, sawInfer)
	}
	if err := <-stopped; err != nil {
		t.Errorf("serve returned %v, want nil after a clean drain", err)
	}
	wg.Wait()
	if slow.status != 200 {
		t.Errorf("job in flight: status %d %s, want 200", slow.status, slow.body)
	}
}
