package sample

import (
	"bytes"
	"image"
	"image/jpeg"
	"testing"
)

func TestEmbeddedPhotoIsFreshRender(t *testing.T) {
	got, err := Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, JPEG()) {
		t.Fatalf("the embedded photo (%d bytes) differs from a fresh render (%d bytes); run go generate ./internal/sample", len(JPEG()), len(got))
	}
}

func TestEmbeddedPhotoSize(t *testing.T) {
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(JPEG()))
	if err != nil {
		t.Fatalf("embedded photo is not a JPEG: %v", err)
	}
	if cfg.Width != Width || cfg.Height != Height || Width != 1536 || Height != 1024 {
		t.Errorf("embedded photo is %dx%d; want 1536x1024", cfg.Width, cfg.Height)
	}
	if Key != "demo/empty_living_room.jpg" {
		t.Errorf("Key = %q", Key)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	a, b := Render(120, 80), Render(120, 80)
	if !bytes.Equal(a.Pix, b.Pix) {
		t.Fatal("two renders of the same size differ")
	}
}

// TestRenderLayout checks the broad strokes at a small size, so that a
// change that breaks the picture fails here rather than in front of a user:
// a bright ceiling, wooden floor, walls lighter than the floor, a sunlit
// patch brighter than the floor around it.
func TestRenderLayout(t *testing.T) {
	m := Render(192, 128)
	lum := func(x, y int) (r, g, b, l float64) {
		c := m.RGBAAt(x, y)
		r, g, b = float64(c.R), float64(c.G), float64(c.B)
		return r, g, b, 0.2126*r + 0.7152*g + 0.0722*b
	}
	_, _, _, ceiling := lum(96, 4)
	fr, fg, fb, floor := lum(96, 124)
	_, _, _, wall := lum(10, 60)
	_, _, _, patch := lum(88, 97)
	_, _, _, beside := lum(140, 97)
	if ceiling < 180 || wall < 180 {
		t.Errorf("ceiling %.0f and side wall %.0f should be light", ceiling, wall)
	}
	if !(fr > fg && fg > fb) || floor >= wall {
		t.Errorf("floor (%.0f, %.0f, %.0f) should be a wood tone darker than the walls", fr, fg, fb)
	}
	if patch <= beside+15 {
		t.Errorf("sun patch %.0f should be brighter than the floor beside it %.0f", patch, beside)
	}
	// The engine traces the room's structure from edges, so each plane
	// must differ clearly from its neighbours: back wall against the side
	// walls and the ceiling.
	_, _, _, back := lum(60, 45)
	for _, p := range [][2]int{{44, 62}, {158, 62}, {96, 30}} {
		if _, _, _, l := lum(p[0], p[1]); l-back < 25 {
			t.Errorf("plane at %v (%.0f) is too close to the back wall (%.0f) for a clear edge", p, l, back)
		}
	}
	if b := m.Bounds(); b != image.Rect(0, 0, 192, 128) {
		t.Errorf("bounds %v", b)
	}
}

func BenchmarkRender(b *testing.B) {
	for b.Loop() {
		Render(Width, Height)
	}
}
