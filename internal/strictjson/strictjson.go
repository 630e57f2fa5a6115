// Package strictjson decodes request bodies exactly: one JSON object whose
// member names are spelled byte for byte as the target struct's json tags,
// each at most once, with nothing after it.
//
// encoding/json alone matches member names without regard to case, with
// Unicode folding ("original_\u212aey" fills original_key), and lets the
// last of two members with the same name win. A body could then mean one
// thing to a proxy, a log or an audit that reads it one way and another to
// the service; this package refuses such bodies instead.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"
)

// The kinds of refusal; an error from Decode matches one of them with
// errors.Is, unless it is the reader's own error (such as
// *http.MaxBytesError), which is returned as it came.
var (
	ErrEmpty     = errors.New("empty body")
	ErrSyntax    = errors.New("malformed JSON")
	ErrNotObject = errors.New("not a JSON object")
	ErrTrailing  = errors.New("data after the object")
	ErrUnknown   = errors.New("unknown member")
	ErrDuplicate = errors.New("duplicate member")
	ErrType      = errors.New("member of the wrong type")
)

// maxNameInMessage bounds how much of a client's member name is echoed.
const maxNameInMessage = 64

// Error is a refusal of a body. Its message is written for the client: it
// says what was wrong and which members are allowed, and quotes at most a
// short prefix of anything the client sent.
type Error struct {
	// Name is the member at fault, when there is one.
	Name string
	msg  string
	kind error
	// cause is encoding/json's own error, kept for logs.
	cause error
}

func (e *Error) Error() string { return e.msg }

// Unwrap returns the kind of refusal and, when there is one, the decoder's
// error.
func (e *Error) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

// Decode reads one JSON object from r into v, which must be a pointer to a
// struct. Every member of the object must be one of v's fields, named
// exactly as its json tag (or its Go name without a tag), at most once, at
// every depth no member name may repeat, and nothing but white space may
// follow the object. Numbers and strings fill the fields as encoding/json
// does. A reader error, such as *http.MaxBytesError, is returned as it came.
func Decode(r io.Reader, v any) error {
	names, err := memberNames(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(r)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return readFault(err, names)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		// An unfinished token after the object is the body's fault, not
		// the reader's.
		if err != nil && !isSyntax(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return err // the reader failed (over its limit, or gone)
		}
		return &Error{msg: "the body must hold exactly one JSON object", kind: ErrTrailing}
	}
	if err := checkMembers(raw, names); err != nil {
		return err
	}
	// Every member name is now exact and unique, so encoding/json's lenient
	// matching has nothing left to be lenient about.
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return typeFault(err)
	}
	return nil
}

func isSyntax(err error) bool {
	var syntax *json.SyntaxError
	return errors.As(err, &syntax)
}

func readFault(err error, names []string) error {
	var syntax *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF):
		return &Error{msg: "the body is empty; send a JSON object with " + strings.Join(names, ", "), kind: ErrEmpty}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &Error{msg: "the body is truncated JSON", kind: ErrSyntax, cause: err}
	case errors.As(err, &syntax):
		return &Error{msg: fmt.Sprintf("the body is not valid JSON (error at byte %d)", syntax.Offset), kind: ErrSyntax, cause: err}
	}
	return err
}

func typeFault(err error) error {
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) && typ.Field != "" {
		return &Error{
			Name: typ.Field,
			msg:  fmt.Sprintf("field %.*s must be %s, got a JSON %s", maxNameInMessage, typ.Field, jsonKind(typ.Type), typ.Value),
			kind: ErrType, cause: err,
		}
	}
	return &Error{msg: "the body could not be read as the expected JSON object", kind: ErrType, cause: err}
}

// jsonKind names, for a client, what JSON fills a Go type.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "an object"
}

