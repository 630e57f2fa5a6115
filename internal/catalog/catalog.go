// Package catalog holds the business vocabulary of staging: the room types
// and styles a client may ask for, the prompt templates they expand into,
// and the default generation parameters. The data is embedded, so a build
// always serves the catalogue it was tested with.
package catalog

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

//go:embed catalog.json
var embedded []byte

// Entry is a room type or a style.
type Entry struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Prompt   string `json:"prompt"`
	Negative string `json:"negative"`
}

// Defaults are the generation parameters used when a request leaves them
// out.
type Defaults struct {
	Strength                    float64 `json:"strength"`
	GuidanceScale               float64 `json:"guidance_scale"`
	ControlNetConditioningScale float64 `json:"controlnet_conditioning_scale"`
}

// Catalog is an immutable set of room types and styles.
type Catalog struct {
	Defaults         Defaults `json:"defaults"`
	PromptTemplate   string   `json:"prompt_template"`
	NegativeTemplate string   `json:"negative_template"`
	RoomTypes        []Entry  `json:"room_types"`
	Styles           []Entry  `json:"styles"`
}

// Default returns the embedded catalogue. It panics only if the embedded
// data is invalid, which the package tests rule out.
func Default() *Catalog {
	c, err := Parse(embedded)
	if err != nil {
		panic(fmt.Sprintf("catalog: embedded catalogue is invalid: %v", err))
	}
	return c
}

var idPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// Parse decodes and validates a catalogue: ids unique and lower_snake_case,
// every entry with a name and both prompts, templates with their
// placeholders, defaults in range.
func Parse(data []byte) (*Catalog, error) {
	var c Catalog
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode catalogue: %w", err)
	}
	var errs []error
	for _, list := range []struct {
		kind    string
		entries []Entry
	}{{"room type", c.RoomTypes}, {"style", c.Styles}} {
		seen := map[string]bool{}
		for _, e := range list.entries {
			if !idPattern.MatchString(e.ID) {
				errs = append(errs, fmt.Errorf("%s id %q is not lower_snake_case", list.kind, e.ID))
			}
			if seen[e.ID] {
				errs = append(errs, fmt.Errorf("%s id %q appears twice", list.kind, e.ID))
			}
			seen[e.ID] = true
			if e.Name == "" || e.Prompt == "" || e.Negative == "" {
				errs = append(errs, fmt.Errorf("%s %q needs a name, a prompt and a negative prompt", list.kind, e.ID))
			}
		}
		if len(list.entries) == 0 {
			errs = append(errs, fmt.Errorf("no %s defined", list.kind))
		}
	}
	for _, ph := range []string{"{room}", "{style}"} {
		if !strings.Contains(c.PromptTemplate, ph) {
			errs = append(errs, fmt.Errorf("prompt_template lacks %s", ph))
		}
	}
	for _, ph := range []string{"{room_negative}", "{style_negative}"} {
		if !strings.Contains(c.NegativeTemplate, ph) {
			errs = append(errs, fmt.Errorf("negative_template lacks %s", ph))
		}
	}
	d := c.Defaults
	if !(d.Strength > 0 && d.Strength <= 1) || !(d.GuidanceScale >= 0 && d.GuidanceScale <= 30) ||
		!(d.ControlNetConditioningScale >= 0 && d.ControlNetConditioningScale <= 2) {
		errs = append(errs, errors.New("defaults out of range"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// RoomType returns the room type with the given id.
func (c *Catalog) RoomType(id string) (Entry, bool) { return find(c.RoomTypes, id) }

// Style returns the style with the given id.
func (c *Catalog) Style(id string) (Entry, bool) { return find(c.Styles, id) }

func find(entries []Entry, id string) (Entry, bool) {
	i := slices.IndexFunc(entries, func(e Entry) bool { return e.ID == id })
	if i < 0 {
		return Entry{}, false
	}
	return entries[i], true
}

// RoomTypeIDs returns the room type ids in catalogue order.
func (c *Catalog) RoomTypeIDs() []string { return ids(c.RoomTypes) }

// StyleIDs returns the style ids in catalogue order.
func (c *Catalog) StyleIDs() []string { return ids(c.Styles) }

func ids(entries []Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.ID
	}
	return out
}

// Prompts expands the templates for a room type and a style. The ids must
// exist; callers validate them first.
func (c *Catalog) Prompts(roomType, style string) (prompt, negative string, err error) {
	r, ok := c.RoomType(roomType)
	if !ok {
		return "", "", fmt.Errorf("unknown room type %q", roomType)
	}
	s, ok := c.Style(style)
	if !ok {
		return "", "", fmt.Errorf("unknown style %q", style)
	}
	prompt = strings.NewReplacer("{room}", r.Prompt, "{style}", s.Prompt).Replace(c.PromptTemplate)
	negative = strings.NewReplacer("{room_negative}", r.Negative, "{style_negative}", s.Negative).Replace(c.NegativeTemplate)
	return prompt, negative, nil
}
