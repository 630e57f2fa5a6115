// Package imagecheck decides whether uploaded bytes are an image the service
// accepts, and turns an accepted image into a clean, upright, metadata-free
// JPEG.
//
// Everything here treats its input as hostile: the format is sniffed from the
// content, never from a name, and the pixel cap is enforced from the header
// alone, before a single pixel is decoded, so a small file that claims to be
// huge costs next to nothing.
package imagecheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image/jpeg"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/webp"
)

// Format is an image format the service accepts.
type Format string

// The accepted formats.
const (
	JPEG Format = "jpeg"
	PNG  Format = "png"
	WebP Format = "webp"
)

// Errors returned by Inspect and Normalize, always wrapped with details; test
// for them with errors.Is.
var (
	// ErrUnsupported means the content is not JPEG, PNG or WebP, or uses a
	// variant of them that cannot be decoded (for example an animated WebP).
	ErrUnsupported = errors.New("unsupported image format")
	// ErrTooManyPixels means the header declares more pixels than allowed.
	ErrTooManyPixels = errors.New("image has too many pixels")
	// ErrCorrupt means the content looks like a supported format but its
	// header or data is truncated or malformed.
	ErrCorrupt = errors.New("corrupt image")
)

// bytesPerPixel is the widest pixel a decoder may allocate (16-bit RGBA);
// the overflow guard is sized for it.
const bytesPerPixel = 8

const allowed = "allowed formats are JPEG, PNG and WebP"

// Info is what the header says. Width and Height are as stored; Orientation
// is the EXIF orientation (1..8, 1 when absent).
type Info struct {
	Format      Format
	Width       int
	Height      int
	Orientation int
}

// OrientedSize returns the displayed size: Width and Height swapped for the
// orientations 5 to 8, which turn the picture by a quarter.
func (i Info) OrientedSize() (w, h int) {
	if i.Orientation >= 5 && i.Orientation <= 8 {
		return i.Height, i.Width
	}
	return i.Width, i.Height
}

// Pixels returns Width*Height, computed in 64 bits.
func (i Info) Pixels() int64 { return int64(i.Width) * int64(i.Height) }

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// sniff names the format of data from its first bytes.
func sniff(data []byte) (Format, error) {
	switch {
	case len(data) >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF:
		return JPEG, nil
	case bytes.HasPrefix(data, pngSignature):
		return PNG, nil
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return WebP, nil
	}
	return "", fmt.Errorf("%w: content is %s; %s", ErrUnsupported, describe(data), allowed)
}

// describe gives a short human name for content that is not accepted, so an
// error message can say what was received.
func describe(data []byte) string {
	switch {
	case len(data) == 0:
		return "empty"
	case bytes.HasPrefix(data, []byte("GIF87a")), bytes.HasPrefix(data, []byte("GIF89a")):
		return "GIF"
	case bytes.HasPrefix(data, []byte("BM")):
		return "BMP"
	case bytes.HasPrefix(data, []byte("II*\x00")), bytes.HasPrefix(data, []byte("MM\x00*")):
		return "TIFF"
	case len(data) >= 12 && string(data[4:8]) == "ftyp":
		switch string(data[8:12]) {
		case "avif", "avis":
			return "AVIF"
		case "heic", "heix", "hevc", "hevx", "mif1", "msf1":
			return "HEIC/HEIF"
		}
		return "an ISO media file"
	case bytes.HasPrefix(data, []byte("RIFF")):
		return "a RIFF file that is not WebP"
	case bytes.HasPrefix(data, []byte{0xFF, 0xD8}):
		return "a truncated JPEG"
	case bytes.HasPrefix(data, pngSignature[:4]):
		return "a truncated PNG"
	}
	head := bytes.ToLower(bytes.TrimSpace(data[:min(len(data), 512)]))
	if bytes.HasPrefix(head, []byte("<?xml")) || bytes.Contains(head, []byte("<svg")) {
		return "SVG or XML"
	}
	return "not a recognised image"
}

