package imagecheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"math/rand/v2"
	"testing"
)

// photo returns a w×h image with smooth gradients and fine noise, closer to
// what a camera produces than a flat pattern, for benchmarks.
func photo(w, h int) *image.RGBA {
	r := rand.New(rand.NewPCG(1, 2))
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			n := uint8(r.IntN(24))
			m.SetRGBA(x, y, color.RGBA{uint8(x*200/w) + n, uint8(y*200/h) + n, 120 + n, 255})
		}
	}
	return m
}

// displayPos says where a stored pixel is meant to be seen, written from the
// wording of the TIFF specification ("the 0th row represents the visual
// right-hand side of the image, and the 0th column the visual top" for 6,
// and so on), independently of the lookup Normalize uses.
func displayPos(o, sx, sy, w, h int) (dx, dy int) {
	switch o {
	case 2: // row 0 top, column 0 right
		return w - 1 - sx, sy
	case 3: // row 0 bottom, column 0 right
		return w - 1 - sx, h - 1 - sy
	case 4: // row 0 bottom, column 0 left
		return sx, h - 1 - sy
	case 5: // row 0 left, column 0 top
		return sy, sx
	case 6: // row 0 right, column 0 top
		return h - 1 - sy, sx
	case 7: // row 0 right, column 0 bottom
		return h - 1 - sy, w - 1 - sx
	case 8: // row 0 left, column 0 bottom
		return sy, w - 1 - sx
	}
	return sx, sy
}

// storedFor returns how a camera tagging orientation o would store the
// upright picture up.
func storedFor(up *image.NRGBA, o int) *image.NRGBA {
	uw, uh := up.Rect.Dx(), up.Rect.Dy()
	sw, sh := uw, uh
	if o >= 5 {
		sw, sh = uh, uw
	}
	s := image.NewNRGBA(image.Rect(0, 0, sw, sh))
	for sy := range sh {
		for sx := range sw {
			dx, dy := displayPos(o, sx, sy, sw, sh)
			s.SetNRGBA(sx, sy, up.NRGBAAt(dx, dy))
		}
	}
	return s
}

func decodeJPEG(t *testing.T, data []byte) image.Image {
	t.Helper()
	m, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("output is not a JPEG: %v", err)
	}
	return m
}

func near(a, b color.Color, tol int) bool {
	ar, ag, ab, _ := a.RGBA()
	br, bg, bb, _ := b.RGBA()
	d := func(x, y uint32) bool { v := int(x>>8) - int(y>>8); return v <= tol && v >= -tol }
	return d(ar, br) && d(ag, bg) && d(ab, bb)
}

// checkPattern asserts that the centre of every block of pattern(w, h) has
// the colour the upright pattern has there.
func checkPattern(t *testing.T, m image.Image, w, h int) {
	t.Helper()
	if b := m.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Fatalf("output is %dx%d; want %dx%d", b.Dx(), b.Dy(), w, h)
	}
	for row := range 2 {
		for col := range 3 {
			x, y := col*w/3+w/6, row*h/2+h/4
			want := patternColors[row*3+col]
			if got := m.At(x, y); !near(got, want, 40) {
				t.Errorf("block (%d,%d) at %d,%d is %v; want %v", col, row, x, y, got, want)
			}
		}
	}
}

func TestNormalizeOrientation(t *testing.T) {
	up := pattern(48, 32)
	formats := []struct {
		name string
		make func(t *testing.T, m image.Image, tiff []byte) []byte
	}{
		{"jpeg", func(t *testing.T, m image.Image, tiff []byte) []byte { return withJPEGExif(encodeJPEG(t, m, 95), tiff) }},
		{"png", func(t *testing.T, m image.Image, tiff []byte) []byte {
			return insertPNGChunks(encodePNG(t, m), pngChunk("eXIf", tiff))
		}},
		{"webp", func(t *testing.T, m image.Image, tiff []byte) []byte { return encodeWebP(t, m, tiff) }},
	}
	for _, f := range formats {
		for o := 1; o <= 8; o++ {
			for _, order := range []byteOrder{binary.LittleEndian, binary.BigEndian} {
				t.Run(fmt.Sprintf("%s/%d/%v", f.name, o, order), func(t *testing.T) {
					data := f.make(t, storedFor(up, o), tiffOrientation(uint16(o), order))
					res, err := Normalize(data, NormalizeOptions{Quality: 95})
					if err != nil {
						t.Fatal(err)
					}
					if res.Info.Orientation != o {
						t.Errorf("Info.Orientation = %d; want %d", res.Info.Orientation, o)
					}
					if res.Width != 48 || res.Height != 32 {
						t.Errorf("Result size %dx%d; want 48x32", res.Width, res.Height)
					}
					checkPattern(t, decodeJPEG(t, res.Data), 48, 32)
				})
			}
		}
	}
}

