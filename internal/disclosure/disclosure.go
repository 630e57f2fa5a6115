// Package disclosure marks staged images as altered by a trained model, as
// listing rules require: in the file's metadata, with the IPTC digital
// source type that listing platforms read, and, when asked, with a label
// burnt into the pixels that a viewer sees.
package disclosure

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/jpeg"
	"unicode"
	"unicode/utf8"

	// Formats Apply re-encodes as JPEG besides JPEG itself.
	_ "image/png"

	_ "golang.org/x/image/webp"

	"golang.org/x/image/font/gofont/gobold"
	"golang.org/x/image/font/opentype"

	"github.com/vstage/vstage/internal/imagecheck"
)

// DigitalSourceType is the IPTC NewsCodes term for an image that composites a capture with AI-generated content.
const DigitalSourceType = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"

// maxTextLen is the most characters New accepts for a label: longer text
// would not fit a phone-sized photo at a legible size.
const maxTextLen = 64

// Discloser marks staged images. It is safe for concurrent use.
type Discloser struct {
	text    string
	quality int
	// maxPixels caps what Apply decodes, judged from the header first.
	maxPixels int64
	// font is parsed once; each Apply that draws makes its own face from
	// it, because a face caches glyphs and is not safe for concurrent use.
	font *opentype.Font
}

// New returns a Discloser that burns text (e.g. "Virtually staged") into the images it is asked to label and encodes
// re-encoded images at JPEG quality (1-100). text must be 1 to 64 printable characters (error otherwise). Apply
// decodes no image whose header declares more than maxPixels pixels (at least 1).
//
// Every character must also be one the bundled Go Bold font can draw, so a
// label never shows a missing-glyph box.
func New(text string, quality int, maxPixels int64) (*Discloser, error) {
	if quality < 1 || quality > 100 {
		return nil, fmt.Errorf("disclosure: JPEG quality %d is outside 1 to 100", quality)
	}
	if maxPixels < 1 {
		return nil, fmt.Errorf("disclosure: the pixel cap %d is not positive", maxPixels)
	}
	if !utf8.ValidString(text) {
		return nil, errors.New("disclosure: label text is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(text); n < 1 || n > maxTextLen {
		return nil, fmt.Errorf("disclosure: label text has %d characters, want 1 to %d", n, maxTextLen)
	}
	f, err := opentype.Parse(gobold.TTF)
	if err != nil {
		return nil, fmt.Errorf("disclosure: parsing the label font: %w", err)
	}
	for _, r := range text {
		if !unicode.IsPrint(r) {
			return nil, fmt.Errorf("disclosure: label text has the unprintable character %U", r)
		}
		if g, err := f.GlyphIndex(nil, r); err != nil || g == 0 {
			return nil, fmt.Errorf("disclosure: the label font has no glyph for %q", r)
		}
	}
	return &Discloser{text: text, quality: quality, maxPixels: maxPixels, font: f}, nil
}

// Apply returns data as a baseline JPEG whose only metadata is one XMP packet (APP1) naming DigitalSourceType:
// every APPn segment (JFIF, EXIF, ICC, XMP, Adobe...) and COM segment of the input is dropped, so EXIF and GPS
// never survive. With label false and a JPEG input, the image data (tables, frames, scans) is copied byte for byte,
// not re-encoded. With label true, or a PNG/WebP/other input Go can decode, the image is decoded, the label drawn
// (when asked) and encoded as a JPEG at the quality given to New. Errors wrap the cause.
//
// A JPEG whose EXIF orientation says it is stored turned (a provider's output
// may be) is decoded and turned upright before the label, since the tag that
// says how to show it is dropped.
//
// Segments between the scans of a JPEG are copied too, except APPn and COM,
// and anything after its EOI marker (such as the extra images of an MPF
// file) is dropped. A JPEG input that is malformed or truncated is refused,
// not repaired.
//
// When Apply decodes, it first takes the image's pixels (from its header)
// through reserve, which waits for them in a decode budget and returns the
// function that gives them back; a nil reserve takes none.
// It decodes when label is set, when data is not a JPEG (it is re-encoded
// as one), and for a JPEG whose data cannot be copied unchanged: one that
// is not baseline, whose colours depend on the APP0 or APP14 segment it
// drops (CMYK, YCCK and RGB-coded frames), or whose EXIF orientation says
// it is stored turned.
func (d *Discloser) Apply(data []byte, label bool, reserve func(pixels int64) (release func(), err error)) ([]byte, error) {
	// One read of the header: the orientation, and the size for the cap.
	info, ierr := imagecheck.Inspect(data, 0)
	o := 1
	if ierr == nil {
		o = info.Orientation
	}
	if !label && o == 1 && isJPEG(data) {
		l, err := parseJPEG(data)
		if err != nil {
			return nil, err
		}
		if l.copyable() {
			return l.assemble(), nil
		}
	}
	// The header's size is checked before any pixel is decoded, so that a
	// forged one cannot make Apply allocate gigabytes.
	// Nothing is decoded whose header was not read and found under the cap.
	if ierr != nil {
		return nil, fmt.Errorf("disclosure: reading the image's header: %w", ierr)
	}
	if d.maxPixels > 0 && info.Pixels() > d.maxPixels {
		return nil, fmt.Errorf("disclosure: %w: %dx%d (the cap is %d)", imagecheck.ErrTooManyPixels, info.Width, info.Height, d.maxPixels)
	}
	if reserve != nil {
		release, err := reserve(info.Pixels())
		if err != nil {
			return nil, fmt.Errorf("disclosure: %w", err)
		}
		defer release()
	}
	img, format, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("disclosure: decoding the image: %w", err)
	}
	rgba := imagecheck.Orient(flatten(img), o)
	if label {
		if err := d.drawLabel(rgba); err != nil {
			return nil, err
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, rgba, &jpeg.Options{Quality: d.quality}); err != nil {
		return nil, fmt.Errorf("disclosure: encoding the %s image as JPEG: %w", format, err)
	}
	// Go's encoder writes no metadata; parsing its output is how the XMP
	// packet gets in, by the same path as a copied JPEG.
	l, err := parseJPEG(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("disclosure: re-reading the encoded JPEG: %w", err)
	}
	return l.assemble(), nil
}

// flatten returns img as an RGBA image at the origin, laid over white so that
// transparent pixels of a PNG or WebP turn white rather than black in a JPEG,
// which has no alpha.
func flatten(img image.Image) *image.RGBA {
	b := img.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(dst, dst.Bounds(), image.White, image.Point{}, draw.Src)
	draw.Draw(dst, dst.Bounds(), img, b.Min, draw.Over)
	return dst
}
