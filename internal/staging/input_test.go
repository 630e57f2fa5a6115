package staging

import (
	"bytes"
	"image"
	"image/png"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

func putPNG(t *testing.T, f fixture, key string, w, h int) {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Put(t.Context(), key, buf.Bytes(), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestImageTooLargeNamesTheDeclaredSize(t *testing.T) {
	f := newFixture(t, 0)
	putPNG(t, f, "l/big.png", 2000, 1000) // over the fixture's 1 MiB pixel cap
	r := req("big")
	r.OriginalKey = "l/big.png"
	_, err := f.svc.Stage(t.Context(), r)
	e := fault.From(err)
	if e.Code != fault.ImageTooLarge || !strings.Contains(e.Message, "2000x1000") {
		t.Fatalf("err = %s %q, want image_too_large naming 2000x1000", e.Code, e.Message)
	}
}