// TestNormalizePhonePortrait is the common case spelled out: a phone held
// upright stores a landscape frame with the sky on the left and tags it 6.
func TestNormalizePhonePortrait(t *testing.T) {
	sky, ground := color.NRGBA{40, 120, 255, 255}, color.NRGBA{120, 80, 20, 255}
	stored := image.NewNRGBA(image.Rect(0, 0, 64, 32))
	for y := range 32 {
		for x := range 64 {
			c := ground
			if x < 32 {
				c = sky
			}
			stored.SetNRGBA(x, y, c)
		}
	}
	data := withJPEGExif(encodeJPEG(t, stored, 95), tiffOrientation(6, binary.BigEndian))
	res, err := Normalize(data, NormalizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := decodeJPEG(t, res.Data)
	if b := m.Bounds(); b.Dx() != 32 || b.Dy() != 64 {
		t.Fatalf("output is %dx%d; want portrait 32x64", b.Dx(), b.Dy())
	}
	if !near(m.At(16, 8), sky, 30) || !near(m.At(16, 56), ground, 30) {
		t.Errorf("top %v, bottom %v; want sky on top and ground below", m.At(16, 8), m.At(16, 56))
	}
}

func TestNormalizeFit(t *testing.T) {
	tests := []struct {
		name          string
		w, h, o, long int
		wantW, wantH  int
	}{
		{"never upscales", 100, 50, 1, 1024, 100, 50},
		{"keeps size at zero", 300, 200, 1, 0, 300, 200},
		{"exact fit untouched", 1024, 512, 1, 1024, 1024, 512},
		{"landscape", 2000, 1000, 1, 1024, 1024, 512},
		{"portrait", 600, 1200, 1, 300, 150, 300},
		{"rounds", 1000, 333, 1, 500, 500, 167},
		{"thin stays one pixel", 3000, 2, 1, 100, 100, 1},
		{"turned by exif", 2000, 1000, 6, 1024, 512, 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := encodeJPEG(t, photo(tt.w, tt.h), 80)
			if tt.o != 1 {
				data = withJPEGExif(data, tiffOrientation(uint16(tt.o), binary.LittleEndian))
			}
			res, err := Normalize(data, NormalizeOptions{LongSide: tt.long})
			if err != nil {
				t.Fatal(err)
			}
			b := decodeJPEG(t, res.Data).Bounds()
			if res.Width != tt.wantW || res.Height != tt.wantH || b.Dx() != tt.wantW || b.Dy() != tt.wantH {
				t.Errorf("got Result %dx%d, image %dx%d; want %dx%d", res.Width, res.Height, b.Dx(), b.Dy(), tt.wantW, tt.wantH)
			}
		})
	}
}

// jpegMarkers lists the markers of a JPEG up to the start of scan.
func jpegMarkers(t *testing.T, data []byte) []byte {
	t.Helper()
	var ms []byte
	for i := 2; ; {
		if i+4 > len(data) || data[i] != 0xFF {
			t.Fatalf("malformed output JPEG at offset %d", i)
		}
		ms = append(ms, data[i+1])
		if data[i+1] == 0xDA {
			return ms
		}
		i += 2 + int(binary.BigEndian.Uint16(data[i+2:]))
	}
}

