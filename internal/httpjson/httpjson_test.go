package httpjson

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/vstage/vstage/internal/fault"
)

func TestWriteJSONCarriesItsLength(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteJSON(rec, http.StatusCreated, map[string]string{"a": "b"})
	if rec.Code != http.StatusCreated || rec.Header().Get("Content-Length") != strconv.Itoa(rec.Body.Len()) ||
		rec.Body.String() != "{\"a\":\"b\"}\n" {
		t.Fatalf("got %d %q length %q", rec.Code, rec.Body, rec.Header().Get("Content-Length"))
	}
}

func TestWriteJSONOfAnUnencodableValueIsInternal(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteJSON(rec, http.StatusOK, map[string]any{"c": make(chan int)})
	var body errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusInternalServerError ||
		body.Error.Code != fault.Internal || rec.Header().Get("Content-Length") != strconv.Itoa(rec.Body.Len()) {
		t.Fatalf("got %d %q (%v)", rec.Code, rec.Body, err)
	}
}
