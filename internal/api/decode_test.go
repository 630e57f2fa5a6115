package api

import (
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vstage/vstage/internal/fault"
)

func TestDecodeInferAcceptsAFullRequest(t *testing.T) {
	req, err := decodeInfer(strings.NewReader(`{"image_id":"a-1","original_key":"l/1/o.jpg","room_type":"bedroom",
		"style":"modern","seed":4294967295,"strength":0.5,"guidance_scale":0,"mask_key":"l/1/m.png","label":true,"upscale":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if req.ImageID != "a-1" || req.OriginalKey != "l/1/o.jpg" || req.MaskKey != "l/1/m.png" || req.RoomType != "bedroom" || req.Style != "modern" {
		t.Errorf("strings not carried: %+v", req)
	}
	if req.Seed == nil || *req.Seed != math.MaxUint32 || req.Strength == nil || *req.Strength != 0.5 || req.GuidanceScale == nil || *req.GuidanceScale != 0 {
		t.Errorf("numbers not carried: %+v", req)
	}
	if req.Label == nil || !*req.Label || !req.Upscale {
		t.Errorf("label or upscale not carried: %+v", req)
	}
}

func TestDecodeInferOptionalFieldsStayAbsent(t *testing.T) {
	req, err := decodeInfer(strings.NewReader(`{"image_id":"a","original_key":"k","room_type":"r","style":"s","seed":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if req.Seed != nil || req.Strength != nil || req.GuidanceScale != nil || req.MaskKey != "" || req.Label != nil {
		t.Errorf("absent fields got values: %+v", req)
	}
}

func TestDecodeInferRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		body string
		code fault.Code
		msg  string
	}{
		"empty":          {"", fault.InvalidInput, "empty"},
		"not json":       {"image_id=a", fault.InvalidInput, "not valid JSON"},
		"truncated":      {`{"image_id":"a"`, fault.InvalidInput, "truncated"},
		"array":          {`[1,2]`, fault.InvalidInput, "JSON object"},
		"string":         {`"x"`, fault.InvalidInput, "JSON object"},
		"two objects":    {`{"image_id":"a"}{"image_id":"b"}`, fault.InvalidInput, "exactly one"},
		"trailing junk":  {`{"image_id":"a"} x`, fault.InvalidInput, "exactly one"},
		"unknown field":  {`{"image_id":"a","staged_key":"x"}`, fault.InvalidInput, `unknown field "staged_key"`},
		"id number":      {`{"image_id":7}`, fault.InvalidInput, "image_id must be a string"},
		"seed string":    {`{"seed":"7"}`, fault.InvalidInput, "seed"},
		"seed negative":  {`{"seed":-1}`, fault.InvalidInput, "seed must be a whole number"},
		"seed too big":   {`{"seed":4294967296}`, fault.InvalidInput, "seed must be a whole number"},
		"seed fraction":  {`{"seed":1.5}`, fault.InvalidInput, "seed must be a whole number"},
		"seed exponent":  {`{"seed":1e3}`, fault.InvalidInput, "seed must be a whole number"},
		"strength str":   {`{"strength":"0.5"}`, fault.InvalidInput, "strength must be a number"},
		"label string":   {`{"label":"yes"}`, fault.InvalidInput, "label must be"},
		"label number":   {`{"label":1}`, fault.InvalidInput, "label must be"},
		"upscale string": {`{"upscale":"true"}`, fault.InvalidInput, "upscale must be"},
		"strength huge":  {`{"strength":1e400}`, fault.InvalidInput, "strength"},
		"empty mask key": {`{"mask_key":""}`, fault.InvalidInput, "mask_key"},
		"mask key num":   {`{"mask_key":3}`, fault.InvalidInput, "mask_key must be a string"},
		"upper case":     {`{"ORIGINAL_KEY":"b.jpg"}`, fault.InvalidInput, `unknown field "ORIGINAL_KEY"`},
		"folded kelvin":  {`{"original_\u212aey":"b.jpg"}`, fault.InvalidInput, "unknown field"},
		"case duplicate": {`{"original_key":"a.jpg","ORIGINAL_KEY":"b.jpg"}`, fault.InvalidInput, `"ORIGINAL_KEY"`},
		"duplicate":      {`{"original_key":"a.jpg","original_key":"b.jpg"}`, fault.InvalidInput, `"original_key" appears more than once`},
		"duplicate seed": {`{"seed":1,"seed":2}`, fault.InvalidInput, `"seed" appears more than once`},
		"null body":      {`null`, fault.InvalidInput, "JSON object"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeInfer(strings.NewReader(tc.body))
			var fe *fault.Error
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a fault", err)
			}
			if fe.Code != tc.code || !strings.Contains(fe.Message, tc.msg) {
				t.Errorf("got %s %q, want %s containing %q", fe.Code, fe.Message, tc.code, tc.msg)
			}
		})
	}
}

func TestDecodeInferCapsTheBody(t *testing.T) {
	body := `{"image_id":"` + strings.Repeat("a", 100) + `"}`
	rec := httptest.NewRecorder()
	_, err := decodeInfer(http.MaxBytesReader(rec, io.NopCloser(strings.NewReader(body)), 50))
	if got := fault.CodeOf(err); got != fault.PayloadTooLarge {
		t.Fatalf("code = %s (%v), want payload_too_large", got, err)
	}
}

func TestCheckContentType(t *testing.T) {
	for ct, ok := range map[string]bool{
		"": true, "application/json": true, "application/json; charset=utf-8": true,
		"text/plain": false, "application/x-www-form-urlencoded": false, "multipart/form-data; boundary=x": false, ";;": false,
	} {
		r := httptest.NewRequest(http.MethodPost, "/infer", nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		err := checkContentType(r)
		if (err == nil) != ok {
			t.Errorf("%q: err = %v, want ok=%v", ct, err, ok)
		}
		if err != nil && fault.CodeOf(err) != fault.UnsupportedMediaType {
			t.Errorf("%q: code = %s", ct, fault.CodeOf(err))
		}
	}
}

// FuzzDecodeInfer checks that any body decodes to a request or to a client
// error with a printable message, and never panics.
func FuzzDecodeInfer(f *testing.F) {
	for _, s := range []string{
		`{"image_id":"a","original_key":"k/o.jpg","room_type":"bedroom","style":"modern"}`,
		`{"image_id":"a","seed":12,"strength":0.3,"guidance_scale":7.5,"mask_key":"k/m.png"}`,
		`{"seed":-1}`, `{"seed":1e99}`, `[]`, `{`, ``, `null`, `{"image_id":"\u0000"}`, `{"x":1}`,
		`{"original_key":"a.jpg","ORIGINAL_KEY":"b.jpg"}`, `{"original_\u212aey":"b.jpg"}`, `{"tier":"pro","tier":"free"}`,
		`{"Image_ID":"a"}`, `{"image_id":"a","image\u005fid":"b"}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeInfer(strings.NewReader(body))
		if err != nil {
			fe := fault.From(err)
			if len(fe.Message) > 600 {
				t.Fatalf("message of %d bytes for %q", len(fe.Message), body)
			}
			if fe.Code != fault.InvalidInput {
				t.Fatalf("code = %s for %q", fe.Code, body)
			}
			if !utf8.ValidString(fe.Message) || fe.Message == "" {
				t.Fatalf("bad message %q", fe.Message)
			}
			return
		}
		if req.Strength != nil && (math.IsNaN(*req.Strength) || math.IsInf(*req.Strength, 0)) {
			t.Fatalf("non-finite strength decoded from %q", body)
		}
	})
}
