package staging

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

// Request is one /infer call. Pointer fields are optional; nil takes the
// catalogue's default (or, for Seed, a freshly drawn seed).
type Request struct {
	ImageID       string
	OriginalKey   string
	MaskKey       string
	RoomType      string
	Style         string
	Seed          *uint32
	Strength      *float64
	GuidanceScale *float64
	// Tier orders admission (business, pro, free); empty means free. It
	// does not change the result, so it is not part of the idempotency
	// parameters.
	Tier string
	// Label burns the disclosure label into the staged image; nil takes
	// the service's default (Options.LabelDefault). It is part of the job.
	Label *bool
	// Upscale asks for the image at Options.Upscale.LongSide instead of
	// the output size; only the tiers Options.Upscale allows may ask. It
	// is part of the job.
	Upscale bool
}

// Response is the answer to a finished job. A replay returns the recorded
// Response unchanged, duration included.
type Response struct {
	StagedKey  string   `json:"staged_key"`
	Width      int      `json:"width"`
	Height     int      `json:"height"`
	ModelRev   string   `json:"model_rev"`
	Seed       uint32   `json:"seed"`
	DurationMS int64    `json:"duration_ms"`
	Warnings   []string `json:"warnings,omitempty"`
	// Backend names the backend that produced the image: mock, self or
	// managed.
	Backend string `json:"backend"`
}

// params are the request's parameters with defaults resolved, except the
// seed: two requests are the same job when their params are equal and their
// seeds do not disagree.
type params struct {
	OriginalKey   string  `json:"original_key"`
	MaskKey       string  `json:"mask_key,omitempty"`
	RoomType      string  `json:"room_type"`
	Style         string  `json:"style"`
	Strength      float64 `json:"strength"`
	GuidanceScale float64 `json:"guidance_scale"`
	// Label is left out when false, so records written before it existed
	// still match the jobs that ask for no label.
	Label bool `json:"label,omitempty"`
	// Upscale is left out when false, as Label is.
	Upscale bool `json:"upscale,omitempty"`
}

// plan is a validated request with everything derived from it.
type plan struct {
	imageID   string
	tier      admission.Tier
	params    params
	seed      *uint32
	stagedKey string
	recordKey string
}

// sameJob reports whether q asks for the job p describes: same parameters,
// and a seed that is absent from one of them or equal.
func (p plan) sameJob(q plan) bool {
	if p.params != q.params {
		return false
	}
	return p.seed == nil || q.seed == nil || *p.seed == *q.seed
}

// matches reports whether a recorded job answers p.
func (p plan) matches(r record) bool {
	return p.params == r.Params && (p.seed == nil || *p.seed == r.jobSeed())
}

var imageIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// validator checks requests against the catalogue and the key policy.
type validator struct {
	catalog   *catalog.Catalog
	prefixes  storage.Prefixes
	stagedKey func(originalKey, imageID string) string
	// label is the Label of requests that do not say.
	label bool
	// upscale says who may ask for an upscale.
	upscale config.Upscale
}

// checkUpscale refuses an upscale that policy u does not allow to tier:
// invalid_input while upscaling is off [UPSCALE_ENABLED], forbidden for a
// tier it is not for [UPSCALE_TIERS].
func checkUpscale(u config.Upscale, tier admission.Tier) error {
	if !u.Enabled {
		return fault.New(fault.InvalidInput, "upscale is not available: upscaling is disabled on this service; send \"upscale\": false or leave it out")
	}
	if !slices.Contains(u.Tiers, tier) {
		names := make([]string, len(u.Tiers))
		for i, t := range u.Tiers {
			names[i] = string(t)
		}
		return fault.New(fault.Forbidden, "upscale is not available to tier %s; it is for tiers %s", tier, strings.Join(names, ", "))
	}
	return nil
}

