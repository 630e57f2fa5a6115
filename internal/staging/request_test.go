package staging

import (
	"math"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

func testValidator(t testing.TB, template string) validator {
	prefixes, err := storage.ParsePrefixes("listings/,uploads/tmp")
	if err != nil {
		t.Fatal(err)
	}
	return validator{catalog: catalog.Default(), prefixes: prefixes, stagedKey: func(o, id string) string {
		dir := o[:max(strings.LastIndexByte(o, '/'), 0)]
		return strings.NewReplacer("{dir}", dir, "{image_id}", id).Replace(template)
	}}
}

func TestPlanResolvesDefaultsAndKeys(t *testing.T) {
	v := testValidator(t, "{dir}/staged/{image_id}.jpg")
	p, err := v.plan(Request{ImageID: "a_1-B", OriginalKey: "listings/9/o.jpg", RoomType: "kitchen", Style: "coastal"})
	if err != nil {
		t.Fatal(err)
	}
	d := catalog.Default().Defaults
	if p.params.Strength != d.Strength || p.params.GuidanceScale != d.GuidanceScale {
		t.Errorf("defaults not applied: %+v", p.params)
	}
	if p.stagedKey != "listings/9/staged/a_1-B.jpg" || p.recordKey != "listings/9/staged/a_1-B.jpg.json" {
		t.Errorf("keys = %q %q", p.stagedKey, p.recordKey)
	}
}

func TestPlanRefusesKeysThatWouldOverwriteAnInput(t *testing.T) {
	v := testValidator(t, "{dir}/{image_id}.jpg")
	_, err := v.plan(Request{ImageID: "o", OriginalKey: "listings/9/o.jpg", RoomType: "kitchen", Style: "coastal"})
	if fault.CodeOf(err) != fault.InvalidInput {
		t.Errorf("err = %v, want invalid_input", err)
	}
}

func TestPlanRefusesNonFiniteNumbers(t *testing.T) {
	v := testValidator(t, "{dir}/staged/{image_id}.jpg")
	for _, x := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		r := Request{ImageID: "a", OriginalKey: "listings/o.jpg", RoomType: "kitchen", Style: "coastal", Strength: &x}
		if _, err := v.plan(r); fault.CodeOf(err) != fault.InvalidInput {
			t.Errorf("strength %v: %v", x, err)
		}
		r.Strength, r.GuidanceScale = nil, &x
		if _, err := v.plan(r); fault.CodeOf(err) != fault.InvalidInput {
			t.Errorf("guidance %v: %v", x, err)
		}
	}
}

// FuzzPlan checks the validation invariants: an accepted request has a
// well-formed image_id, catalogue ids, finite in-range numbers, and every
// key (derived ones included) valid and inside the allowed prefixes; a
// refused one gets a client error code.
func FuzzPlan(f *testing.F) {
	f.Add("img-1", "listings/1/o.jpg", "", "bedroom", "modern", 0.5, 7.0)
	f.Add("x", "uploads/tmp/a.png", "uploads/tmp/m.png", "kitchen", "japandi", 1.0, 0.0)
	f.Add("../x", "listings/../o.jpg", "listings//m", "Bedroom", "", 0.0, -1.0)
	f.Add("a", "listings-evil/o.jpg", "uploads/tmpx/m", "garage", "modern", 2.0, 31.0)
	f.Add(strings.Repeat("a", 129), "listings/\x00", "\\", "bedroom", "modern", math.NaN(), math.Inf(1))
	v := testValidator(f, "{dir}/staged/{image_id}.jpg")
	f.Fuzz(func(t *testing.T, id, orig, mask, room, style string, strength, guidance float64) {
		p, err := v.plan(Request{ImageID: id, OriginalKey: orig, MaskKey: mask, RoomType: room, Style: style, Strength: &strength, GuidanceScale: &guidance})
		if err != nil {
			if c := fault.CodeOf(err); c != fault.InvalidInput && c != fault.Forbidden {
				t.Fatalf("code %s for a bad request", c)
			}
			return
		}
		if !imageIDPattern.MatchString(id) {
			t.Fatalf("accepted image_id %q", id)
		}
		for _, k := range []string{orig, p.stagedKey, p.recordKey} {
			if !v.prefixes.Allows(k) || strings.Contains(k, "..") || strings.HasPrefix(k, "/") {
				t.Fatalf("accepted key %q", k)
			}
		}
		if mask != "" && !v.prefixes.Allows(mask) {
			t.Fatalf("accepted mask key %q", mask)
		}
		if !(strength > 0 && strength <= 1) || !(guidance >= 0 && guidance <= 30) {
			t.Fatalf("accepted strength %v guidance %v", strength, guidance)
		}
		if _, _, err := v.catalog.Prompts(room, style); err != nil {
			t.Fatalf("accepted ids %q %q: %v", room, style, err)
		}
	})
}