// Inspect sniffs the content (magic bytes, never a file name), reads only the
// header and rejects images whose pixel count exceeds maxPixels with
// ErrTooManyPixels before any pixel is decoded. maxPixels <= 0 means no cap.
// With ErrTooManyPixels the Info still holds the format and the declared
// size, so the caller can say what was refused; with any other error it is
// the zero Info.
func Inspect(data []byte, maxPixels int64) (Info, error) {
	format, err := sniff(data)
	if err != nil {
		return Info{}, err
	}
	info := Info{Format: format, Orientation: 1}
	switch format {
	case JPEG:
		err = inspectJPEG(data, &info, maxPixels)
	case PNG:
		err = inspectPNG(data, &info, maxPixels)
	case WebP:
		err = inspectWebP(data, &info)
	}
	if cerr := checkPixels(info, maxPixels); cerr != nil {
		return info, cerr
	}
	if err != nil {
		return Info{}, err
	}
	return info, nil
}

// checkPixels enforces the cap on the size a header declares. The format
// readers call it as soon as they know the size, before handing the data to
// a full header decoder, so a file that claims too much is refused for that
// alone, even when what follows the claim is broken.
func checkPixels(info Info, maxPixels int64) error {
	if maxPixels > 0 && info.Pixels() > maxPixels {
		return fmt.Errorf("%w: %dx%d is %d pixels; at most %d are allowed",
			ErrTooManyPixels, info.Width, info.Height, info.Pixels(), maxPixels)
	}
	// Without a cap, a header could still ask for a buffer whose size
	// overflows an int; no decoder may be asked to try.
	if info.Pixels() > math.MaxInt/bytesPerPixel {
		return fmt.Errorf("%w: %dx%d cannot be held in memory", ErrTooManyPixels, info.Width, info.Height)
	}
	return nil
}

// inspectJPEG reads the dimensions from the frame header itself, so that the
// cap applies before jpeg.DecodeConfig validates the rest of the header (and
// allocates its decoder), and so that a file that stops right after a huge
// frame header is still reported as too large.
func inspectJPEG(data []byte, info *Info, maxPixels int64) error {
	h, err := scanJPEG(data)
	info.Width, info.Height, info.Orientation = h.width, h.height, orientationOrDefault(h.exif)
	if err != nil {
		return err
	}
	if err := checkPixels(*info, maxPixels); err != nil {
		return err
	}
	if info.Width == 0 || info.Height == 0 {
		return fmt.Errorf("%w: JPEG declares a size of %dx%d; both sides must be at least 1", ErrCorrupt, info.Width, info.Height)
	}
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return classify(JPEG, err)
	}
	if cfg.Width != info.Width || cfg.Height != info.Height {
		return fmt.Errorf("%w: JPEG has conflicting frame headers", ErrCorrupt)
	}
	return nil
}

