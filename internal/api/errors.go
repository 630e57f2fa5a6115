package api

import (
	"net/http"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/httpjson"
)

// writeError answers with the error model and notes the code for the
// request's log line.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	if f := fieldsFrom(r.Context()); f != nil {
		f.code, f.err = fault.CodeOf(err), err
	}
	httpjson.WriteError(w, err)
}

func writeJSON(w http.ResponseWriter, status int, v any) { httpjson.WriteJSON(w, status, v) }

func statusOf(c fault.Code) int { return httpjson.StatusOf(c) }

const statusClientClosedRequest = httpjson.StatusClientClosedRequest
