package disclosure

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/jpeg"
	"testing"
)

// testImage returns a w×h photo-like image: smooth gradients, so that JPEG
// noise stays small and a drawn label stands out.
func testImage(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{
				R: uint8(150 + 60*x/w),
				G: uint8(140 + 50*y/h),
				B: uint8(120 + 40*(x+y)/(w+h)),
				A: 255,
			})
		}
	}
	return img
}

// encodeJPEG returns img as Go's encoder writes it: no metadata at all.
func encodeJPEG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatalf("jpeg.Encode: %v", err)
	}
	return buf.Bytes()
}

// segment returns a JPEG segment with marker m and payload p.
func segment(m byte, p []byte) []byte {
	n := len(p) + 2
	return append([]byte{0xFF, m, byte(n >> 8), byte(n)}, p...)
}

// gpsLatitude is the value the fake EXIF's GPS IFD holds, as rationals; the
// tests look for these bytes in the output.
var gpsLatitude = []byte{0, 0, 0, 37, 0, 0, 0, 1, 0, 0, 0, 46, 0, 0, 0, 1, 0, 0, 0x0D, 0x05, 0, 0, 0, 100}

// fakeEXIF returns an APP1 EXIF payload whose IFD0 points at a GPS IFD with
// a GPSLatitude, the way a phone writes one.
func fakeEXIF() []byte {
	be := binary.BigEndian
	var b []byte
	b = append(b, "Exif\x00\x00"...)
	tiff := []byte{'M', 'M', 0, 0x2A, 0, 0, 0, 8}
	// IFD0 at 8: one entry, GPSInfo (0x8825) LONG 1 -> offset 26.
	tiff = be.AppendUint16(tiff, 1)
	tiff = be.AppendUint16(tiff, 0x8825)
	tiff = be.AppendUint16(tiff, 4)
	tiff = be.AppendUint32(tiff, 1)
	tiff = be.AppendUint32(tiff, 26)
	tiff = be.AppendUint32(tiff, 0) // no next IFD
	// GPS IFD at 26: one entry, GPSLatitude (0x0002) RATIONAL 3 -> offset 44.
	tiff = be.AppendUint16(tiff, 1)
	tiff = be.AppendUint16(tiff, 0x0002)
	tiff = be.AppendUint16(tiff, 5)
	tiff = be.AppendUint32(tiff, 3)
	tiff = be.AppendUint32(tiff, 44)
	tiff = be.AppendUint32(tiff, 0)
	tiff = append(tiff, gpsLatitude...)
	return append(b, tiff...)
}

// withMetadata returns the JPEG src with a JFIF APP0, an EXIF APP1 and a
// COM segment inserted after its SOI.
func withMetadata(src []byte) []byte {
	jfif := []byte{'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0}
	var out []byte
	out = append(out, src[:2]...)
	out = append(out, segment(markerAPP0, jfif)...)
	out = append(out, segment(markerAPP1, fakeEXIF())...)
	out = append(out, segment(markerCOM, []byte("shot at 12 Elm Street"))...)
	return append(out, src[2:]...)
}

// headerMarkers returns the markers of the segments before the first SOS
// (that one included) and the offset of that SOS, failing the test on
// anything it cannot read.
func headerMarkers(t testing.TB, data []byte) (markers []byte, sos int) {
	t.Helper()
	if len(data) < 2 || data[0] != 0xFF || data[1] != markerSOI {
		t.Fatalf("output does not start with SOI: % x", data[:min(len(data), 4)])
	}
	for i := 2; ; {
		if i+4 > len(data) || data[i] != 0xFF {
			t.Fatalf("no segment at offset %d", i)
		}
		m := data[i+1]
		markers = append(markers, m)
		if m == markerSOS {
			return markers, i
		}
		i += 2 + (int(data[i+2])<<8 | int(data[i+3]))
	}
}

// checkOnlyXMP fails the test unless out's header holds exactly one APPn
// segment, an XMP APP1 naming DigitalSourceType, and no COM segment.
func checkOnlyXMP(t testing.TB, out []byte) {
	t.Helper()
	markers, _ := headerMarkers(t, out)
	apps := 0
	for _, m := range markers {
		switch {
		case m >= markerAPP0 && m <= markerAPP15:
			apps++
			if m != markerAPP1 {
				t.Errorf("output has an APP%d segment", m-markerAPP0)
			}
		case m == markerCOM:
			t.Error("output has a COM segment")
		}
	}
	if apps != 1 {
		t.Errorf("output has %d APPn segments, want 1 (XMP)", apps)
	}
	if !bytes.HasPrefix(out[4+2:], []byte(xmpNamespace)) {
		t.Error("the segment after SOI is not XMP")
	}
	if !bytes.Contains(out, []byte(DigitalSourceType)) {
		t.Error("output does not name DigitalSourceType")
	}
	if bytes.Contains(out, []byte("Exif\x00")) || bytes.Contains(out, gpsLatitude) {
		t.Error("output still holds EXIF or GPS bytes")
	}
	// Nothing after EOI.
	if !bytes.HasSuffix(out, []byte{0xFF, markerEOI}) {
		t.Error("output does not end with EOI")
	}
}

// decode decodes a JPEG, failing the test if it cannot.
func decode(t testing.TB, data []byte) image.Image {
	t.Helper()
	img, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("decoding the output: %v", err)
	}
	return img
}

// meanDiff returns the mean absolute difference per channel between a and b
// over r, and the largest one.
func meanDiff(a, b image.Image, r image.Rectangle) (mean float64, most int) {
	var sum, n int
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			r1, g1, b1, _ := a.At(x, y).RGBA()
			r2, g2, b2, _ := b.At(x, y).RGBA()
			for _, d := range []int{int(r1>>8) - int(r2>>8), int(g1>>8) - int(g2>>8), int(b1>>8) - int(b2>>8)} {
				d = max(d, -d)
				sum += d
				most = max(most, d)
				n++
			}
		}
	}
	return float64(sum) / float64(n), most
}

// newDiscloser returns a Discloser for the tests.
func newDiscloser(t testing.TB) *Discloser {
	t.Helper()
	d, err := New("Virtually staged", 90, 1<<20)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

// decodes reports whether Apply decodes data: whether it takes pixels
// through its reserve.
func decodes(d *Discloser, data []byte, label bool) bool {
	reserved := false
	_, _ = d.Apply(data, label, func(int64) (func(), error) {
		reserved = true
		return func() {}, nil
	})
	return reserved
}
