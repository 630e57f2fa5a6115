// Package httpjson writes JSON answers and the error model's body, so that
// every listener of the sidecar (the API, the admin API) answers errors the
// same way: {"error":{"code","message","retryable"}} with the status that
// belongs to the code.
package httpjson

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/vstage/vstage/internal/fault"
)

// StatusClientClosedRequest is the de facto status for a client that went
// away before the answer; no client reads it, but logs and metrics do.
const StatusClientClosedRequest = 499

// StatusOf maps an error code to its HTTP status.
func StatusOf(c fault.Code) int {
	switch c {
	case fault.InvalidInput:
		return http.StatusBadRequest
	case fault.Unauthorized:
		return http.StatusUnauthorized
	case fault.Forbidden:
		return http.StatusForbidden
	case fault.NotFound, fault.RouteNotFound:
		return http.StatusNotFound
	case fault.MethodNotAllowed:
		return http.StatusMethodNotAllowed
	case fault.IdempotencyConflict, fault.InProgress:
		return http.StatusConflict
	case fault.PayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	case fault.HeaderTooLarge:
		return http.StatusRequestHeaderFieldsTooLarge
	case fault.UnsupportedMediaType:
		return http.StatusUnsupportedMediaType
	case fault.ImageTooLarge, fault.ContentRejected:
		return http.StatusUnprocessableEntity
	case fault.Overloaded:
		return http.StatusTooManyRequests
	case fault.Unavailable, fault.OOM:
		return http.StatusServiceUnavailable
	case fault.Timeout:
		return http.StatusGatewayTimeout
	case fault.ProviderError:
		return http.StatusBadGateway
	case fault.Canceled:
		return StatusClientClosedRequest
	}
	return http.StatusInternalServerError
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code      fault.Code `json:"code"`
	Message   string     `json:"message"`
	Retryable bool       `json:"retryable"`
}

// defaultRetryAfter is the hint sent with retryable refusals that carry no
// estimate of their own.
const defaultRetryAfter = time.Second

// WriteError answers with the error model's body and the code's status.
// Only the message of a *fault.Error reaches the client; any other error
// becomes "internal error". Refusals that may succeed later carry
// Retry-After.
func WriteError(w http.ResponseWriter, err error) {
	e := fault.From(err)
	wait := e.RetryAfter
	if wait <= 0 && (e.Code == fault.Unavailable || e.Code == fault.Overloaded || e.Code == fault.OOM) {
		wait = defaultRetryAfter
	}
	if wait > 0 {
		// Whole seconds, rounded up: a client that waits less than
		// estimated would only be refused again.
		w.Header().Set("Retry-After", strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10))
	}
	WriteJSON(w, StatusOf(e.Code), errorBody{Error: errorDetail{Code: e.Code, Message: e.Message, Retryable: e.Retryable}})
}

// WriteJSON answers with v as JSON. The answer carries its length, so that
// a middleware may flush it to the client before its own bookkeeping.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		// Only a programming error gets here: every answer is a plain struct.
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"internal error","retryable":false}}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	// The status is sent; a write error can only mean the client is gone,
	// and the access log already has the status.
	_, _ = w.Write(buf.Bytes())
}