func TestNormalizeStripsMetadata(t *testing.T) {
	const secret = "GPS 48.8584N 2.2945E"
	m := pattern(48, 32)
	tiff := append(tiffOrientation(1, binary.BigEndian), secret...)
	jpg := insertJPEGSegments(encodeJPEG(t, m, 90),
		jpegSegment(0xE1, append([]byte("Exif\x00\x00"), tiff...)),
		jpegSegment(0xE1, []byte("http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>"+secret+"</x:xmpmeta>")),
		jpegSegment(0xE2, []byte("ICC_PROFILE\x00\x01\x01"+secret)),
		jpegSegment(0xFE, []byte(secret)),
	)
	pngData := insertPNGChunks(encodePNG(t, m),
		pngChunk("eXIf", tiff),
		pngChunk("tEXt", []byte("Comment\x00"+secret)),
		pngChunk("iTXt", []byte("XML:com.adobe.xmp\x00\x00\x00\x00\x00"+secret)),
	)
	webpData := encodeWebP(t, m, tiff, riffChunkBytes("XMP ", []byte(secret)), riffChunkBytes("ICCP", []byte(secret)))

	for name, data := range map[string][]byte{"jpeg": jpg, "png": pngData, "webp": webpData} {
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(data, []byte(secret)) {
				t.Fatal("test input lacks its metadata")
			}
			res, err := Normalize(data, NormalizeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(res.Data, []byte(secret)) {
				t.Error("output still carries the metadata text")
			}
			for _, mk := range jpegMarkers(t, res.Data) {
				switch {
				case mk >= 0xE0 && mk <= 0xEF, mk == 0xFE:
					t.Errorf("output has marker %#x (APPn or COM)", mk)
				case isSOF(mk) && mk != 0xC0:
					t.Errorf("output frame is SOF%d; want baseline SOF0", mk-0xC0)
				}
			}
		})
	}
}

func TestNormalizeFlattensAlphaOntoWhite(t *testing.T) {
	m := image.NewNRGBA(image.Rect(0, 0, 32, 16))
	for y := range 16 {
		for x := range 32 {
			if x < 16 {
				m.SetNRGBA(x, y, color.NRGBA{0, 0, 0, 0}) // transparent black
			} else {
				m.SetNRGBA(x, y, color.NRGBA{255, 0, 0, 128})
			}
		}
	}
	res, err := Normalize(encodePNG(t, m), NormalizeOptions{Quality: 100})
	if err != nil {
		t.Fatal(err)
	}
	out := decodeJPEG(t, res.Data)
	if got := out.At(8, 8); !near(got, color.White, 6) {
		t.Errorf("transparent area is %v; want white", got)
	}
	if got, want := out.At(24, 8), (color.RGBA{255, 127, 127, 255}); !near(got, want, 10) {
		t.Errorf("half-transparent red is %v; want about %v", got, want)
	}
}

// TestNormalizePixelFormats feeds the decoders' other pixel layouts through
// the same path: grey, paletted, 16-bit and CMYK.
func TestNormalizePixelFormats(t *testing.T) {
	r := image.Rect(0, 0, 40, 30)
	gray := image.NewGray(r)
	pal := image.NewPaletted(r, color.Palette{color.Black, color.White, color.NRGBA{200, 30, 30, 255}})
	deep := image.NewNRGBA64(r)
	cmyk := image.NewCMYK(r)
	for y := range 30 {
		for x := range 40 {
			gray.SetGray(x, y, color.Gray{uint8(x * 6)})
			pal.SetColorIndex(x, y, uint8((x+y)%3))
			deep.SetNRGBA64(x, y, color.NRGBA64{uint16(x) << 10, uint16(y) << 11, 0x8000, 0xFFFF})
			cmyk.SetCMYK(x, y, color.CMYK{uint8(x * 6), 40, uint8(y * 8), 10})
		}
	}
	inputs := map[string][]byte{
		"gray png":     encodePNG(t, gray),
		"paletted png": encodePNG(t, pal),
		"16-bit png":   encodePNG(t, deep),
		"gray jpeg":    encodeJPEG(t, gray, 90),
		"cmyk jpeg":    encodeJPEG(t, cmyk, 90),
	}
	for name, data := range inputs {
		t.Run(name, func(t *testing.T) {
			res, err := Normalize(data, NormalizeOptions{LongSide: 20})
			if err != nil {
				t.Fatal(err)
			}
			if b := decodeJPEG(t, res.Data).Bounds(); b.Dx() != 20 || b.Dy() != 15 {
				t.Errorf("output %v; want 20x15", b)
			}
		})
	}
}

