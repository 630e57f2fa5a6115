package imagecheck

import (
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"maps"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// pattern returns a w×h image of six flat blocks in a 3×2 grid, each a
// different colour, so that any flip or turn of it is told apart. Every
// channel is 0 or 255, which keeps it encodable by encodeVP8L.
func pattern(w, h int) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.SetNRGBA(x, y, patternColors[(y*2/h)*3+x*3/w])
		}
	}
	return m
}

var patternColors = []color.NRGBA{
	{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255},
	{255, 255, 0, 255}, {0, 255, 255, 255}, {255, 0, 255, 255},
}

func TestInspect(t *testing.T) {
	small := pattern(48, 32)
	jpg := encodeJPEG(t, small, 90)
	pngData := encodePNG(t, small)
	webpData := encodeWebP(t, small, nil)

	sof9 := append([]byte{}, jpg...)
	for i := 2; i+4 <= len(sof9); i += 2 + int(binary.BigEndian.Uint16(sof9[i+2:])) {
		if sof9[i+1] == 0xC0 {
			sof9[i+1] = 0xC9 // arithmetic coding, which image/jpeg lacks
			break
		}
	}

	tests := []struct {
		name    string
		data    []byte
		want    Info
		wantErr error
		msg     string // a substring the message must hold
	}{
		{name: "jpeg", data: jpg, want: Info{JPEG, 48, 32, 1}},
		{name: "jpeg exif little endian", data: withJPEGExif(jpg, tiffOrientation(6, binary.LittleEndian)), want: Info{JPEG, 48, 32, 6}},
		{name: "jpeg exif big endian", data: withJPEGExif(jpg, tiffOrientation(8, binary.BigEndian)), want: Info{JPEG, 48, 32, 8}},
		{name: "jpeg exif out of range", data: withJPEGExif(jpg, tiffOrientation(9, binary.BigEndian)), want: Info{JPEG, 48, 32, 1}},
		{name: "jpeg exif garbage", data: withJPEGExif(jpg, []byte("MM\x00*\xff\xff\xff\xff")), want: Info{JPEG, 48, 32, 1}},
		{name: "jpeg exif truncated", data: withJPEGExif(jpg, tiffOrientation(3, binary.LittleEndian)[:20]), want: Info{JPEG, 48, 32, 1}},
		{name: "png", data: pngData, want: Info{PNG, 48, 32, 1}},
		{name: "png exif", data: insertPNGChunks(pngData, pngChunk("eXIf", tiffOrientation(3, binary.BigEndian))), want: Info{PNG, 48, 32, 3}},
		{name: "webp lossless", data: webpData, want: Info{WebP, 48, 32, 1}},
		{name: "webp exif", data: encodeWebP(t, small, tiffOrientation(5, binary.LittleEndian)), want: Info{WebP, 48, 32, 5}},
		{name: "webp exif with prefix", data: encodeWebP(t, small, append([]byte("Exif\x00\x00"), tiffOrientation(7, binary.BigEndian)...)), want: Info{WebP, 48, 32, 7}},
		{name: "webp lossy header", data: lossyWebPHeader(640, 480), want: Info{WebP, 640, 480, 1}},

		{name: "empty", data: nil, wantErr: ErrUnsupported, msg: "empty"},
		{name: "gif", data: []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"), wantErr: ErrUnsupported, msg: "GIF"},
		{name: "bmp", data: []byte("BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00"), wantErr: ErrUnsupported, msg: "BMP"},
		{name: "tiff", data: tiffOrientation(1, binary.LittleEndian), wantErr: ErrUnsupported, msg: "TIFF"},
		{name: "heic", data: []byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"), wantErr: ErrUnsupported, msg: "HEIC"},
		{name: "avif", data: []byte("\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"), wantErr: ErrUnsupported, msg: "AVIF"},
		{name: "svg", data: []byte(`<svg xmlns="http://www.w3.org/2000/svg" width="30000" height="30000"/>`), wantErr: ErrUnsupported, msg: "SVG"},
		{name: "text", data: []byte("hello, this is not an image"), wantErr: ErrUnsupported, msg: "not a recognised image"},
		{name: "wav", data: []byte("RIFF\x24\x00\x00\x00WAVEfmt "), wantErr: ErrUnsupported, msg: "not WebP"},
		{name: "animated webp", data: riffFile(vp8x(0x02, 10, 10), riffChunkBytes("ANIM", make([]byte, 6))), wantErr: ErrUnsupported, msg: "animated"},
		{name: "arithmetic jpeg", data: sof9, wantErr: ErrUnsupported},

		{name: "jpeg soi only", data: []byte{0xFF, 0xD8, 0xFF}, wantErr: ErrCorrupt},
		{name: "jpeg cut in header", data: jpg[:40], wantErr: ErrCorrupt},
		{name: "jpeg garbage after soi", data: append([]byte{0xFF, 0xD8, 0xFF, 0xE0}, strings.Repeat("x", 64)...), wantErr: ErrCorrupt},
		{name: "jpeg zero width", data: setJPEGSize(t, jpg, 0, 32), wantErr: ErrCorrupt},
		{name: "jpeg zero height", data: setJPEGSize(t, jpg, 48, 0), wantErr: ErrCorrupt},
		{name: "webp lossy zero width", data: lossyWebPHeader(0, 64), wantErr: ErrCorrupt},
		{name: "png signature only", data: pngSignature, wantErr: ErrCorrupt},
		{name: "png bad ihdr crc", data: func() []byte { d := append([]byte{}, pngData...); d[29]++; return d }(), wantErr: ErrCorrupt},
		{name: "png zero width", data: setPNGSize(pngData, 0, 32), wantErr: ErrCorrupt},
		{name: "png negative size", data: setPNGSize(pngData, 1<<31, 32), wantErr: ErrCorrupt},
		{name: "webp header only", data: []byte("RIFF\x04\x00\x00\x00WEBP"), wantErr: ErrCorrupt},
		{name: "webp garbage chunk", data: riffFile(riffChunkBytes("VP8L", []byte("garbage"))), wantErr: ErrCorrupt},
		{name: "webp vp8x past 2^32 pixels", data: riffFile(vp8x(0, 0x1000000, 0x1000000)), wantErr: ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Inspect(tt.data, 40_000_000)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Inspect error = %v; want %v", err, tt.wantErr)
				}
				if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("message %q does not mention %q", err, tt.msg)
				}
				if errors.Is(tt.wantErr, ErrUnsupported) && !strings.Contains(err.Error(), "JPEG, PNG and WebP") {
					t.Errorf("message %q does not say what is allowed", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if got != tt.want {
				t.Errorf("Inspect = %+v; want %+v", got, tt.want)
			}
		})
	}
}

// hugeHeaders are small, well-formed files whose headers claim far more
// pixels than any cap allows.
func hugeHeaders(t testing.TB) map[string][]byte {
	small := pattern(48, 32)
	return map[string][]byte{
		"jpeg 30000x30000":      setJPEGSize(t, encodeJPEG(t, small, 90), 30000, 30000),
		"jpeg frame only":       append([]byte{0xFF, 0xD8}, jpegSegment(0xC0, []byte{8, 0x75, 0x30, 0x75, 0x30, 1, 1, 0x11, 0})...),
		"png 30000x30000":       setPNGSize(encodePNG(t, small), 30000, 30000),
		"webp vp8x 30000":       riffFile(vp8x(0, 30000, 30000), riffChunkBytes("VP8L", encodeVP8L(t, small))),
		"webp vp8l 16384":       riffFile(riffChunkBytes("VP8L", []byte{0x2f, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0})),
		"webp lossy 16383":      lossyWebPHeader(16383, 16383),
		"jpeg exif 30000x30000": withJPEGExif(setJPEGSize(t, encodeJPEG(t, small, 90), 30000, 30000), tiffOrientation(6, binary.BigEndian)),
	}
}

func TestInspectRejectsHugeHeadersCheaply(t *testing.T) {
	huge := hugeHeaders(t)
	for _, name := range slices.Sorted(maps.Keys(huge)) {
		data := huge[name]
		t.Run(name, func(t *testing.T) {
			info, err := Inspect(data, 40_000_000)
			if !errors.Is(err, ErrTooManyPixels) {
				t.Fatalf("Inspect error = %v; want ErrTooManyPixels", err)
			}
			if info.Pixels() <= 40_000_000 {
				t.Errorf("Inspect refused %dx%d; the refusal must carry the declared size", info.Width, info.Height)
			}
			if _, err := Normalize(data, NormalizeOptions{MaxPixels: 40_000_000}); !errors.Is(err, ErrTooManyPixels) {
				t.Fatalf("Normalize error = %v; want ErrTooManyPixels", err)
			}
			// Decoding any of these would need gigabytes; the header check
			// must stay within a few kilobytes per call.
			const runs = 100
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range runs {
				_, _ = Normalize(data, NormalizeOptions{MaxPixels: 40_000_000})
			}
			runtime.ReadMemStats(&after)
			if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 16<<10 {
				t.Errorf("rejecting allocated %d bytes per call; want at most 16 KiB", per)
			}
		})
	}
}

func TestInspectNoCap(t *testing.T) {
	data := setPNGSize(encodePNG(t, pattern(48, 32)), 30000, 30000)
	info, err := Inspect(data, 0)
	if err != nil {
		t.Fatalf("Inspect without a cap: %v", err)
	}
	if info.Width != 30000 || info.Height != 30000 {
		t.Errorf("Inspect = %+v; want 30000x30000", info)
	}
	if _, err := Inspect(data, 30000*30000); err != nil {
		t.Errorf("a cap equal to the pixel count must pass: %v", err)
	}
	if _, err := Inspect(data, 30000*30000-1); !errors.Is(err, ErrTooManyPixels) {
		t.Errorf("a cap one below the pixel count must fail; got %v", err)
	}
}

func TestNormalizeGuardsOverflow(t *testing.T) {
	// 2^31-1 squared pixels of 8 bytes cannot be addressed; without a cap
	// the decoder must still never be asked to try.
	data := setPNGSize(encodePNG(t, pattern(48, 32)), 1<<31-1, 1<<31-1)
	if _, err := Normalize(data, NormalizeOptions{}); !errors.Is(err, ErrTooManyPixels) {
		t.Fatalf("Normalize error = %v; want ErrTooManyPixels", err)
	}
}

func TestOrientedSize(t *testing.T) {
	for o := 1; o <= 8; o++ {
		w, h := Info{Width: 40, Height: 30, Orientation: o}.OrientedSize()
		want := [2]int{40, 30}
		if o >= 5 {
			want = [2]int{30, 40}
		}
		if [2]int{w, h} != want {
			t.Errorf("orientation %d: OrientedSize = %dx%d; want %dx%d", o, w, h, want[0], want[1])
		}
	}
}

func BenchmarkInspect(b *testing.B) {
	data := encodeJPEG(b, photo(1024, 768), 90)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Inspect(data, 40_000_000); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInspectHugeHeader(b *testing.B) {
	huge := hugeHeaders(b)
	for _, name := range slices.Sorted(maps.Keys(huge)) {
		data := huge[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Inspect(data, 40_000_000); !errors.Is(err, ErrTooManyPixels) {
					b.Fatal(err)
				}
			}
		})
	}
}
