package app_test

import (
	"maps"
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

// TestCorruptMaskInMockMode sends mock mode, where every job goes behind
// the kill switch, a mask that only a full decode finds corrupt: it is
// refused with 400 as self mode refuses it, and nothing is written.
func TestCorruptMaskInMockMode(t *testing.T) {
	dir := t.TempDir()
	store := localBlobs{dir: dir}
	store.put(t, "listings/1/o.jpg", photo(t, 320, 240))
	mask := pngOf(t, 320, 240)
	mask[len(mask)-20] ^= 0xFF // inside the image data
	store.put(t, "listings/1/mask.png", mask)
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir, "INFERENCE_MODE": "mock"})
	before := store.snapshot(t)
	a := infer(t, svc, map[string]any{
		"image_id": "m1", "original_key": "listings/1/o.jpg", "mask_key": "listings/1/mask.png",
		"room_type": "bedroom", "style": "modern",
	})
	if a.status != http.StatusBadRequest || a.errorCode(t) != "invalid_input" {
		t.Errorf("corrupt mask: %d %s", a.status, a.body)
	}
	if after := store.snapshot(t); !maps.Equal(before, after) {
		t.Errorf("the store changed: %v", after)
	}
}
