package rollout

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/mode"
)

const testToken = "s3cret-admin-token"

// errorDetail is the error model's body as a client reads it.
type errorDetail struct {
	Code      fault.Code `json:"code"`
	Message   string     `json:"message"`
	Retryable bool       `json:"retryable"`
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type answer struct {
	status int
	state  State
	err    errorDetail
	header http.Header
}

func call(t *testing.T, h http.Handler, method, path, auth, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	a := answer{status: rec.Code, header: rec.Header()}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), &a.state); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, path, rec.Body, err)
		}
		return a
	}
	var eb errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil {
		t.Fatalf("%s %s: error body %q: %v", method, path, rec.Body, err)
	}
	a.err = eb.Error
	return a
}

func TestAdminAuth(t *testing.T) {
	r := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 10}, WithAvailable(mode.Self))
	h := NewAdminHandler(r, testToken, nil)
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + testToken + "x", "Basic " + testToken, testToken, "Bearer"} {
		for _, m := range []string{http.MethodGet, http.MethodPut} {
			a := call(t, h, m, AdminPath, auth, `{"enabled":false}`)
			if a.status != http.StatusUnauthorized || a.err.Code != "unauthorized" || a.err.Retryable {
				t.Errorf("%s with Authorization %q: %d %+v, want 401 unauthorized", m, auth, a.status, a.err)
			}
			if a.header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
		}
	}
	if !r.Get().Enabled {
		t.Fatal("an unauthorized PUT changed the state")
	}
	// Unknown paths are hidden behind the token too.
	if a := call(t, h, http.MethodGet, "/admin/other", "", ""); a.status != http.StatusUnauthorized {
		t.Errorf("unknown path without token: %d", a.status)
	}
	if a := call(t, h, http.MethodGet, AdminPath, "Bearer "+testToken, ""); a.status != http.StatusOK || a.state != r.Get() {
		t.Errorf("GET with token: %d %+v", a.status, a.state)
	}
	if a := call(t, h, http.MethodGet, AdminPath, "bearer  "+testToken, ""); a.status != http.StatusOK {
		t.Errorf("the scheme is case-insensitive: got %d", a.status)
	}
}