// plan validates r and derives its keys. Every error is a *fault.Error with
// code invalid_input or forbidden; nothing has been read or written yet.
func (v validator) plan(r Request) (plan, error) {
	if !imageIDPattern.MatchString(r.ImageID) {
		return plan{}, fault.New(fault.InvalidInput, "image_id must be 1 to 128 characters of A-Z, a-z, 0-9, _ and -")
	}
	if err := v.checkKey("original_key", r.OriginalKey); err != nil {
		return plan{}, err
	}
	if r.MaskKey != "" {
		if err := v.checkKey("mask_key", r.MaskKey); err != nil {
			return plan{}, err
		}
	}
	if _, ok := v.catalog.RoomType(r.RoomType); !ok {
		return plan{}, fault.New(fault.InvalidInput, "room_type %s is not in the catalogue; allowed: %s",
			quote(r.RoomType), strings.Join(v.catalog.RoomTypeIDs(), ", "))
	}
	if _, ok := v.catalog.Style(r.Style); !ok {
		return plan{}, fault.New(fault.InvalidInput, "style %s is not in the catalogue; allowed: %s",
			quote(r.Style), strings.Join(v.catalog.StyleIDs(), ", "))
	}
	tier, err := admission.ParseTier(r.Tier)
	if err != nil {
		return plan{}, fault.New(fault.InvalidInput, "tier must be free, pro or business, got %s", quote(r.Tier))
	}
	if r.Upscale {
		if err := checkUpscale(v.upscale, tier); err != nil {
			return plan{}, err
		}
	}
	d := v.catalog.Defaults
	p := params{
		OriginalKey: r.OriginalKey, MaskKey: r.MaskKey, RoomType: r.RoomType, Style: r.Style,
		Strength: d.Strength, GuidanceScale: d.GuidanceScale, Label: v.label, Upscale: r.Upscale,
	}
	if r.Label != nil {
		p.Label = *r.Label
	}
	if r.Strength != nil {
		if s := *r.Strength; math.IsNaN(s) || s <= 0 || s > 1 {
			return plan{}, fault.New(fault.InvalidInput, "strength must be a number in (0, 1], got %v", s)
		}
		p.Strength = *r.Strength
	}
	if r.GuidanceScale != nil {
		if g := *r.GuidanceScale; math.IsNaN(g) || g < 0 || g > 30 {
			return plan{}, fault.New(fault.InvalidInput, "guidance_scale must be a number in [0, 30], got %v", g)
		}
		p.GuidanceScale = *r.GuidanceScale
	}
	staged := v.stagedKey(r.OriginalKey, r.ImageID)
	// The longest key a job writes is its last claim's, beside the record.
	if err := storage.ValidateKey(claimKey(staged+".json", maxClaimGenerations-1)); err != nil {
		return plan{}, fault.Wrap(err, fault.InvalidInput, "the staged key derived from original_key is not a valid key (is original_key too long?)")
	}
	if !v.prefixes.Allows(staged) {
		return plan{}, fault.New(fault.Forbidden, "the staged key %s would fall outside the allowed prefixes (%s)", quote(staged), v.prefixes)
	}
	if staged == r.OriginalKey || staged == r.MaskKey {
		return plan{}, fault.New(fault.InvalidInput, "the staged key %s would overwrite an input; choose another image_id", quote(staged))
	}
	return plan{imageID: r.ImageID, tier: tier, params: p, seed: r.Seed, stagedKey: staged, recordKey: staged + ".json"}, nil
}

func (v validator) checkKey(field, key string) error {
	if key == "" {
		return fault.New(fault.InvalidInput, "%s is required", field)
	}
	if err := storage.ValidateKey(key); err != nil {
		return fault.New(fault.InvalidInput, "%s: %s", field, strings.TrimPrefix(err.Error(), storage.ErrInvalidKey.Error()+" "))
	}
	if !v.prefixes.Allows(key) {
		return fault.New(fault.Forbidden, "%s %s is outside the allowed prefixes (%s)", field, quote(key), v.prefixes)
	}
	return nil
}

// quote shows client-supplied text in a message, escaped and shortened so
// a hostile value cannot flood a log line or forge one.
func quote(s string) string {
	const limit = 80
	if len(s) > limit {
		return fmt.Sprintf("%q…", s[:limit])
	}
	return fmt.Sprintf("%q", s)
}
