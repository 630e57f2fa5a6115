package imagecheck

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"
)

// DefaultQuality is the JPEG quality Normalize uses when
// NormalizeOptions.Quality is zero.
const DefaultQuality = 90

// NormalizeOptions controls Normalize.
type NormalizeOptions struct {
	// MaxPixels caps the pixel count declared by the header; <= 0 means no
	// cap.
	MaxPixels int64
	// LongSide is the largest the longer side of the output may be. The image
	// is scaled down to fit, keeping its aspect ratio, and never scaled up.
	// Zero keeps the size.
	LongSide int
	// UpscaleLongSide, when larger than the long side the image would
	// otherwise have, scales it up to that long side instead, with the same
	// Catmull-Rom filter. Zero never scales up.
	UpscaleLongSide int
	// Quality is the JPEG quality, 1 to 100; zero means DefaultQuality.
	Quality int
}

// Result is the output of Normalize.
type Result struct {
	// Data is the encoded JPEG.
	Data []byte
	// Width and Height are the size of Data, upright.
	Width, Height int
	// Info describes the input.
	Info Info
}

// Normalize inspects data, decodes it, turns it upright according to its EXIF
// orientation, scales it down to fit within opts.LongSide, flattens any
// transparency onto white, and encodes it as a baseline JPEG that carries no
// metadata at all: no EXIF, GPS, XMP, ICC profile or comment survives.
func Normalize(data []byte, opts NormalizeOptions) (Result, error) {
	quality := opts.Quality
	if quality == 0 {
		quality = DefaultQuality
	}
	if quality < 1 || quality > 100 {
		return Result{}, fmt.Errorf("imagecheck: JPEG quality %d is out of range; allowed is 1 to 100", opts.Quality)
	}
	if opts.LongSide < 0 || opts.UpscaleLongSide < 0 {
		return Result{}, fmt.Errorf("imagecheck: long side %d or upscale long side %d is negative; allowed is 0 (keep) or more", opts.LongSide, opts.UpscaleLongSide)
	}
	src, info, err := decodeChecked(data, opts.MaxPixels)
	if err != nil {
		return Result{}, err
	}

	// Scaling before turning is cheaper and gives the same picture: fitting
	// the long side does not depend on which side is which.
	sw, sh := fit(info.Width, info.Height, opts.LongSide)
	if opts.UpscaleLongSide > max(sw, sh) {
		sw, sh = scaleTo(info.Width, info.Height, opts.UpscaleLongSide)
	}
	flat := image.NewRGBA(image.Rect(0, 0, sw, sh))
	op := draw.Over
	if o, ok := src.(interface{ Opaque() bool }); ok && o.Opaque() {
		op = draw.Src
	}
	if sw == info.Width && sh == info.Height {
		draw.Draw(flat, flat.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
		draw.Draw(flat, flat.Bounds(), src, src.Bounds().Min, op)
	} else {
		scaleDown(flat, src, op)
	}
	upright := Orient(flat, info.Orientation)

	var buf bytes.Buffer
	// image/jpeg writes only the quantisation and Huffman tables, the frame
	// and the scan: a baseline file with no application segments.
	if err := jpeg.Encode(&buf, upright, &jpeg.Options{Quality: quality}); err != nil {
		return Result{}, fmt.Errorf("imagecheck: encode JPEG: %w", err)
	}
	b := upright.Bounds()
	return Result{Data: buf.Bytes(), Width: b.Dx(), Height: b.Dy(), Info: info}, nil
}

// Verify inspects data and decodes every pixel of it, as a backend would,
// and returns what its header says. It fails with ErrCorrupt for a file
// whose header is fine but whose data is not (truncated, bad checksums,
// broken entropy coding), which Inspect alone cannot see. Its memory is
// that of the decoded image; bound it with a Budget.
func Verify(data []byte, maxPixels int64) (Info, error) {
	_, info, err := decodeChecked(data, maxPixels)
	return info, err
}

// decodeChecked inspects data, decodes it and checks that the decoded size
// is the one the header declared.
func decodeChecked(data []byte, maxPixels int64) (image.Image, Info, error) {
	info, err := Inspect(data, maxPixels)
	if err != nil {
		return nil, info, err
	}
	src, err := decode(info.Format, data)
	if err != nil {
		return nil, info, err
	}
	if b := src.Bounds(); b.Dx() != info.Width || b.Dy() != info.Height {
		return nil, info, fmt.Errorf("%w: %s decodes to %dx%d but its header says %dx%d",
			ErrCorrupt, info.Format, b.Dx(), b.Dy(), info.Width, info.Height)
	}
	return src, info, nil
}

func decode(f Format, data []byte) (image.Image, error) {
	var (
		m   image.Image
		err error
	)
	r := bytes.NewReader(data)
	switch f {
	case JPEG:
		m, err = jpeg.Decode(r)
	case PNG:
		m, err = png.Decode(r)
	case WebP:
		m, err = webp.Decode(r)
	default:
		return nil, fmt.Errorf("%w: format %q; %s", ErrUnsupported, f, allowed)
	}
	if err != nil {
		return nil, classify(f, err)
	}
	if m == nil {
		return nil, fmt.Errorf("%w: %s decoder returned no image", ErrCorrupt, f)
	}
	return m, nil
}

// fit returns the size of a w×h image scaled down so that its longer side is
// at most longSide, keeping the aspect ratio; it never scales up.
func fit(w, h, longSide int) (int, int) {
	long := max(w, h)
	if longSide <= 0 || long <= longSide {
		return w, h
	}
	return scaleTo(w, h, longSide)
}

// scaleTo returns the size of a w×h image scaled, up or down, so that its
// longer side is longSide, keeping the aspect ratio.
func scaleTo(w, h, longSide int) (int, int) {
	long := max(w, h)
	scale := func(v int) int {
		return max(1, int(math.Round(float64(v)*float64(longSide)/float64(long))))
	}
	return scale(w), scale(h)
}

// Orient returns m turned upright for the EXIF orientation o (1 to 8; any
// other value leaves m as it is). For every
// output pixel it looks up the stored pixel that the tag says belongs there;
// the tag names where the stored first row and first column are meant to be
// seen (for 6, the first row is the right side and the first column the
// top).
func Orient(m *image.RGBA, o int) *image.RGBA {
	if o <= 1 || o > 8 {
		return m
	}
	w, h := m.Rect.Dx(), m.Rect.Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	out := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for dy := range dh {
		row := out.Pix[dy*out.Stride : dy*out.Stride+dw*4]
		for dx := range dw {
			var sx, sy int
			switch o {
			case 2:
				sx, sy = w-1-dx, dy
			case 3:
				sx, sy = w-1-dx, h-1-dy
			case 4:
				sx, sy = dx, h-1-dy
			case 5:
				sx, sy = dy, dx
			case 6:
				sx, sy = dy, h-1-dx
			case 7:
				sx, sy = w-1-dy, h-1-dx
			case 8:
				sx, sy = w-1-dy, dx
			}
			i := sy*m.Stride + sx*4
			copy(row[dx*4:dx*4+4], m.Pix[i:i+4])
		}
	}
	return out
}
