package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

type target struct {
	OriginalKey string   `json:"original_key"`
	Seed        *uint32  `json:"seed"`
	Strength    *float64 `json:"strength,omitempty"`
	Tags        []string `json:"tags"`
	Skipped     string   `json:"-"`
	Plain       bool
	hidden      int
}

func TestDecodeAcceptsExactMembers(t *testing.T) {
	var v target
	err := Decode(strings.NewReader(` {"original_key":"a.jpg","seed":7,"strength":0.5,"tags":["x","x"],"Plain":true} `), &v)
	if err != nil {
		t.Fatal(err)
	}
	if v.OriginalKey != "a.jpg" || v.Seed == nil || *v.Seed != 7 || v.Strength == nil || *v.Strength != 0.5 || len(v.Tags) != 2 || !v.Plain {
		t.Errorf("decoded %+v", v)
	}
	_ = v.hidden
}

func TestDecodeRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		body string
		kind error
		msg  string
	}{
		"empty":                 {"", ErrEmpty, "original_key, seed, strength, tags, Plain"},
		"blank":                 {" \n", ErrEmpty, "empty"},
		"not json":              {"original_key=a", ErrSyntax, "not valid JSON"},
		"truncated":             {`{"original_key":"a"`, ErrSyntax, "truncated"},
		"array":                 {`[1]`, ErrNotObject, "JSON object"},
		"null":                  {`null`, ErrNotObject, "JSON object"},
		"string":                {`"x"`, ErrNotObject, "JSON object"},
		"two objects":           {`{}{}`, ErrTrailing, "exactly one"},
		"trailing junk":         {`{} x`, ErrTrailing, "exactly one"},
		"trailing bracket":      {`{}]`, ErrTrailing, "exactly one"},
		"unknown":               {`{"staged_key":"x"}`, ErrUnknown, `unknown field "staged_key"`},
		"upper case":            {`{"ORIGINAL_KEY":"b.jpg"}`, ErrUnknown, `"ORIGINAL_KEY"`},
		"mixed case":            {`{"Original_Key":"b.jpg"}`, ErrUnknown, `"Original_Key"`},
		"kelvin sign":           {`{"original_\u212aey":"b.jpg"}`, ErrUnknown, "unknown field"},
		"long s":                {`{"\u017feed":1}`, ErrUnknown, "unknown field"},
		"tag name, Go case":     {`{"plain":true}`, ErrUnknown, `"plain"`},
		"skipped field":         {`{"Skipped":"x"}`, ErrUnknown, `"Skipped"`},
		"unexported field":      {`{"hidden":1}`, ErrUnknown, `"hidden"`},
		"duplicate":             {`{"original_key":"a.jpg","original_key":"b.jpg"}`, ErrDuplicate, `"original_key" appears more than once`},
		"duplicate, escaped":    {`{"original_key":"a.jpg","original\u005fkey":"b.jpg"}`, ErrDuplicate, "more than once"},
		"case variant of a key": {`{"original_key":"a.jpg","ORIGINAL_KEY":"b.jpg"}`, ErrUnknown, `"ORIGINAL_KEY"`},
		"nested duplicate":      {`{"tags":[{"a":1,"a":2}]}`, ErrDuplicate, `"a"`},
		"wrong type":            {`{"seed":"7"}`, ErrType, "field seed must be a whole number, got a JSON string"},
		"negative":              {`{"seed":-1}`, ErrType, "seed"},
		"huge number":           {`{"strength":1e400}`, ErrType, "strength"},
		"array for string":      {`{"original_key":[]}`, ErrType, "must be a string"},
	} {
		t.Run(name, func(t *testing.T) {
			var v target
			err := Decode(strings.NewReader(tc.body), &v)
			var se *Error
			if !errors.As(err, &se) || !errors.Is(err, tc.kind) {
				t.Fatalf("err = %v, want a *Error of kind %v", err, tc.kind)
			}
			if !strings.Contains(se.Error(), tc.msg) {
				t.Errorf("message %q does not contain %q", se.Error(), tc.msg)
			}
			if v.OriginalKey != "" && tc.kind != ErrType {
				t.Errorf("a refused body filled the target: %+v", v)
			}
		})
	}
}

