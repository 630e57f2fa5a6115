package app_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestHeaderLimit sends headers over MAX_HEADER_BYTES to the API and to the
// admin listener: both answer 431 with the error model's JSON body, and a
// header within the limit is served.
func TestHeaderLimit(t *testing.T) {
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + t.TempDir(), "MAX_HEADER_BYTES": "8KiB"})
	for _, url := range []string{svc.url + "/healthz", svc.adminURL + "/admin/rollout"} {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Filler", strings.Repeat("f", 64<<10))
		a := do(t, req)
		if a.status != http.StatusRequestHeaderFieldsTooLarge || a.header.Get("Content-Type") != "application/json" || a.errorCode(t) != "header_too_large" {
			t.Errorf("%s with a 64 KiB header: %d %q %s", url, a.status, a.header.Get("Content-Type"), a.body)
		}
		req.Header.Set("X-Filler", strings.Repeat("f", 6<<10))
		if a := do(t, req); a.status != http.StatusOK {
			t.Errorf("%s with a 6 KiB header: %d %s", url, a.status, a.body)
		}
	}
}
