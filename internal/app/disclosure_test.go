package app_test

import (
	"bytes"
	"image"
	"image/jpeg"
	"testing"

	"github.com/vstage/vstage/internal/disclosure"
)

// TestStagedImagesAreDisclosed: every staged image says it was altered
// with AI (one XMP packet, nothing else: the photo's EXIF and GPS are
// gone), and a request with "label" gets the label burned in, a
// different job from the same image_id without it.
func TestStagedImagesAreDisclosed(t *testing.T) {
	dir := t.TempDir()
	store := localBlobs{dir}
	store.put(t, "listings/42/empty.jpg", withEXIF(t, photo(t, 640, 480)))
	svc := start(t, map[string]string{"STORAGE_URL": "file://" + dir, "OUTPUT_LONG_SIDE": "640"})

	plain := decodeStaged(t, infer(t, svc, job("plain")))
	withLabel := job("labelled")
	withLabel["label"] = true
	labelled := decodeStaged(t, infer(t, svc, withLabel))

	images := map[string]image.Image{}
	for name, key := range map[string]string{"plain": plain.StagedKey, "labelled": labelled.StagedKey} {
		data, ok := store.get(t, key)
		if !ok {
			t.Fatalf("%s: %s not written", name, key)
		}
		if !bytes.Contains(data, []byte(disclosure.DigitalSourceType)) {
			t.Errorf("%s: no DigitalSourceType in the staged image", name)
		}
		if bytes.Contains(data, []byte("Exif\x00\x00")) || bytes.Contains(data, []byte("vstage-test-gps")) {
			t.Errorf("%s: the original's EXIF survived", name)
		}
		img, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		images[name] = img
	}
	// The label sits in the bottom-left corner: there the two differ
	// markedly, far from it they do not (beyond a JPEG re-encode).
	b := images["plain"].Bounds()
	corner := image.Rect(b.Min.X+8, b.Max.Y-40, b.Min.X+120, b.Max.Y-8)
	far := image.Rect(b.Max.X-120, b.Min.Y+8, b.Max.X-8, b.Min.Y+40)
	if d := meanDiff(images["plain"], images["labelled"], corner); d < 20 {
		t.Errorf("bottom-left corner differs by %.1f on average, want a visible label", d)
	}
	if d := meanDiff(images["plain"], images["labelled"], far); d > 4 {
		t.Errorf("the top-right corner differs by %.1f on average, want only the label to change", d)
	}

	// The label is part of the job.
	withLabel["image_id"] = "plain"
	if a := infer(t, svc, withLabel); a.status != 409 {
		t.Errorf("the same image_id with a label: %d %s, want 409", a.status, a.body)
	}
}

// withEXIF inserts an EXIF APP1 segment (with a GPS marker string) right
// after the JPEG's SOI, as a camera would write one.
func withEXIF(t *testing.T, jpg []byte) []byte {
	t.Helper()
	payload := append([]byte("Exif\x00\x00"), []byte("vstage-test-gps 48.8584N 2.2945E")...)
	seg := []byte{0xFF, 0xE1, byte((len(payload) + 2) >> 8), byte(len(payload) + 2)}
	out := append([]byte{}, jpg[:2]...)
	out = append(out, seg...)
	out = append(out, payload...)
	return append(out, jpg[2:]...)
}

// meanDiff is the mean absolute difference of the two images' channels
// over r, on a 0–255 scale.
func meanDiff(a, b image.Image, r image.Rectangle) float64 {
	var sum, n float64
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			ar, ag, ab, _ := a.At(x, y).RGBA()
			br, bg, bb, _ := b.At(x, y).RGBA()
			for _, d := range []float64{float64(ar) - float64(br), float64(ag) - float64(bg), float64(ab) - float64(bb)} {
				if d < 0 {
					d = -d
				}
				sum += d / 257
				n++
			}
		}
	}
	return sum / n
}
