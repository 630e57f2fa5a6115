package sample

import (
	"bytes"
	"encoding/json"
	"image"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/catalog"
)

// setDir is the committed bundled set, from this package's folder.
var setDir = filepath.Join("..", "..", "quality", "sets", "bundled")

func readSetFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(setDir, name))
	if err != nil {
		t.Fatalf("%v; run go run ./internal/sample/cmd/qualityset -o quality/sets/bundled", err)
	}
	return b
}

func committedPhoto(t *testing.T, c Case) *image.YCbCr {
	t.Helper()
	m, err := jpeg.Decode(bytes.NewReader(readSetFile(t, c.PhotoName())))
	if err != nil {
		t.Fatalf("%s: %v", c.PhotoName(), err)
	}
	y, ok := m.(*image.YCbCr)
	if !ok || m.Bounds() != image.Rect(0, 0, QualityWidth, QualityHeight) {
		t.Fatalf("%s: a %T of %v; want a %dx%d colour JPEG", c.PhotoName(), m, m.Bounds(), QualityWidth, QualityHeight)
	}
	return y
}

func qualityCase(t *testing.T, id string) Case {
	t.Helper()
	for _, c := range QualitySet() {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("no case %q", id)
	return Case{}
}

// TestQualitySetIsFreshRender checks that the committed photos are renders
// of the table as it is. Rendering every photo in full takes minutes under
// the race detector, and the JPEG encoder works on whole blocks, so the
// test renders a sparse grid of pixels instead (each pixel is a pure
// function of the room and its position) and compares them with the
// decoded photo. JPEG at quality 90 leaves a small error everywhere and a
// larger one at sharp edges: over the set, at most 1.5% of the values are
// off by more than 6 and the mean error is at most 1.1. Redrawing only the
// floor boards with the next seed already puts 2.8% to 11% of the values
// off by more than 6; a moved wall or window or other light, far more.
func TestQualitySetIsFreshRender(t *testing.T) {
	for _, c := range QualitySet() {
		t.Run(c.ID, func(t *testing.T) {
			t.Parallel()
			got := committedPhoto(t, c)
			s := newScene(c.room(), QualityWidth, QualityHeight)
			var sum float64
			n, far := 0, 0
			for y := 3; y < QualityHeight; y += 8 {
				for x := 5; x < QualityWidth; x += 8 {
					want := s.colour(x, y)
					r, g, b, _ := got.At(x, y).RGBA()
					for i, v := range [3]uint32{r >> 8, g >> 8, b >> 8} {
						e := math.Abs(float64(v) - float64(want[i]))
						sum += e
						if e > 6 {
							far++
						}
						n++
					}
				}
			}
			mean, share := sum/float64(n), float64(far)/float64(n)
			if mean > 1.5 || share > 0.02 {
				t.Errorf("%s differs from a fresh render: mean error %.2f, %.2f%% of values off by more than 6; run go run ./internal/sample/cmd/qualityset -o quality/sets/bundled",
					c.PhotoName(), mean, 100*share)
			}
		})
	}
}

// TestQualityMasksAreFreshRenders compares each committed mask with a
// fresh render in full: a mask takes one ray per pixel and no shading.
func TestQualityMasksAreFreshRenders(t *testing.T) {
	for _, c := range QualitySet() {
		if c.Zone == nil {
			continue
		}
		want, err := c.EncodeMask()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readSetFile(t, c.MaskName()), want) {
			t.Errorf("%s differs from a fresh render", c.MaskName())
		}
	}
}

func TestManifestMatchesTable(t *testing.T) {
	want, err := EncodeManifest(QualityManifest())
	if err != nil {
		t.Fatal(err)
	}
	got := readSetFile(t, "manifest.json")
	if !bytes.Equal(got, want) {
		t.Fatalf("manifest.json differs from the table:\n%s\nwant:\n%s", got, want)
	}
	// The harness reads plain JSON: check the field names and that an
	// absent mask or parameter is left out rather than null or zero.
	var m struct {
		Name  string           `json:"name"`
		Cases []map[string]any `json:"cases"`
	}
	if err := json.Unmarshal(got, &m); err != nil {
		t.Fatal(err)
	}
	if m.Name != "bundled" || len(m.Cases) != len(QualitySet()) {
		t.Fatalf("name %q, %d cases", m.Name, len(m.Cases))
	}
	for i, c := range QualitySet() {
		mc := m.Cases[i]
		for _, k := range []string{"id", "original", "room_type", "style", "seed", "notes"} {
			if _, ok := mc[k]; !ok {
				t.Errorf("case %s: no %q", c.ID, k)
			}
		}
		if _, ok := mc["mask"]; ok != (c.Zone != nil) {
			t.Errorf("case %s: mask present %v, want %v", c.ID, ok, c.Zone != nil)
		}
		for k, v := range mc {
			if v == nil || v == "" || v == 0.0 {
				t.Errorf("case %s: %q is %v; leave it out instead", c.ID, k, v)
			}
		}
	}
}

var kebab = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

