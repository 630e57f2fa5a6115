package httpjson

import (
	"errors"
	"net/http"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/strictjson"
)

// BodyFault turns an error from strictjson.Decode over an
// http.MaxBytesReader into the error model, the same way for every
// listener: 413 for a body over the limit (limitName, when set, names the
// setting that holds it), 400 with the decoder's own message for a body
// it refused, and 400 for a body that could not be read at all.
func BodyFault(err error, limitName string) *fault.Error {
	var (
		mbe    *http.MaxBytesError
		strict *strictjson.Error
	)
	switch {
	case errors.As(err, &mbe):
		if limitName != "" {
			return fault.Wrap(err, fault.PayloadTooLarge, "the request body is larger than %d bytes (%s)", mbe.Limit, limitName)
		}
		return fault.Wrap(err, fault.PayloadTooLarge, "the request body is larger than %d bytes", mbe.Limit)
	case errors.As(err, &strict):
		return fault.Wrap(err, fault.InvalidInput, "%s", strict.Error())
	}
	return fault.Wrap(err, fault.InvalidInput, "the request body could not be read")
}
