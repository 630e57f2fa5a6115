package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/httpjson"
	"github.com/vstage/vstage/internal/staging"
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
}

const requestFields = "image_id, original_key, room_type, style, mask_key, seed, strength, guidance_scale, tier"

// decodeInfer reads one JSON object from body, strictly: no unknown fields,
// no trailing data, numbers of the right kind and range. It does not check
// values against the catalogue or the key policy; staging does.
func decodeInfer(body io.Reader) (staging.Request, error) {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	var in inferRequest
	if err := dec.Decode(&in); err != nil {
		return staging.Request{}, decodeFault(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return staging.Request{}, decodeFault(err)
		}
		return staging.Request{}, fault.New(fault.InvalidInput, "the body must hold exactly one JSON object")
	}
	req := staging.Request{
		ImageID: in.ImageID, OriginalKey: in.OriginalKey, RoomType: in.RoomType, Style: in.Style,
		Strength: in.Strength, GuidanceScale: in.GuidanceScale, Tier: in.Tier,
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

func decodeFault(err error) error {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
		mbe    *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mbe):
		return fault.Wrap(err, fault.PayloadTooLarge, "the request body is larger than %d bytes (MAX_BODY_BYTES)", mbe.Limit)
	case errors.Is(err, io.EOF):
		return fault.New(fault.InvalidInput, "the request body is empty; send a JSON object with %s", requestFields)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fault.New(fault.InvalidInput, "the request body is truncated JSON")
	case errors.As(err, &syntax):
		return fault.New(fault.InvalidInput, "the request body is not valid JSON (error at byte %d)", syntax.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fault.New(fault.InvalidInput, "the request body must be a JSON object")
		}
		return fault.New(fault.InvalidInput, "field %s must be a %s, got a JSON %s", typ.Field, kindName(typ.Type.Kind().String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no typed error for this case.
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return fault.New(fault.InvalidInput, "unknown field %.80s; allowed fields: %s", name, requestFields)
	}
	return fault.Wrap(err, fault.InvalidInput, "the request body could not be read as JSON")
}

func kindName(k string) string {
	switch k {
	case "string":
		return "string"
	case "float64", "uint32":
		return "number"
	}
	return k
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
		f.replay, f.backend, f.backendTime = out.Replay, out.Backend, out.BackendTime
	}
	if out.Replay {
		w.Header().Set("Idempotent-Replay", "true")
	}
	httpjson.WriteJSON(w, http.StatusOK, out.Response)
}
