package imagecheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image/jpeg"
	"maps"
	"slices"
	"testing"
)

// fuzzSeeds is the seed corpus shared by the fuzz targets: one valid file of
// each format with and without orientation, the lying headers, and bytes of
// every unsupported kind.
func fuzzSeeds(f *testing.F) [][]byte {
	m := pattern(12, 8)
	jpg := encodeJPEG(f, m, 80)
	pngData := encodePNG(f, m)
	seeds := [][]byte{
		jpg,
		withJPEGExif(jpg, tiffOrientation(6, binary.BigEndian)),
		withJPEGExif(jpg, tiffOrientation(3, binary.LittleEndian)[:19]),
		pngData,
		insertPNGChunks(pngData, pngChunk("eXIf", tiffOrientation(8, binary.LittleEndian))),
		encodeWebP(f, m, nil),
		encodeWebP(f, m, tiffOrientation(5, binary.BigEndian)),
		lossyWebPHeader(16, 16),
		nil,
		[]byte("GIF89a"),
		[]byte("<svg/>"),
		{0xFF, 0xD8, 0xFF},
		[]byte("RIFF\x04\x00\x00\x00WEBP"),
	}
	huge := hugeHeaders(f)
	for _, k := range slices.Sorted(maps.Keys(huge)) {
		seeds = append(seeds, huge[k])
	}
	return seeds
}

func checkSentinel(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrTooManyPixels) && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("error %v wraps none of the package's errors", err)
	}
}

func FuzzInspect(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	const maxPixels = 1 << 20
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := Inspect(data, maxPixels)
		if err != nil {
			checkSentinel(t, err)
			return
		}
		if info.Width < 1 || info.Height < 1 || info.Pixels() > maxPixels {
			t.Fatalf("accepted %dx%d; want 1 to %d pixels", info.Width, info.Height, maxPixels)
		}
		if info.Orientation < 1 || info.Orientation > 8 {
			t.Fatalf("orientation %d out of 1..8", info.Orientation)
		}
		if info.Format != JPEG && info.Format != PNG && info.Format != WebP {
			t.Fatalf("format %q", info.Format)
		}
	})
}

func FuzzNormalize(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	// A small cap keeps each fuzz input cheap to decode.
	opts := NormalizeOptions{MaxPixels: 1 << 16, LongSide: 64}
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := Normalize(data, opts)
		if err != nil {
			checkSentinel(t, err)
			return
		}
		if res.Info.Pixels() > opts.MaxPixels {
			t.Fatalf("accepted %dx%d over the cap", res.Info.Width, res.Info.Height)
		}
		if res.Width < 1 || res.Height < 1 || max(res.Width, res.Height) > opts.LongSide {
			t.Fatalf("output %dx%d does not fit in %d", res.Width, res.Height, opts.LongSide)
		}
		cfg, err := jpeg.DecodeConfig(bytes.NewReader(res.Data))
		if err != nil || cfg.Width != res.Width || cfg.Height != res.Height {
			t.Fatalf("output is not a %dx%d JPEG: %v", res.Width, res.Height, err)
		}
	})
}
