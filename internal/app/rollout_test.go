package app_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/app"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

func adminCall(t *testing.T, svc *service, method, token, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, svc.adminURL+"/admin/rollout", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return do(t, req)
}

// TestKillSwitchUnderLoad flips the kill switch while jobs run and wait on
// the engine, then flips it back: no request is dropped, jobs that were on
// the GPU finish there, queued and later ones follow the setting, and after
// the switch returns every new job goes to the engine again.
func TestKillSwitchUnderLoad(t *testing.T) {
	svc, _ := slowEngine(t, "0.05", map[string]string{
		"QUEUE_DEPTH": "16", "FREE_QUEUE_SHARE": "1", "ADMIN_TOKEN": "s3cret", "JOB_DURATION_PER_MEGAPIXEL": "500ms",
	})
	const n = 12
	results := make([]outcome, n)
	backends := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], backends[i] = stageBackend(t, svc, fmt.Sprintf("flip-%d", i))
		}()
	}
	time.Sleep(300 * time.Millisecond) // one job on the engine, the rest queued
	if a := adminCall(t, svc, http.MethodPut, "s3cret", `{"enabled":false}`); a.status != 200 {
		t.Fatalf("kill switch: %d %s", a.status, a.body)
	}
	wg.Wait()
	count := map[string]int{}
	for i, r := range results {
		if r.status != 200 {
			t.Errorf("%s dropped: %d %s", r.id, r.status, r.code)
		}
		count[backends[i]]++
	}
	if count["self"] < 1 || count["mock"] < 1 || count["self"]+count["mock"] != n {
		t.Errorf("backends %v: want the running job on self and the queued ones on mock", count)
	}
	t.Logf("during the flip: %v", count)

	if a := adminCall(t, svc, http.MethodPut, "s3cret", `{"enabled":true}`); a.status != 200 {
		t.Fatalf("switch back: %d %s", a.status, a.body)
	}
	for i := range 3 {
		if r, be := stageBackend(t, svc, fmt.Sprintf("back-%d", i)); r.status != 200 || be != "self" {
			t.Errorf("after the switch returned: %d %s on %q, want self", r.status, r.code, be)
		}
	}
	if !strings.Contains(svc.logs.String(), `"msg":"rollout changed"`) {
		t.Error("the change was not logged")
	}
	metrics := string(get(t, svc.url+"/metrics").body)
	for _, b := range []string{"self", "mock"} {
		if v := metricValue(t, metrics, `vstage_staging_jobs_total{backend="`+b+`",outcome="ok",tier="free"}`); v == "(absent)" {
			t.Errorf("no jobs counted for %s", b)
		}
	}
}

func stageBackend(t *testing.T, svc *service, id string) (outcome, string) {
	t.Helper()
	body, _ := json.Marshal(job(id))
	resp, err := http.Post(svc.url+"/infer", "application/json", bytes.NewReader(body))
	if err != nil {
		return outcome{id: id, status: -1, code: err.Error()}, ""
	}
	defer resp.Body.Close()
	var b struct {
		Backend string `json:"backend"`
		Error   struct{ Code string }
	}
	_ = json.NewDecoder(resp.Body).Decode(&b)
	return outcome{id: id, status: resp.StatusCode, code: b.Error.Code}, b.Backend
}

func TestAdminAuth(t *testing.T) {
	dir := t.TempDir()
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir, "ADMIN_TOKEN": "right-token"})
	for name, tc := range map[string]struct {
		method, token, body string
		status              int
	}{
		"no token":        {http.MethodGet, "", "", 401},
		"wrong token":     {http.MethodGet, "wrong", "", 401},
		"put no token":    {http.MethodPut, "", `{"enabled":false}`, 401},
		"right token":     {http.MethodGet, "right-token", "", 200},
		"unknown mode":    {http.MethodPut, "right-token", `{"mode":"gpu"}`, 400},
		"mode not built":  {http.MethodPut, "right-token", `{"mode":"self"}`, 400},
		"canary too high": {http.MethodPut, "right-token", `{"canary_percent":101}`, 400},
	} {
		t.Run(name, func(t *testing.T) {
			a := adminCall(t, svc, tc.method, tc.token, tc.body)
			if a.status != tc.status {
				t.Errorf("%s: %d %s, want %d", name, a.status, a.body, tc.status)
			}
		})
	}
	var st struct {
		Enabled       bool   `json:"enabled"`
		Mode          string `json:"mode"`
		CanaryPercent int    `json:"canary_percent"`
	}
	if err := json.Unmarshal(adminCall(t, svc, http.MethodGet, "right-token", "").body, &st); err != nil || !st.Enabled || st.Mode != "mock" || st.CanaryPercent != 100 {
		t.Errorf("state after refused changes: %+v %v", st, err)
	}
}

