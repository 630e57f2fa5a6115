package catalog

import (
	"regexp"
	"strings"
	"testing"
)

func TestDefaultCatalogueIsValidAndLargeEnough(t *testing.T) {
	c := Default()
	if n := len(c.RoomTypes); n < 8 {
		t.Errorf("room types = %d, want at least 8", n)
	}
	if n := len(c.Styles); n < 10 {
		t.Errorf("styles = %d, want at least 10", n)
	}
}

// wordPieces approximates a CLIP token count from below: every word and
// every punctuation mark is at least one token.
var wordPieces = regexp.MustCompile(`[A-Za-z0-9]+|[^\sA-Za-z0-9]`)

// SDXL's text encoders read 77 tokens, two of them start and end markers;
// anything past that is cut off silently, so every expansion must fit.
func TestEveryPromptFitsTheTextEncoder(t *testing.T) {
	c := Default()
	for _, r := range c.RoomTypeIDs() {
		for _, s := range c.StyleIDs() {
			p, n, err := c.Prompts(r, s)
			if err != nil {
				t.Fatal(err)
			}
			for _, text := range []string{p, n} {
				if got := len(wordPieces.FindAllString(text, -1)); got > 70 {
					t.Errorf("%s/%s: %d word pieces, want <= 70: %q", r, s, got, text)
				}
				if strings.ContainsAny(text, "{}") {
					t.Errorf("%s/%s: unexpanded placeholder in %q", r, s, text)
				}
			}
			if !strings.Contains(p, mustRoom(t, c, r).Prompt) || !strings.Contains(n, mustRoom(t, c, r).Negative) {
				t.Errorf("%s/%s: room text missing from prompts", r, s)
			}
		}
	}
}

func mustRoom(t *testing.T, c *Catalog, id string) Entry {
	t.Helper()
	e, ok := c.RoomType(id)
	if !ok {
		t.Fatalf("room %q missing", id)
	}
	return e
}

func TestPromptsRejectsUnknownIDs(t *testing.T) {
	c := Default()
	if _, _, err := c.Prompts("garage", "modern"); err == nil {
		t.Error("unknown room type accepted")
	}
	if _, _, err := c.Prompts("bedroom", "gothic"); err == nil {
		t.Error("unknown style accepted")
	}
}

func TestParseRejectsBadCatalogues(t *testing.T) {
	good := `{"defaults":{"strength":0.9,"guidance_scale":6,"controlnet_conditioning_scale":0.8},
	"prompt_template":"{room} {style}","negative_template":"{room_negative} {style_negative}",
	"room_types":[{"id":"a","name":"A","prompt":"p","negative":"n"}],
	"styles":[{"id":"b","name":"B","prompt":"p","negative":"n"}]}`
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatalf("good catalogue rejected: %v", err)
	}
	for name, bad := range map[string]string{
		"duplicate id": strings.Replace(good, `[{"id":"b"`, `[{"id":"b","name":"B","prompt":"p","negative":"n"},{"id":"b"`, 1),
		"bad id":       strings.Replace(good, `"id":"a"`, `"id":"A B"`, 1),
		"missing negative": strings.Replace(good, `"prompt":"p","negative":"n"}],
	"styles"`, `"prompt":"p","negative":""}],
	"styles"`, 1),
		"template placeholder": strings.Replace(good, `"{room} {style}"`, `"{room}"`, 1),
		"strength range":       strings.Replace(good, `"strength":0.9`, `"strength":0`, 1),
		"unknown field":        strings.Replace(good, `"defaults"`, `"extra":1,"defaults"`, 1),
		"no styles":            strings.Replace(good, `[{"id":"b","name":"B","prompt":"p","negative":"n"}]`, `[]`, 1),
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