func TestQualityCasesAreSound(t *testing.T) {
	cat := catalog.Default()
	cases := QualitySet()
	if len(cases) < 12 {
		t.Errorf("%d cases; want at least 12", len(cases))
	}
	ids, seeds, masks := map[string]bool{}, map[uint32]bool{}, 0
	for _, c := range cases {
		if !kebab.MatchString(c.ID) || ids[c.ID] {
			t.Errorf("id %q: not kebab-case or not unique", c.ID)
		}
		ids[c.ID] = true
		if seeds[c.Seed] {
			t.Errorf("case %s: seed %d used twice", c.ID, c.Seed)
		}
		seeds[c.Seed] = true
		if _, ok := cat.RoomType(c.RoomType); !ok {
			t.Errorf("case %s: room type %q is not in the catalogue", c.ID, c.RoomType)
		}
		if _, ok := cat.Style(c.Style); !ok {
			t.Errorf("case %s: style %q is not in the catalogue", c.ID, c.Style)
		}
		if !strings.HasSuffix(c.Notes, ".") || strings.Count(c.Notes, ". ") > 0 {
			t.Errorf("case %s: notes %q should be one sentence", c.ID, c.Notes)
		}
		if c.Strength < 0 || c.Strength > 1 || c.GuidanceScale < 0 {
			t.Errorf("case %s: strength %g, guidance scale %g", c.ID, c.Strength, c.GuidanceScale)
		}
		if err := c.room().Validate(); err != nil {
			t.Errorf("case %s: %v", c.ID, err)
		}
		if c.Zone != nil {
			masks++
		}
	}
	if masks < 4 {
		t.Errorf("%d cases have a mask; want at least 4", masks)
	}
}

func TestQualityMasks(t *testing.T) {
	for _, c := range QualitySet() {
		if c.Zone == nil {
			continue
		}
		m, err := png.Decode(bytes.NewReader(readSetFile(t, c.MaskName())))
		if err != nil {
			t.Fatalf("%s: %v", c.MaskName(), err)
		}
		g, ok := m.(*image.Gray)
		if !ok || g.Bounds() != image.Rect(0, 0, QualityWidth, QualityHeight) {
			t.Fatalf("%s: a %T of %v; want 8-bit grayscale %dx%d", c.MaskName(), m, m.Bounds(), QualityWidth, QualityHeight)
		}
		white, top := 0, 0
		for i, v := range g.Pix {
			switch v {
			case 255:
				white++
				if i/g.Stride < QualityHeight/5 {
					top++
				}
			case 0:
			default:
				t.Fatalf("%s: value %d; a mask is 0 or 255", c.MaskName(), v)
			}
		}
		share := float64(white) / float64(len(g.Pix))
		if share < 0.05 || share > 0.8 || top > 0 {
			t.Errorf("%s: %.1f%% white, %d white pixels in the top fifth (the ceiling)", c.MaskName(), 100*share, top)
		}
	}
}

// project returns where the room point p appears in the picture.
func (s *scene) project(p vec) (float64, float64) {
	r := p.sub(s.cam)
	u, v, w := r.x, r.y, r.z
	if s.turned {
		u, v, w = r.dot(s.right), r.dot(s.up), r.dot(s.fwd)
	}
	return s.cx + s.focal*u/w, s.cy - s.focal*v/w
}

// cornerX measures, in row y of photo m, where the back wall meets the
// side wall that the picture shows near x: the strongest change of
// brightness within 12 pixels of x. It fails the test when the change is
// too weak to be the corner.
func cornerX(t *testing.T, m *image.YCbCr, x, y float64) int {
	t.Helper()
	lum := func(x int) float64 { return float64(m.Y[m.YOffset(x, int(y))]) }
	best, bestX := 0.0, -1
	for cx := int(x) - 12; cx <= int(x)+12; cx++ {
		if g := math.Abs(lum(cx+2) - lum(cx-2)); g > best {
			best, bestX = g, cx
		}
	}
	if best < 12 {
		t.Fatalf("no wall corner near (%.0f, %.0f): the strongest step is %.0f", x, y, best)
	}
	return bestX
}

// corners measures the back wall's left or right vertical edge at two
// heights, 0.5 m and 2 m, and returns the x of each.
func corners(t *testing.T, id string, side float64) (low, high int) {
	c := qualityCase(t, id)
	m := committedPhoto(t, c)
	s := newScene(c.room(), QualityWidth, QualityHeight)
	x0, y0 := s.project(vec{side * s.w / 2, 0.5, s.d})
	x1, y1 := s.project(vec{side * s.w / 2, 2.0, s.d})
	return cornerX(t, m, x0, y0), cornerX(t, m, x1, y1)
}

func TestTiltedCameraTiltsVerticals(t *testing.T) {
	lo, hi := corners(t, "tilted-living-room", -1)
	if d := lo - hi; d < 8 {
		t.Errorf("tilted camera: the back wall's left corner runs from x=%d to x=%d over 1.5 m; want a lean of 8 px or more", lo, hi)
	}
	lo, hi = corners(t, "narrow-bedroom", -1)
	if d := lo - hi; d < -1 || d > 1 {
		t.Errorf("level camera: the back wall's left corner runs from x=%d to x=%d; want a vertical", lo, hi)
	}
}

func TestNarrowAndWideRoomsDiffer(t *testing.T) {
	nl, _ := corners(t, "narrow-bedroom", -1)
	nr, _ := corners(t, "narrow-bedroom", 1)
	wl, _ := corners(t, "wide-living-room", -1)
	wr, _ := corners(t, "wide-living-room", 1)
	if nr-nl < 100 || wr-wl < nr-nl+200 {
		t.Errorf("back wall spans x=%d..%d in the narrow room and x=%d..%d in the wide one; want the wide one 200 px wider", nl, nr, wl, wr)
	}
}

func meanLuma(m *image.YCbCr) float64 {
	sum := 0
	for _, v := range m.Y {
		sum += int(v)
	}
	return float64(sum) / float64(len(m.Y))
}

func TestLightCasesDiffer(t *testing.T) {
	dim := meanLuma(committedPhoto(t, qualityCase(t, "overcast-bedroom")))
	sun := meanLuma(committedPhoto(t, qualityCase(t, "sunny-living-room")))
	if dim+30 > sun {
		t.Errorf("mean luma: overcast %.1f, strong sun %.1f; want the overcast room darker by 30 or more", dim, sun)
	}
}