func TestNormalizeRejects(t *testing.T) {
	jpg := encodeJPEG(t, pattern(48, 32), 90)
	tests := []struct {
		name    string
		data    []byte
		opts    NormalizeOptions
		wantErr error
	}{
		{"gif", []byte("GIF89a\x01\x00\x01\x00"), NormalizeOptions{}, ErrUnsupported},
		{"over cap", jpg, NormalizeOptions{MaxPixels: 48*32 - 1}, ErrTooManyPixels},
		{"truncated scan", jpg[:len(jpg)-200], NormalizeOptions{}, ErrCorrupt},
		{"png truncated data", encodePNG(t, photo(64, 64))[:200], NormalizeOptions{}, ErrCorrupt},
		{"vp8x size differs from image", riffFile(vp8x(0, 40, 40), riffChunkBytes("VP8L", encodeVP8L(t, pattern(48, 32)))), NormalizeOptions{}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Normalize(tt.data, tt.opts); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Normalize error = %v; want %v", err, tt.wantErr)
			}
		})
	}
	for _, q := range []int{-1, 101} {
		if _, err := Normalize(jpg, NormalizeOptions{Quality: q}); err == nil {
			t.Errorf("quality %d accepted", q)
		}
	}
	if _, err := Normalize(jpg, NormalizeOptions{LongSide: -1}); err == nil {
		t.Error("negative long side accepted")
	}
}

func BenchmarkNormalize(b *testing.B) {
	for _, size := range []struct{ w, h int }{{1024, 768}, {2048, 1536}} {
		data := encodeJPEG(b, photo(size.w, size.h), 90)
		b.Run(fmt.Sprintf("%dx%d", size.w, size.h), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Normalize(data, NormalizeOptions{LongSide: 1024, MaxPixels: 40_000_000}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestNormalizeUpscale(t *testing.T) {
	tests := []struct {
		name              string
		w, h, o, long, up int
		wantW, wantH      int
	}{
		{"up to the long side", 512, 384, 1, 1024, 2048, 2048, 1536},
		{"fit first, then up from the original", 3000, 1500, 1, 1024, 2048, 2048, 1024},
		{"no upscale below the fitted size", 1024, 512, 1, 1024, 800, 1024, 512},
		{"turned by exif", 300, 200, 6, 1024, 900, 600, 900},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := encodeJPEG(t, photo(tt.w, tt.h), 80)
			if tt.o != 1 {
				data = withJPEGExif(data, tiffOrientation(uint16(tt.o), binary.LittleEndian))
			}
			res, err := Normalize(data, NormalizeOptions{LongSide: tt.long, UpscaleLongSide: tt.up})
			if err != nil {
				t.Fatal(err)
			}
			b := decodeJPEG(t, res.Data).Bounds()
			if res.Width != tt.wantW || res.Height != tt.wantH || b.Dx() != tt.wantW || b.Dy() != tt.wantH {
				t.Errorf("got Result %dx%d, image %dx%d; want %dx%d", res.Width, res.Height, b.Dx(), b.Dy(), tt.wantW, tt.wantH)
			}
		})
	}
}

// A flat colour upscaled stays that colour: the interpolation's weights sum
// to one at every output pixel, edges included.
func TestNormalizeUpscaleKeepsFlatColour(t *testing.T) {
	m := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := range m.Pix {
		m.Pix[i] = []uint8{200, 100, 40, 255}[i%4]
	}
	res, err := Normalize(encodeJPEG(t, m, 100), NormalizeOptions{UpscaleLongSide: 256, Quality: 100})
	if err != nil {
		t.Fatal(err)
	}
	out := decodeJPEG(t, res.Data)
	for _, p := range []image.Point{{0, 0}, {255, 191}, {128, 96}, {3, 190}} {
		r, g, b, _ := out.At(p.X, p.Y).RGBA()
		if d := max(absDiff(r>>8, 200), absDiff(g>>8, 100), absDiff(b>>8, 40)); d > 3 {
			t.Errorf("pixel %v is %d,%d,%d; want about 200,100,40", p, r>>8, g>>8, b>>8)
		}
	}
}

func absDiff(a, b uint32) uint32 {
	if a > b {
		return a - b
	}
	return b - a
}