// checkMembers walks raw, which is valid JSON (the first decode checked
// it): the top level must be an object whose member names are all in
// names, and no object at any depth may name a member twice. It reads the
// bytes directly instead of through encoding/json's tokens, which cost
// several times the decoding itself on every request.
func checkMembers(raw []byte, names []string) error {
	w := walker{b: raw}
	w.space()
	if !w.take('{') {
		return &Error{msg: "the body must be a JSON object", kind: ErrNotObject}
	}
	return w.object(func(name string) error {
		if !slices.Contains(names, name) {
			return &Error{
				Name: name,
				msg:  fmt.Sprintf("unknown field %.*q; allowed fields (spelled exactly): %s", maxNameInMessage, name, strings.Join(names, ", ")),
				kind: ErrUnknown,
			}
		}
		return nil
	})
}

// walker reads valid JSON in b from offset i.
type walker struct {
	b []byte
	i int
}

var errInvalid = &Error{msg: "the body is not valid JSON", kind: ErrSyntax}

func (w *walker) space() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

// take consumes c, after white space, when it is next.
func (w *walker) take(c byte) bool {
	w.space()
	if w.i < len(w.b) && w.b[w.i] == c {
		w.i++
		return true
	}
	return false
}

// object reads the members of an object whose '{' was just read, up to
// and including its '}', calling check (when not nil) with each name.
func (w *walker) object(check func(string) error) error {
	if w.take('}') {
		return nil
	}
	var seen []string // objects here have a handful of members
	for {
		w.space()
		name, err := w.str()
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(name); err != nil {
				return err
			}
		}
		if slices.Contains(seen, name) {
			return &Error{
				Name: name,
				msg:  fmt.Sprintf("field %.*q appears more than once; send each field once", maxNameInMessage, name),
				kind: ErrDuplicate,
			}
		}
		seen = append(seen, name)
		if !w.take(':') {
			return errInvalid
		}
		if err := w.value(); err != nil {
			return err
		}
		switch {
		case w.take(','):
		case w.take('}'):
			return nil
		default:
			return errInvalid
		}
	}
}

// str reads the string at i and returns it decoded, as encoding/json would
// (escapes resolved, invalid UTF-8 replaced), so that "a\u005fb" and "a_b"
// are one name.
func (w *walker) str() (string, error) {
	if w.i >= len(w.b) || w.b[w.i] != '"' {
		return "", errInvalid
	}
	start, plain := w.i, true
	for w.i++; w.i < len(w.b); w.i++ {
		switch c := w.b[w.i]; {
		case c == '\\':
			plain = false
			w.i++
		case c == '"':
			w.i++
			lit := w.b[start:w.i]
			if inner := lit[1 : len(lit)-1]; plain && utf8.Valid(inner) {
				return string(inner), nil
			}
			var out string
			if err := json.Unmarshal(lit, &out); err != nil {
				return "", errInvalid
			}
			return out, nil
		}
	}
	return "", errInvalid
}

// value skips one value of any kind.
func (w *walker) value() error {
	w.space()
	if w.i >= len(w.b) {
		return errInvalid
	}
	switch w.b[w.i] {
	case '{':
		w.i++
		return w.object(nil)
	case '[':
		w.i++
		if w.take(']') {
			return nil
		}
		for {
			if err := w.value(); err != nil {
				return err
			}
			switch {
			case w.take(','):
			case w.take(']'):
				return nil
			default:
				return errInvalid
			}
		}
	case '"':
		_, err := w.str()
		return err
	}
	// A number, true, false or null runs to the next delimiter.
	for w.i < len(w.b) && !strings.ContainsRune(",}] \t\n\r", rune(w.b[w.i])) {
		w.i++
	}
	return nil
}

// memberNames lists the member names of the struct v points to, in field
// order.
func memberNames(v any) ([]string, error) {
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("strictjson: Decode needs a pointer to a struct, got %T", v)
	}
	t = t.Elem()
	var names []string
	for f := range t.Fields() {
		if f.Anonymous {
			// encoding/json would promote its fields; nothing here needs that.
			return nil, fmt.Errorf("strictjson: embedded field %s of %s is not supported", f.Name, t)
		}
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case tag == "-":
			continue
		case name == "":
			name = f.Name
		}
		names = append(names, name)
	}
	return names, nil
}
