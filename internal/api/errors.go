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