// inspectPNG reads the size from IHDR before png.DecodeConfig, which refuses
// sizes it cannot address without saying what they were; the cap must see
// them first.
func inspectPNG(data []byte, info *Info, maxPixels int64) error {
	if len(data) >= 24 && string(data[12:16]) == "IHDR" {
		w, h := binary.BigEndian.Uint32(data[16:]), binary.BigEndian.Uint32(data[20:])
		if w <= math.MaxInt32 && h <= math.MaxInt32 {
			info.Width, info.Height = int(w), int(h)
		}
		if err := checkPixels(*info, maxPixels); err != nil {
			return err
		}
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return classify(PNG, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return fmt.Errorf("%w: PNG declares a size of %dx%d; both sides must be at least 1", ErrCorrupt, cfg.Width, cfg.Height)
	}
	info.Width, info.Height = cfg.Width, cfg.Height
	info.Orientation = orientationOrDefault(pngExif(data))
	return nil
}

func inspectWebP(data []byte, info *Info) error {
	// An animated WebP carries its frames in ANMF chunks that the decoder
	// does not read; say so instead of reporting it as corrupt.
	if vp8x := riffChunk(data, "VP8X"); len(vp8x) >= 1 && vp8x[0]&0x02 != 0 {
		return fmt.Errorf("%w: content is an animated WebP; %s (still images only)", ErrUnsupported, allowed)
	}
	cfg, err := webp.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return classify(WebP, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return fmt.Errorf("%w: WebP declares a size of %dx%d; both sides must be at least 1", ErrCorrupt, cfg.Width, cfg.Height)
	}
	info.Width, info.Height = cfg.Width, cfg.Height
	info.Orientation = orientationOrDefault(riffChunk(data, "EXIF"))
	return nil
}

// classify maps a decoder error to ErrUnsupported (a valid file using a
// feature the decoder lacks) or ErrCorrupt (everything else).
func classify(f Format, err error) error {
	var ju jpeg.UnsupportedError
	var pu png.UnsupportedError
	if errors.As(err, &ju) || errors.As(err, &pu) {
		return fmt.Errorf("%w: %s uses a feature that cannot be decoded (%v); %s", ErrUnsupported, f, err, allowed)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s data is truncated", ErrCorrupt, f)
	}
	return fmt.Errorf("%w: %s is malformed (%v)", ErrCorrupt, f, err)
}

// jpegHeader is what scanJPEG finds before the first scan.
type jpegHeader struct {
	width, height int
	seenSOF       bool
	exif          []byte // TIFF data of the first Exif APP1 segment, if any
}

// scanJPEG walks the marker segments up to the first frame header and the
// start of scan. It reads lengths only, so its cost is the number of
// segments, not the size of any image.
func scanJPEG(data []byte) (jpegHeader, error) {
	var h jpegHeader
	i := 2 // after SOI
	for {
		// Markers may be preceded by any number of 0xFF fill bytes.
		for i < len(data) && data[i] == 0xFF && i+1 < len(data) && data[i+1] == 0xFF {
			i++
		}
		if i+2 > len(data) {
			return h, fmt.Errorf("%w: JPEG header is truncated before its frame header", ErrCorrupt)
		}
		if data[i] != 0xFF {
			return h, fmt.Errorf("%w: JPEG has garbage where a marker belongs", ErrCorrupt)
		}
		marker := data[i+1]
		i += 2
		if marker == 0x01 || marker >= 0xD0 && marker <= 0xD7 {
			continue // standalone markers carry no length
		}
		if marker == 0xD8 || marker == 0xD9 {
			return h, fmt.Errorf("%w: JPEG ends before its frame header", ErrCorrupt)
		}
		if i+2 > len(data) {
			return h, fmt.Errorf("%w: JPEG header is truncated", ErrCorrupt)
		}
		n := int(binary.BigEndian.Uint16(data[i:]))
		if n < 2 || i+n > len(data) {
			return h, fmt.Errorf("%w: JPEG segment length runs past the end of the data", ErrCorrupt)
		}
		seg := data[i+2 : i+n]
		i += n
		switch {
		case marker == 0xE1 && h.exif == nil && bytes.HasPrefix(seg, exifPrefix):
			h.exif = seg[len(exifPrefix):]
		case isSOF(marker):
			if h.seenSOF {
				return h, fmt.Errorf("%w: JPEG has more than one frame header", ErrCorrupt)
			}
			h.seenSOF = true
			if len(seg) < 5 {
				return h, fmt.Errorf("%w: JPEG frame header is too short", ErrCorrupt)
			}
			h.height = int(binary.BigEndian.Uint16(seg[1:]))
			h.width = int(binary.BigEndian.Uint16(seg[3:]))
		case marker == 0xDA:
			if !h.seenSOF {
				return h, fmt.Errorf("%w: JPEG scan starts before any frame header", ErrCorrupt)
			}
			return h, nil
		}
	}
}

// isSOF reports whether marker starts a frame (SOF0..SOF15 less DHT, JPG
// and DAC, which share the range).
func isSOF(m byte) bool {
	return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC
}

// riffChunk returns the payload of the first top-level chunk with the given
// FourCC in a RIFF file, or nil.
func riffChunk(data []byte, fourCC string) []byte {
	for i := 12; i+8 <= len(data); {
		size := int64(binary.LittleEndian.Uint32(data[i+4:]))
		start := int64(i + 8)
		if start+size > int64(len(data)) {
			return nil
		}
		if string(data[i:i+4]) == fourCC {
			return data[start : start+size]
		}
		i = int(start + size + size&1) // chunks are padded to even sizes
	}
	return nil
}

// pngExif returns the payload of the eXIf chunk, or nil. It walks chunk
// headers only and gives up quietly on anything malformed, because a bad
// metadata chunk must not turn an otherwise fine image away.
func pngExif(data []byte) []byte {
	for i := len(pngSignature); i+12 <= len(data); {
		size := int64(binary.BigEndian.Uint32(data[i:]))
		typ := string(data[i+4 : i+8])
		start := int64(i + 8)
		if start+size+4 > int64(len(data)) {
			return nil
		}
		switch typ {
		case "eXIf":
			return data[start : start+size]
		case "IEND":
			return nil
		}
		i = int(start + size + 4)
	}
	return nil
}
