// Package fault is the service's error model: every failure a client can see
// carries a stable Code, a message that says what was wrong and what is
// allowed, and whether retrying the same request may succeed.
//
// The package knows nothing about HTTP; package httpjson maps codes to status
// codes and writes the error body for every listener, so the use case and
// the backends can produce coded errors without depending on the transport.
package fault

import (
	"errors"
	"fmt"
	"time"
)

// Code is a stable, machine-readable error code. Clients switch on it; it
// never changes meaning once published.
type Code string

// The codes of the error model.
const (
	InvalidInput        Code = "invalid_input"
	Forbidden           Code = "forbidden"
	NotFound            Code = "not_found"
	IdempotencyConflict Code = "idempotency_conflict"
	// InProgress means another replica is running the same job; its
	// result can be had by retrying shortly.
	InProgress           Code = "in_progress"
	PayloadTooLarge      Code = "payload_too_large"
	UnsupportedMediaType Code = "unsupported_media_type"
	ImageTooLarge        Code = "image_too_large"
	// ContentRejected means the content policy (CONTENT_POLICY=reject)
	// refused the photo: it shows people. The same photo is refused again.
	ContentRejected  Code = "content_rejected"
	Overloaded       Code = "overloaded"
	Unavailable      Code = "unavailable"
	OOM              Code = "oom"
	Timeout          Code = "timeout"
	ProviderError    Code = "provider_error"
	Internal         Code = "internal"
	MethodNotAllowed Code = "method_not_allowed"
	// Canceled means the client went away; no one reads the answer, but
	// logs and metrics count it.
	Canceled      Code = "canceled"
	RouteNotFound Code = "route_not_found"
	// Unauthorized means a protected endpoint, such as the admin listener,
	// was called without the right bearer token.
	Unauthorized Code = "unauthorized"
	// HeaderTooLarge means the request's header was over the listener's
	// limit; the request was not read.
	HeaderTooLarge Code = "header_too_large"
)

// Error is a failure with a code. Message is safe to show to a client; Err,
// when set, is the underlying cause for logs and errors.Is, and is never sent.
type Error struct {
	Code      Code
	Message   string
	Retryable bool
	// RetryAfter, when positive, is how long the client should wait before
	// retrying; package httpjson sends it as a Retry-After header.
	RetryAfter time.Duration
	Err        error
}

// Error returns the message, followed by the cause when there is one.
func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns an Error with the given code and message. Retryable is set
// from the code's usual meaning (true for overloaded, unavailable, oom,
// timeout and provider_error); a caller that knows better sets the field
// on the result.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Retryable: retryableByDefault(code)}
}

// Wrap is New with a cause kept for logs and errors.Is.
func Wrap(err error, code Code, format string, args ...any) *Error {
	e := New(code, format, args...)
	e.Err = err
	return e
}

// From returns the *Error in err's chain, or an Internal error with a
// generic message when there is none, so that no unclassified error text
// ever reaches a client.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: Internal, Message: "internal error", Err: err}
}

// CodeOf returns the code of the *Error in err's chain, or Internal. A nil
// error has no code and yields the empty string.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	return From(err).Code
}

func retryableByDefault(c Code) bool {
	switch c {
	case Overloaded, Unavailable, OOM, Timeout, ProviderError, InProgress:
		return true
	}
	return false
}