func TestDecodeKeepsTheReadersError(t *testing.T) {
	body := `{"original_key":"` + strings.Repeat("a", 100) + `"}`
	for _, b := range []string{body, `{}` + strings.Repeat(" ", 100)} {
		var v target
		r := http.MaxBytesReader(httptest.NewRecorder(), readCloser{strings.NewReader(b)}, 50)
		var mbe *http.MaxBytesError
		if err := Decode(r, &v); !errors.As(err, &mbe) {
			t.Errorf("%.20s…: err = %v, want *http.MaxBytesError", b, err)
		}
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

func TestDecodeNeedsAStructPointer(t *testing.T) {
	var m map[string]any
	if err := Decode(strings.NewReader(`{}`), &m); err == nil {
		t.Error("a map target was accepted")
	}
	type embedded struct{ target }
	if err := Decode(strings.NewReader(`{}`), &embedded{}); err == nil {
		t.Error("an embedded field was accepted")
	}
}

func TestLongNamesAreNotEchoedWhole(t *testing.T) {
	name := strings.Repeat("n", 10000)
	for _, body := range []string{`{"` + name + `":1}`, `{"tags":[{"` + name + `":1,"` + name + `":2}]}`} {
		err := Decode(strings.NewReader(body), &target{})
		if err == nil || len(err.Error()) > 300 {
			t.Errorf("message of %d bytes: %.100q", len(err.Error()), err)
		}
	}
}

// FuzzDecode checks that any body either decodes into a target whose every
// member was spelled exactly once, or is refused with a short, printable
// message, and never panics.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"original_key":"a","seed":1}`, `{"original_key":"a","ORIGINAL_KEY":"b"}`, `{"original_\u212aey":"b"}`,
		`{"seed":1,"seed":2}`, `{"tags":[{"a":{"b":1,"b":2}}]}`, `[]`, `{`, ``, `null`, `{}{}`, `{"Plain":true}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var v target
		err := Decode(strings.NewReader(body), &v)
		if err == nil {
			return
		}
		var se *Error
		if !errors.As(err, &se) {
			t.Fatalf("err %v for %q is not a *Error", err, body)
		}
		if msg := se.Error(); msg == "" || !utf8.ValidString(msg) || len(msg) > 400 {
			t.Fatalf("bad message %q", msg)
		}
	})
}

// FuzzMembersMatchTokens checks the byte walker against a walk of
// encoding/json's own tokens over the same valid JSON: the same verdict,
// for the same member.
func FuzzMembersMatchTokens(f *testing.F) {
	for _, s := range []string{
		`{"original_key":"a","seed":1}`, `{"original_key":"a","ORIGINAL_KEY":"b"}`, `{"original_\u212aey":"b"}`,
		`{"seed":1,"seed":2}`, `{"tags":[{"a":{"b":1,"b":2}}]}`, `{"tags":[[],{},"x\"y",-1.5e3,true,null]}`,
		`{"original_key":"a","original\u005fkey":"b"}`, "{\"tags\":[\"\xff\"],\"\xfe\":1}", `{ "Plain" : true , "seed" : 3 }`,
	} {
		f.Add(s)
	}
	names := []string{"original_key", "seed", "strength", "tags", "Plain"}
	f.Fuzz(func(t *testing.T, body string) {
		raw := []byte(body)
		if !json.Valid(raw) {
			return
		}
		got, want := checkMembers(raw, names), tokenMembers(t, raw, names)
		var g, w *Error
		if errors.As(got, &g) != errors.As(want, &w) || (g != nil && (g.kind != w.kind || g.Name != w.Name)) {
			t.Fatalf("%q: walker %v, tokens %v", body, got, want)
		}
	})
}

// tokenMembers is the reference: the same rules over encoding/json's tokens.
func tokenMembers(t *testing.T, raw []byte, names []string) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return &Error{kind: ErrNotObject}
	}
	var object func(top bool) error
	var value func() error
	object = func(top bool) error {
		seen := map[string]bool{}
		for dec.More() {
			tok, _ := dec.Token()
			name := tok.(string)
			if top && !slices.Contains(names, name) {
				return &Error{Name: name, kind: ErrUnknown}
			}
			if seen[name] {
				return &Error{Name: name, kind: ErrDuplicate}
			}
			seen[name] = true
			if err := value(); err != nil {
				return err
			}
		}
		_, _ = dec.Token()
		return nil
	}
	value = func() error {
		tok, _ := dec.Token()
		switch tok {
		case json.Delim('{'):
			return object(false)
		case json.Delim('['):
			for dec.More() {
				if err := value(); err != nil {
					return err
				}
			}
			_, _ = dec.Token()
		}
		return nil
	}
	return object(true)
}