func TestAdminOnANonLoopbackAddressNeedsAToken(t *testing.T) {
	cfg, err := config.Load(func(k string) string {
		return map[string]string{"INFERENCE_MODE": "mock", "ADMIN_ADDR": "0.0.0.0:9091", "STORAGE_URL": "file://" + t.TempDir()}[k]
	}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.New(t.Context(), cfg, telemetry.NewLogger(&testsupport.LogBuffer{}, 0), telemetry.NoTracing()); err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN") {
		t.Errorf("New = %v, want a refusal naming ADMIN_TOKEN", err)
	}
}

// TestRolloutFileReload starts from a rollout file and re-reads it on the
// reload signal; a broken file leaves the state as it was.
func TestRolloutFileReload(t *testing.T) {
	dir := t.TempDir()
	store := localBlobs{dir}
	store.put(t, "listings/42/empty.jpg", photo(t, 64, 48))
	file := filepath.Join(t.TempDir(), "rollout.json")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"enabled":true,"mode":"mock","canary_percent":0}`)
	reload := make(chan os.Signal, 1)
	svc := startWithReload(t, map[string]string{"STORAGE_URL": "file://" + dir, "ROLLOUT_FILE": file, "INFERENCE_CANARY_PERCENT": "100"}, reload)
	state := func() string { return string(adminCall(t, svc, http.MethodGet, "", "").body) }
	if s := state(); !strings.Contains(s, `"canary_percent":0`) {
		t.Fatalf("start state %s, want the file's", s)
	}
	write(`{"enabled":false,"mode":"mock","canary_percent":40}`)
	reload <- os.Interrupt
	waitFor(t, func() bool { return strings.Contains(state(), `"canary_percent":40`) })
	write(`{"enabled":true,`)
	reload <- os.Interrupt
	waitFor(t, func() bool { return strings.Contains(svc.logs.String(), "rollout reload failed") })
	if s := state(); !strings.Contains(s, `"canary_percent":40`) || !strings.Contains(s, `"enabled":false`) {
		t.Errorf("a broken file changed the state: %s", s)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeProvider is a predictions API on loopback that answers every job at
// once with a small image, or fails every call while failing is set.
type fakeProvider struct {
	srv     *httptest.Server
	failing atomic.Bool
	calls   atomic.Int32
}

func newFakeProvider(t *testing.T) *fakeProvider {
	t.Helper()
	f := &fakeProvider{}
	out := "data:image/jpeg;base64," + base64.StdEncoding.EncodeToString(photo(t, 96, 64))
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		if f.failing.Load() {
			http.Error(w, `{"detail":"upstream down"}`, http.StatusBadGateway)
			return
		}
		if r.Header.Get("Authorization") != "Bearer provider-token" {
			http.Error(w, `{"detail":"unauthenticated"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"p1","status":"succeeded","output":%q,"urls":{"get":"%s/v1/predictions/p1"}}`, out, f.srv.URL)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// TestManagedModeWithFallback stages on a fake hosted provider; when the
// provider fails and the circuit opens, jobs are answered from mock with a
// warning, and the provider is not called while the circuit is open.
func TestManagedModeWithFallback(t *testing.T) {
	p := newFakeProvider(t)
	dir := t.TempDir()
	store := localBlobs{dir}
	store.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	svc := start(t, map[string]string{
		"INFERENCE_MODE": "managed", "STORAGE_URL": "file://" + dir, "MANAGED_BASE_URL": p.srv.URL,
		"MANAGED_MODEL_VERSION": "v1", "MANAGED_API_TOKEN": "provider-token", "MANAGED_MAX_ATTEMPTS": "1",
		"MANAGED_BREAKER_FAILURES": "2", "MANAGED_BREAKER_OPEN_TIMEOUT": "1m", "FALLBACK_TO_MOCK": "true",
	})
	b := decodeStaged(t, infer(t, svc, job("managed-1")))
	if b.Backend != "managed" || b.Width != 96 || b.ModelRev != "managed:v1" {
		t.Errorf("managed answer %+v", b)
	}
	p.failing.Store(true)
	for i := range 2 {
		if a := infer(t, svc, job(fmt.Sprintf("down-%d", i))); a.status != 502 || a.errorCode(t) != "provider_error" {
			t.Errorf("provider down: %d %s, want 502 provider_error", a.status, a.body)
		}
	}
	before := p.calls.Load()
	fb := decodeStaged(t, infer(t, svc, job("fallback-1")))
	if fb.Backend != "mock" || len(fb.Warnings) != 1 || fb.Warnings[0] != "fallback_mock" {
		t.Errorf("while the circuit is open: %+v, want mock with warning fallback_mock", fb)
	}
	if p.calls.Load() != before {
		t.Error("the provider was called while the circuit was open")
	}
	if strings.Contains(svc.logs.String(), "provider-token") {
		t.Error("the provider token is in the log")
	}
	if v := metricValue(t, string(get(t, svc.url+"/metrics").body), "vstage_managed_circuit_open"); v != "1" {
		t.Errorf("vstage_managed_circuit_open = %s", v)
	}
}
