package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/vstage/vstage/internal/fault"
)

// statusClientClosedRequest is the de facto status for a client that went
// away before the answer; no client reads it, but logs and metrics do.
const statusClientClosedRequest = 499

// statusOf maps an error code to its HTTP status.
func statusOf(c fault.Code) int {
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
	case fault.IdempotencyConflict:
		return http.StatusConflict
	case fault.PayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	case fault.UnsupportedMediaType:
		return http.StatusUnsupportedMediaType
	case fault.ImageTooLarge:
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
		return statusClientClosedRequest
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

// writeError answers with the error model's JSON body. Only the message of a
// *fault.Error reaches the client; any other error becomes "internal error".
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := fault.From(err)
	if f := fieldsFrom(r.Context()); f != nil {
		f.code, f.err = e.Code, err
	}
	switch {
	case e.RetryAfter > 0:
		// Whole seconds, rounded up: a client that waits less than
		// estimated would only be refused again.
		w.Header().Set("Retry-After", strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10))
	case e.Code == fault.Unavailable || e.Code == fault.Overloaded || e.Code == fault.OOM:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	writeJSON(w, statusOf(e.Code), errorBody{Error: errorDetail{Code: e.Code, Message: e.Message, Retryable: e.Retryable}})
}

// retryAfterSeconds is the hint sent with retryable refusals that carry no
// estimate of their own.
const retryAfterSeconds = 1

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	// The status is sent; an encoding or write error can only mean the
	// client is gone, and the access log already has the status.
	_ = json.NewEncoder(w).Encode(v)
}
