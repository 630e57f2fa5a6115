package api

import (
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/httpjson"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/strictjson"
)

// inferRequest is the JSON body of POST /infer. Optional numbers are
// pointers so that an absent field takes the catalogue's default.
type inferRequest struct {
	ImageID     string  `json:"image_id"`
	OriginalKey string  `json:"original_key"`
	RoomType    string  `json:"room_type"`
	Style       string  `json:"style"`
	MaskKey     *string `json:"mask_key"`
	// Seed is raw so that a quoted number, which json.Number would take,
	// is refused.
	Seed          json.RawMessage `json:"seed"`
	Strength      *float64        `json:"strength"`
	GuidanceScale *float64        `json:"guidance_scale"`
	// Tier orders admission: business, pro or free (the default).
	Tier string `json:"tier"`
	// Label burns the disclosure label into the staged image; absent takes
	// DISCLOSURE_LABEL_DEFAULT.
	Label *bool `json:"label"`
	// Upscale asks for the image at UPSCALE_LONG_SIDE (paid tiers);
	// absent is false.
	Upscale bool `json:"upscale"`
}

// decodeInfer reads one JSON object from body, strictly (see strictjson):
// only the known fields, spelled exactly, each once, nothing after the
// object, numbers of the right kind and range. It does not check values
// against the catalogue or the key policy; staging does.
func decodeInfer(body io.Reader) (staging.Request, error) {
	var in inferRequest
	if err := strictjson.Decode(body, &in); err != nil {
		return staging.Request{}, httpjson.BodyFault(err, "MAX_BODY_BYTES")
	}
	req := staging.Request{
		ImageID: in.ImageID, OriginalKey: in.OriginalKey, RoomType: in.RoomType, Style: in.Style,
		Strength: in.Strength, GuidanceScale: in.GuidanceScale, Tier: in.Tier, Label: in.Label,
		Upscale: in.Upscale,
	}
	if in.MaskKey != nil {
		if *in.MaskKey == "" {
			return staging.Request{}, fault.New(fault.InvalidInput, "mask_key must be a key or left out, not empty")
		}
		req.MaskKey = *in.MaskKey
	}
	if len(in.Seed) > 0 && string(in.Seed) != "null" {
		v, err := strconv.ParseUint(string(in.Seed), 10, 32)
		if err != nil {
			return staging.Request{}, fault.New(fault.InvalidInput, "seed must be a whole number from 0 to 4294967295, got %.40s", in.Seed)
		}
		seed := uint32(v)
		req.Seed = &seed
	}
	return req, nil
}

// checkContentType accepts a missing Content-Type or application/json.
func checkContentType(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fault.New(fault.UnsupportedMediaType, "the request body must be application/json, got %.60q", ct)
	}
	return nil
}

func (s *Server) handleInfer(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeError(w, r, fault.New(fault.Unavailable, "the service is shutting down; retry on another replica"))
		return
	}
	if err := checkContentType(r); err != nil {
		writeError(w, r, err)
		return
	}
	req, err := decodeInfer(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	if err != nil {
		writeError(w, r, err)
		return
	}
	f := fieldsFrom(r.Context())
	if f != nil {
		f.imageID = req.ImageID
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.RequestTimeout)
	defer cancel()
	out, err := s.stager.Stage(ctx, req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if f != nil {
		f.replay, f.backend, f.backendTime, f.engineTime = out.Replay, out.Backend, out.BackendTime, out.EngineTime
	}
	if out.Replay {
		w.Header().Set("Idempotent-Replay", "true")
	}
	httpjson.WriteJSON(w, http.StatusOK, out.Response)
}
