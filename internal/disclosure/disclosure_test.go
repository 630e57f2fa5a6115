package disclosure

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/image/font"

	"github.com/vstage/vstage/internal/imagecheck"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		quality int
		ok      bool
	}{
		{"usual", "Virtually staged", 90, true},
		{"one character", "V", 1, true},
		{"64 characters", strings.Repeat("a", 64), 100, true},
		{"accented", "Mise en scène virtuelle", 85, true},
		{"empty", "", 90, false},
		{"65 characters", strings.Repeat("a", 65), 90, false},
		{"newline", "Virtually\nstaged", 90, false},
		{"tab", "Virtually\tstaged", 90, false},
		{"invalid UTF-8", "Virtually \xff", 90, false},
		{"no glyph", "仮想ステージング", 90, false},
		{"quality 0", "Virtually staged", 0, false},
		{"quality 101", "Virtually staged", 101, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(tc.text, tc.quality, 1<<20)
			if tc.ok && (err != nil || d == nil) {
				t.Fatalf("New(%q, %d) = %v, %v; want a Discloser", tc.text, tc.quality, d, err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("New(%q, %d) succeeded; want an error", tc.text, tc.quality)
			}
		})
	}
}

func TestApplyCopiesJPEG(t *testing.T) {
	d := newDiscloser(t)
	plain := encodeJPEG(t, testImage(64, 48))
	in := withMetadata(plain)
	if decodes(d, in, false) {
		t.Error("a plain JPEG without a label is decoded; want it copied")
	}
	out, err := d.Apply(in, false, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checkOnlyXMP(t, out)
	_, inSOS := headerMarkers(t, in)
	_, outSOS := headerMarkers(t, out)
	if !bytes.Equal(in[inSOS:], out[outSOS:]) {
		t.Error("the bytes from SOS on differ: the image was re-encoded")
	}
	if mean, most := meanDiff(decode(t, in), decode(t, out), image.Rect(0, 0, 64, 48)); most != 0 {
		t.Errorf("pixels differ from the input's (mean %.2f, most %d); want identical", mean, most)
	}
	// Applying twice changes nothing more.
	again, err := d.Apply(out, false, nil)
	if err != nil {
		t.Fatalf("Apply on its own output: %v", err)
	}
	if !bytes.Equal(again, out) {
		t.Error("Apply on its own output changed it")
	}
}

// A header that declares more pixels than the cap is refused before any
// pixel is decoded, whether a label or the format asks for a decode; a
// JPEG copied without decoding is not held to it.
func TestApplyRefusesTooManyPixels(t *testing.T) {
	if _, err := New("Virtually staged", 90, 0); err == nil {
		t.Error("New accepted a pixel cap of 0")
	}
	d, err := New("Virtually staged", 90, 32*32)
	if err != nil {
		t.Fatal(err)
	}
	big := encodeJPEG(t, testImage(64, 48))
	var asPNG bytes.Buffer
	if err := png.Encode(&asPNG, testImage(64, 48)); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		data  []byte
		label bool
	}{"labelled JPEG": {big, true}, "PNG": {asPNG.Bytes(), false}} {
		if _, err := d.Apply(tc.data, tc.label, nil); !errors.Is(err, imagecheck.ErrTooManyPixels) {
			t.Errorf("%s of 64x48 under a 32x32 cap: %v, want ErrTooManyPixels", name, err)
		}
	}
	if _, err := d.Apply(big, false, nil); err != nil {
		t.Errorf("a JPEG copied as it is: %v", err)
	}
}

