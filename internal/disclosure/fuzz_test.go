package disclosure

import (
	"bytes"
	"image/jpeg"
	"image/png"
	"testing"
)

// FuzzApply checks that Apply never panics, and that whatever it accepts
// comes out as a decodable JPEG whose only metadata is the XMP packet.
func FuzzApply(f *testing.F) {
	plain := encodeJPEG(f, testImage(16, 16))
	f.Add(plain, false)
	f.Add(withMetadata(plain), false)
	f.Add(withMetadata(plain), true)
	f.Add(plain[:len(plain)/2], false)
	f.Add([]byte{0xFF, markerSOI, 0xFF, 0xFF, markerTEM, 0xFF, markerEOI}, false)
	f.Add([]byte("GIF89a not really"), true)
	var buf bytes.Buffer
	if err := png.Encode(&buf, testImage(8, 8)); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes(), false)
	d := newDiscloser(f)
	f.Fuzz(func(t *testing.T, data []byte, label bool) {
		// The discloser's pixel cap (1 Mpx here) keeps a forged header from
		// asking for gigabytes: such an input is an error like any other.
		out, err := d.Apply(data, label, nil)
		if err != nil {
			return
		}
		checkOnlyXMP(t, out)
		// A copied JPEG may be one that Go's decoder refuses, since Apply
		// does not check scan data; it must not be one that it accepted.
		if !jpegDecodes(out) && (decodes(d, data, label) || jpegDecodes(data)) {
			t.Errorf("Apply made %d bytes that decode into %d bytes that do not", len(data), len(out))
		}
	})
}

// jpegDecodes reports whether data decodes as a JPEG.
func jpegDecodes(data []byte) bool {
	_, err := jpeg.Decode(bytes.NewReader(data))
	return err == nil
}
