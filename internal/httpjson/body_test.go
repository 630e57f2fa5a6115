package httpjson

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/strictjson"
)

func TestBodyFault(t *testing.T) {
	type target struct {
		A string `json:"a"`
	}
	decode := func(body string, limit int64) error {
		var v target
		return strictjson.Decode(http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(strings.NewReader(body)), limit), &v)
	}
	for name, tc := range map[string]struct {
		err  error
		code fault.Code
		msg  string
	}{
		"over the limit": {decode(`{"a":"`+strings.Repeat("x", 100)+`"}`, 16), fault.PayloadTooLarge, "larger than 16 bytes (LIMIT)"},
		"refused":        {decode(`{"A":"x"}`, 1024), fault.InvalidInput, `unknown field "A"`},
		"unreadable":     {errors.New("connection reset"), fault.InvalidInput, "could not be read"},
	} {
		f := BodyFault(tc.err, "LIMIT")
		if f.Code != tc.code || f.Retryable || !strings.Contains(f.Message, tc.msg) {
			t.Errorf("%s: %+v, want %s with %q", name, f, tc.code, tc.msg)
		}
	}
}