func TestApplyCopiesGrayJPEG(t *testing.T) {
	d := newDiscloser(t)
	gray := image.NewGray(image.Rect(0, 0, 32, 32))
	for i := range gray.Pix {
		gray.Pix[i] = uint8(i)
	}
	in := withMetadata(encodeJPEG(t, gray))
	if decodes(d, in, false) {
		t.Error("a gray JPEG without a label is decoded; want it copied")
	}
	out, err := d.Apply(in, false, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checkOnlyXMP(t, out)
	if _, ok := decode(t, out).(*image.Gray); !ok {
		t.Error("the gray JPEG did not stay gray")
	}
}

// TestApplyParsesMarkersStrictly feeds markers a careless parser would trip
// on: fill bytes, standalone markers, a COM and restart markers between the
// scan and EOI, and bytes after EOI.
func TestApplyParsesMarkersStrictly(t *testing.T) {
	d := newDiscloser(t)
	plain := encodeJPEG(t, testImage(40, 40))
	_, sos := headerMarkers(t, plain)
	var in []byte
	in = append(in, 0xFF, markerSOI, 0xFF, 0xFF, 0xFF, markerTEM, 0xFF, 0xFF)
	in = append(in, plain[2:sos]...)
	in = append(in, plain[sos:len(plain)-2]...)
	in = append(in, segment(markerCOM, []byte("Exif\x00 hidden after the scan"))...)
	in = append(in, 0xFF, 0xFF, markerEOI)
	in = append(in, withMetadata(plain)...) // an MPF-style second image
	out, err := d.Apply(in, false, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checkOnlyXMP(t, out)
	if bytes.Count(out, []byte{0xFF, markerSOI}) != 1 {
		t.Error("output holds a second SOI: the trailing image survived")
	}
	want, err := d.Apply(plain, false, nil)
	if err != nil {
		t.Fatalf("Apply(plain): %v", err)
	}
	if !bytes.Equal(out, want) {
		t.Error("output differs from that of the same JPEG without the extra markers")
	}
}

func TestApplyReencodesWhenColoursDependOnDroppedSegments(t *testing.T) {
	d := newDiscloser(t)
	plain := encodeJPEG(t, testImage(32, 32))
	_, sos := headerMarkers(t, plain)
	// An Adobe APP14 with transform 0 says the three components are RGB.
	adobe := segment(markerAPP14, []byte{'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0})
	rgbAdobe := append(append([]byte{0xFF, markerSOI}, adobe...), plain[2:]...)
	// Component ids 'R', 'G', 'B' say so too when there is no JFIF.
	rgbIDs := bytes.Clone(plain)
	sof := bytes.Index(rgbIDs[:sos], []byte{0xFF, markerSOF0})
	if sof < 0 {
		t.Fatal("no SOF0 in Go's JPEG")
	}
	for c, id := range []byte("RGB") {
		rgbIDs[sof+10+3*c] = id // in the frame header
		rgbIDs[sos+5+2*c] = id  // and the scan's component selectors
	}
	for name, in := range map[string][]byte{"Adobe transform 0": rgbAdobe, "RGB ids": rgbIDs} {
		t.Run(name, func(t *testing.T) {
			if !decodes(d, in, false) {
				t.Error("not decoded; want it re-encoded")
			}
			want := decode(t, in)
			out, err := d.Apply(in, false, nil)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			checkOnlyXMP(t, out)
			if mean, _ := meanDiff(want, decode(t, out), want.Bounds()); mean > 3 {
				t.Errorf("colours changed: mean difference %.2f", mean)
			}
		})
	}
}

func TestCopyable(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    jpegLayout
		want bool
	}{
		{"YCbCr", jpegLayout{frame: markerSOF0, componentIDs: []byte{1, 2, 3}}, true},
		{"gray", jpegLayout{frame: markerSOF0, componentIDs: []byte{1}}, true},
		{"Adobe YCbCr", jpegLayout{frame: markerSOF0, componentIDs: []byte{1, 2, 3}, adobe: true, transform: 1}, true},
		{"Adobe RGB", jpegLayout{frame: markerSOF0, componentIDs: []byte{1, 2, 3}, adobe: true}, false},
		{"CMYK", jpegLayout{frame: markerSOF0, componentIDs: []byte{1, 2, 3, 4}, adobe: true}, false},
		{"YCCK", jpegLayout{frame: markerSOF0, componentIDs: []byte{1, 2, 3, 4}, adobe: true, transform: 2}, false},
		{"progressive", jpegLayout{frame: 0xC2, componentIDs: []byte{1, 2, 3}}, false},
		{"extended", jpegLayout{frame: 0xC1, componentIDs: []byte{1, 2, 3}}, false},
	} {
		if got := tc.l.copyable(); got != tc.want {
			t.Errorf("%s: copyable() = %v; want %v", tc.name, got, tc.want)
		}
	}
}

func TestApplyLabel(t *testing.T) {
	d := newDiscloser(t)
	src := testImage(1024, 768)
	in := withMetadata(encodeJPEG(t, src))
	if !decodes(d, in, true) {
		t.Error("a labelled JPEG is not decoded")
	}
	out, err := d.Apply(in, true, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checkOnlyXMP(t, out)
	got := decode(t, out)
	if got.Bounds() != src.Bounds() {
		t.Fatalf("output is %v; want %v", got.Bounds(), src.Bounds())
	}
	// The text is 27 px (3.5 % of 768) with a 27 px margin: its box spans
	// about x 27..290, y 690..741. Sample inside it.
	if mean, _ := meanDiff(src, got, image.Rect(40, 700, 250, 735)); mean < 40 {
		t.Errorf("label box differs from the input by %.1f on average; want a marked difference", mean)
	}
	// The top and right of the image keep their pixels, within JPEG noise.
	for _, r := range []image.Rectangle{image.Rect(0, 0, 1024, 500), image.Rect(400, 500, 1024, 768)} {
		if mean, most := meanDiff(src, got, r); mean > 2 || most > 24 {
			t.Errorf("pixels in %v changed: mean %.2f, most %d", r, mean, most)
		}
	}
	// A label in white shows as bright pixels inside the dark box.
	bright := 0
	for y := 700; y < 735; y++ {
		for x := 40; x < 250; x++ {
			if c := color.GrayModel.Convert(got.At(x, y)).(color.Gray); c.Y > 200 {
				bright++
			}
		}
	}
	if bright < 200 {
		t.Errorf("only %d bright pixels in the label box; want white text", bright)
	}
}

func TestLabelSize(t *testing.T) {
	d := newDiscloser(t)
	measure := func(px float64) (float64, error) {
		face, err := d.faceAt(px)
		if err != nil {
			return 0, err
		}
		defer face.Close()
		return fixedToFloat(font.MeasureString(face, d.text)), nil
	}
	for _, tc := range []struct {
		w, h    int
		want    float64 // 0: only check that it fits
		atLeast float64
	}{
		{1024, 768, 27, 0},
		{4000, 3000, 105, 0},
		{300, 300, 12, 0}, // 3.5 % would be 10.5 px: the floor holds
		{120, 800, 0, 4},  // too narrow for 12 px: shrinks to fit
	} {
		px, err := labelSize(tc.w, tc.h, measure)
		if err != nil {
			t.Fatalf("labelSize(%d, %d): %v", tc.w, tc.h, err)
		}
		if tc.want != 0 && px != tc.want {
			t.Errorf("labelSize(%d, %d) = %g; want %g", tc.w, tc.h, px, tc.want)
		}
		if px < tc.atLeast {
			t.Errorf("labelSize(%d, %d) = %g; want at least %g", tc.w, tc.h, px, tc.atLeast)
		}
		textW, _ := measure(px)
		if need := textW + 2*padX*px + 2*px; need > float64(tc.w) {
			t.Errorf("labelSize(%d, %d) = %g needs %.0f px of width", tc.w, tc.h, px, need)
		}
	}
}

func TestApplyLabelsSmallImages(t *testing.T) {
	d := newDiscloser(t)
	for _, size := range []image.Point{{1, 1}, {8, 8}, {120, 800}, {800, 20}} {
		out, err := d.Apply(encodeJPEG(t, testImage(size.X, size.Y)), true, nil)
		if err != nil {
			t.Errorf("Apply(%v, true): %v", size, err)
			continue
		}
		if got := decode(t, out).Bounds().Size(); got != size {
			t.Errorf("Apply(%v, true) is %v", size, got)
		}
	}
}

func TestApplyPNG(t *testing.T) {
	d := newDiscloser(t)
	src := image.NewNRGBA(image.Rect(0, 0, 50, 40))
	for y := range 40 {
		for x := range 50 {
			src.Set(x, y, color.NRGBA{R: uint8(5 * x), G: 100, B: uint8(6 * y), A: 255})
		}
	}
	src.Set(0, 0, color.NRGBA{}) // transparent: white in the JPEG
	var buf bytes.Buffer
	if err := png.Encode(&buf, src); err != nil {
		t.Fatal(err)
	}
	if !decodes(d, buf.Bytes(), false) {
		t.Error("a PNG is not decoded")
	}
	out, err := d.Apply(buf.Bytes(), false, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checkOnlyXMP(t, out)
	got := decode(t, out)
	if got.Bounds() != src.Bounds() {
		t.Fatalf("output is %v; want %v", got.Bounds(), src.Bounds())
	}
	if mean, _ := meanDiff(src, got, image.Rect(10, 10, 50, 40)); mean > 4 {
		t.Errorf("pixels differ from the PNG's by %.2f on average", mean)
	}
	if c := color.GrayModel.Convert(got.At(0, 0)).(color.Gray); c.Y < 150 {
		t.Errorf("a transparent pixel came out at gray %d; want light", c.Y)
	}
}

func TestApplyRefuses(t *testing.T) {
	d := newDiscloser(t)
	good := withMetadata(encodeJPEG(t, testImage(16, 16)))
	_, sos := headerMarkers(t, good)
	cases := map[string][]byte{
		"empty":             nil,
		"garbage":           []byte("this is not an image at all"),
		"SOI only":          {0xFF, markerSOI},
		"SOI EOI":           {0xFF, markerSOI, 0xFF, markerEOI},
		"byte not a marker": {0xFF, markerSOI, 0xFF, markerDHT, 0, 2, 0x12},
		"zero length":       {0xFF, markerSOI, 0xFF, 0xDB, 0, 0, 0xFF, markerEOI},
		"length past end":   {0xFF, markerSOI, 0xFF, 0xDB, 0x40, 0, 1, 2},
		"scan before frame": append([]byte{0xFF, markerSOI}, segment(markerSOS, []byte{1, 1, 0, 0, 63, 0})...),
		"second SOI":        append([]byte{0xFF, markerSOI, 0xFF, markerSOI}, good[2:]...),
		"no EOI":            good[:len(good)-2],
		"bad frame length":  append([]byte{0xFF, markerSOI}, segment(markerSOF0, []byte{8, 0, 1, 0, 1, 3, 1})...),
	}
	for n := 3; n < len(good)-2; n += max(1, n/7) {
		cases["prefix "+strconv.Itoa(n)] = good[:n]
	}
	for name, in := range cases {
		for _, label := range []bool{false, true} {
			out, err := d.Apply(in, label, nil)
			if err == nil {
				t.Errorf("%s (label %v): Apply succeeded with %d bytes; want an error", name, label, len(out))
			}
		}
	}
	// Truncation after the header reads as such.
	if _, err := d.Apply(good[:sos+20], false, nil); !errors.Is(err, errTruncated) {
		t.Errorf("Apply(truncated scan) = %v; want errTruncated", err)
	}
	if _, err := d.Apply(good[:sos+20], true, nil); err == nil {
		t.Error("Apply(truncated scan, true) succeeded")
	}
}

func TestApplyConcurrent(t *testing.T) {
	d := newDiscloser(t)
	in := encodeJPEG(t, testImage(200, 150))
	want, err := d.Apply(in, true, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	outs := make([][]byte, 8)
	for i := range 8 {
		wg.Go(func() { outs[i], errs[i] = d.Apply(in, i%2 == 0, nil) })
	}
	wg.Wait()
	for i := range 8 {
		if errs[i] != nil {
			t.Errorf("Apply %d: %v", i, errs[i])
		} else if i%2 == 0 && !bytes.Equal(outs[i], want) {
			t.Errorf("Apply %d gave a different labelled image", i)
		}
	}
}

// A JPEG stored on its side with EXIF Orientation 6 (turn 90° clockwise to
// view) comes out upright: the tag that said how to show it is dropped.
func TestApplyTurnsAnOrientedJPEGUpright(t *testing.T) {
	stored := image.NewRGBA(image.Rect(0, 0, 40, 20))
	for y := range 20 {
		for x := range 40 {
			c := color.RGBA{0, 0, 255, 255}
			if x < 10 {
				c = color.RGBA{255, 0, 0, 255} // red on the stored left, the top once turned
			}
			stored.Set(x, y, c)
		}
	}
	plain := encodeJPEG(t, stored)
	exif := []byte("Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00")
	data := append(append(append([]byte{}, plain[:2]...), segment(0xE1, exif)...), plain[2:]...)
	d := newDiscloser(t)
	for _, label := range []bool{false, true} {
		if !decodes(d, data, label) {
			t.Errorf("label %v: a turned JPEG is not decoded", label)
		}
		out, err := d.Apply(data, label, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkOnlyXMP(t, out)
		img := decode(t, out)
		if b := img.Bounds(); b.Dx() != 20 || b.Dy() != 40 {
			t.Fatalf("label %v: %v, want 20x40 upright", label, b)
		}
		if r, _, bl, _ := img.At(10, 2).RGBA(); r>>8 < 200 || bl>>8 > 60 {
			t.Errorf("label %v: the top is not red (r %d, b %d)", label, r>>8, bl>>8)
		}
	}
	// Upright already: still copied, not decoded.
	if decodes(d, plain, false) {
		t.Error("an upright baseline JPEG is decoded; want it copied")
	}
}

// An image whose header cannot be read is not decoded: a GIF (no backend
// answers one) and a PNG cut inside its header are refused.
func TestApplyRefusesAnUnreadableHeader(t *testing.T) {
	d := newDiscloser(t)
	gif := []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;")
	var buf bytes.Buffer
	if err := png.Encode(&buf, testImage(8, 8)); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"gif": gif, "cut png": buf.Bytes()[:20]} {
		if _, err := d.Apply(data, false, nil); err == nil || !strings.Contains(err.Error(), "header") {
			t.Errorf("%s: %v, want a header error", name, err)
		}
	}
}

// TestApplyReservesTheDecodedPixels: Apply takes the header's pixels
// through reserve only when it decodes, gives them back, and decodes
// nothing when the reserve is refused.
func TestApplyReservesTheDecodedPixels(t *testing.T) {
	d := newDiscloser(t)
	in := encodeJPEG(t, testImage(64, 48))
	var asked []int64
	released := 0
	reserve := func(px int64) (func(), error) {
		asked = append(asked, px)
		return func() { released++ }, nil
	}
	if _, err := d.Apply(in, false, reserve); err != nil || len(asked) != 0 {
		t.Fatalf("copied JPEG: %v, reserved %v; want nothing reserved", err, asked)
	}
	if _, err := d.Apply(in, true, reserve); err != nil || len(asked) != 1 || asked[0] != 64*48 || released != 1 {
		t.Fatalf("labelled JPEG: %v, reserved %v, released %d; want 3072 pixels once, given back", err, asked, released)
	}
	refused := errors.New("deadline")
	_, err := d.Apply(in, true, func(int64) (func(), error) { return nil, refused })
	if !errors.Is(err, refused) {
		t.Fatalf("refused reserve: %v, want its error", err)
	}
}

// BenchmarkApplyCopy is the common case: the backend's JPEG, no label,
// copied with the XMP packet put in.
func BenchmarkApplyCopy(b *testing.B) {
	d := newDiscloser(b)
	in := encodeJPEG(b, testImage(1024, 683))
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := d.Apply(in, false, nil); err != nil {
			b.Fatal(err)
		}
	}
}