func TestAdminPut(t *testing.T) {
	r := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 10}, WithAvailable(mode.Self))
	h := NewAdminHandler(r, testToken, nil)
	auth := "Bearer " + testToken

	a := call(t, h, http.MethodPut, AdminPath, auth, `{"enabled":false}`)
	if want := (State{Enabled: false, Mode: mode.Self, CanaryPercent: 10}); a.status != http.StatusOK || a.state != want || r.Get() != want {
		t.Fatalf("kill switch: %d %+v, router %+v", a.status, a.state, r.Get())
	}
	a = call(t, h, http.MethodPut, AdminPath, auth, `{"enabled":true,"mode":"self","canary_percent":75}`)
	if want := (State{Enabled: true, Mode: mode.Self, CanaryPercent: 75}); a.status != http.StatusOK || r.Get() != want {
		t.Fatalf("full update: %d, router %+v", a.status, r.Get())
	}
	before := r.Get()
	for _, tc := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"mode":"managed"}`, http.StatusBadRequest, "invalid_input"},
		{`{"canary_percent":101}`, http.StatusBadRequest, "invalid_input"},
		{`{"canary_percent":"5"}`, http.StatusBadRequest, "invalid_input"},
		{`{"enabled":true,"extra":1}`, http.StatusBadRequest, "invalid_input"},
		{`{"Enabled":false}`, http.StatusBadRequest, "invalid_input"},
		{`{"\u212a":false}`, http.StatusBadRequest, "invalid_input"},
		{`{"canary_percent":5,"CANARY_PERCENT":50}`, http.StatusBadRequest, "invalid_input"},
		{`{"enabled":true,"enabled":false}`, http.StatusBadRequest, "invalid_input"},
		{`{}`, http.StatusBadRequest, "invalid_input"},
		{`{"enabled":true} {}`, http.StatusBadRequest, "invalid_input"},
		{`not json`, http.StatusBadRequest, "invalid_input"},
		{`{"mode":"` + strings.Repeat("x", 5000) + `"}`, http.StatusRequestEntityTooLarge, "payload_too_large"},
	} {
		a := call(t, h, http.MethodPut, AdminPath, auth, tc.body)
		if a.status != tc.status || string(a.err.Code) != tc.code || a.err.Message == "" {
			t.Errorf("PUT %.40s: %d %+v, want %d %s", tc.body, a.status, a.err, tc.status, tc.code)
		}
		if r.Get() != before {
			t.Fatalf("PUT %.40s changed the state to %+v", tc.body, r.Get())
		}
	}
	for _, m := range []string{http.MethodDelete, http.MethodPost, "PROPFIND"} {
		if a := call(t, h, m, AdminPath, auth, ""); a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET, HEAD, PUT" {
			t.Errorf("%s: %d, Allow %q", m, a.status, a.header.Get("Allow"))
		}
	}
	if a := call(t, h, http.MethodGet, "/admin/other", auth, ""); a.status != http.StatusNotFound {
		t.Errorf("unknown path: %d", a.status)
	}
}

func TestAdminWithoutTokenIsOpen(t *testing.T) {
	r := newRouter(t, State{Mode: mode.Mock})
	h := NewAdminHandler(r, "", nil)
	if a := call(t, h, http.MethodGet, AdminPath, "", ""); a.status != http.StatusOK {
		t.Fatalf("GET without a configured token: %d", a.status)
	}
}

func TestCheckAdminAddr(t *testing.T) {
	for _, tc := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:9091", "", true},
		{"[::1]:9091", "", true},
		{"localhost:9091", "", true},
		{"127.0.0.2:9091", "", true},
		{":9091", "", false},
		{"0.0.0.0:9091", "", false},
		{"10.1.2.3:9091", "", false},
		{"admin.internal:9091", "", false},
		{"0.0.0.0:9091", testToken, true},
		{":9091", testToken, true},
		{"no-port", testToken, false},
	} {
		err := CheckAdminAddr(tc.addr, tc.token)
		if (err == nil) != tc.ok {
			t.Errorf("CheckAdminAddr(%q, token=%v) = %v, want ok=%v", tc.addr, tc.token != "", err, tc.ok)
		}
		if err != nil && strings.Contains(err.Error(), testToken) {
			t.Errorf("error names the token: %v", err)
		}
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rollout.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFileAndReload(t *testing.T) {
	r := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 10}, WithAvailable(mode.Self))
	good := writeFile(t, `{"enabled": false, "mode": "self", "canary_percent": 40}`)
	s, err := LoadFile(good)
	if err != nil || s != (State{Enabled: false, Mode: mode.Self, CanaryPercent: 40}) {
		t.Fatalf("LoadFile: %+v, %v", s, err)
	}
	old, updated, err := r.ReloadFile(good)
	if err != nil || old.CanaryPercent != 10 || updated != s || r.Get() != s {
		t.Fatalf("ReloadFile: old %+v new %+v err %v", old, updated, err)
	}
	for _, body := range []string{
		``,
		`{"enabled": true, "mode": "self"}`,
		`{"enabled": true, "mode": "self", "canary_percent": 40, "x": 1}`,
		`{"enabled": true, "mode": "gpu", "canary_percent": 40}`,
		`{"enabled": true, "mode": "managed", "canary_percent": 40}`,
		`{"enabled": true, "mode": "self", "canary_percent": 40`,
		`{"enabled": true, "Mode": "self", "canary_percent": 40}`,
		`{"enabled": false, "mode": "self", "canary_percent": 40, "canary_percent": 50}`,
	} {
		p := writeFile(t, body)
		if _, _, err := r.ReloadFile(p); err == nil {
			t.Errorf("ReloadFile(%q) accepted", body)
		}
		if r.Get() != s {
			t.Fatalf("a bad file %q changed the state to %+v", body, r.Get())
		}
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
