package rollout

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/httpjson"
	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/strictjson"
)

// AdminPath is the admin resource for the rollout state.
const AdminPath = "/admin/rollout"

// maxAdminBody caps a PUT body and a settings file; a state is a few dozen
// bytes.
const maxAdminBody = 4 << 10

// update is the body of PUT /admin/rollout. Fields are pointers so that an
// absent field keeps its current value: {"enabled": false} alone is the
// kill switch.
type update struct {
	Enabled       *bool      `json:"enabled"`
	Mode          *mode.Mode `json:"mode"`
	CanaryPercent *int       `json:"canary_percent"`
}

func (u update) apply(s State) State {
	if u.Enabled != nil {
		s.Enabled = *u.Enabled
	}
	if u.Mode != nil {
		s.Mode = *u.Mode
	}
	if u.CanaryPercent != nil {
		s.CanaryPercent = *u.CanaryPercent
	}
	return s
}

// NewAdminHandler returns the admin API for router:
//
//	GET /admin/rollout   the current state, {"enabled","mode","canary_percent"}
//	PUT /admin/rollout   a change; absent fields keep their values; answers the new state
//
// Every request must carry "Authorization: Bearer <token>"; a missing or
// wrong token gets 401 with code unauthorized. An empty token turns the
// check off, which is only acceptable on a loopback address (see
// CheckAdminAddr). Errors use the service's JSON error body. A nil log
// discards the handler's own lines; the router logs every change.
func NewAdminHandler(router *Router, token string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &admin{router: router, token: []byte(token), log: log}
	mux := http.NewServeMux()
	mux.HandleFunc(AdminPath, a.serve)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fault.New(fault.RouteNotFound, "no such admin route; the only one is %s", AdminPath))
	})
	return a.authorize(mux)
}

type admin struct {
	router *Router
	token  []byte
	log    *slog.Logger
}

// authorize runs before routing, so that an unauthenticated caller learns
// nothing, not even which paths exist.
func (a *admin) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(a.token) > 0 && !a.tokenMatches(r.Header.Get("Authorization")) {
			a.log.Warn("admin request refused", slog.String("remote", r.RemoteAddr), slog.String("path", r.URL.Path))
			w.Header().Set("WWW-Authenticate", `Bearer realm="vstage-admin"`)
			writeError(w, fault.New(fault.Unauthorized, "a valid Authorization: Bearer token is required"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *admin) tokenMatches(header string) bool {
	scheme, given, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	// ConstantTimeCompare returns early only on a length mismatch, which
	// leaks the length at most; the content is compared in constant time.
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(given)), a.token) == 1
}

func (a *admin) serve(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		writeJSON(w, http.StatusOK, a.router.Get())
	case http.MethodPut:
		a.put(w, r)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		writeError(w, fault.New(fault.MethodNotAllowed, "%s is not allowed; use GET or PUT", r.Method))
	}
}

func (a *admin) put(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, fault.New(fault.UnsupportedMediaType, "the body must be application/json"))
			return
		}
	}
	var u update
	if err := strictjson.Decode(http.MaxBytesReader(w, r.Body, maxAdminBody), &u); err != nil {
		writeError(w, httpjson.BodyFault(err, ""))
		return
	}
	if u == (update{}) {
		writeError(w, fault.New(fault.InvalidInput, "the body changes nothing; send at least one of enabled, mode, canary_percent"))
		return
	}
	old, updated, err := a.router.Update(u.apply)
	if err != nil {
		writeError(w, fault.Wrap(err, fault.InvalidInput, "%s", err.Error()))
		return
	}
	a.log.Info("admin rollout update", slog.String("remote", r.RemoteAddr), slog.Any("old", old), slog.Any("new", updated))
	writeJSON(w, http.StatusOK, updated)
}

// writeJSON answers with v; admin answers are never cached.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Cache-Control", "no-store")
	httpjson.WriteJSON(w, status, v)
}

// writeError answers with the error model; the status follows the code.
func writeError(w http.ResponseWriter, e *fault.Error) {
	w.Header().Set("Cache-Control", "no-store")
	httpjson.WriteError(w, e)
}

// CheckAdminAddr refuses to serve the admin API on addr without a token
// unless addr is a loopback address. A missing host (":9091") listens on
// every interface and is not loopback; a host name other than localhost is
// not trusted to resolve to loopback.
func CheckAdminAddr(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q: %w", addr, err)
	}
	if token != "" || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("admin address %q is not loopback; set ADMIN_TOKEN or listen on 127.0.0.1", addr)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// file is the settings file's shape: every field is required, so that a
// truncated or half-written file is refused rather than read as defaults.
type file struct {
	Enabled       *bool      `json:"enabled"`
	Mode          *mode.Mode `json:"mode"`
	CanaryPercent *int       `json:"canary_percent"`
}

// LoadFile reads a State from a JSON settings file holding
// {"enabled","mode","canary_percent"}, all three required, nothing else.
// It only reads: the caller applies the result with Router.Set, typically
// on SIGHUP, and keeps the current state when either step fails.
func LoadFile(path string) (State, error) {
	f, err := os.Open(path)
	if err != nil {
		return State{}, fmt.Errorf("rollout file: %w", err)
	}
	defer f.Close()
	var in file
	if err := strictjson.Decode(io.LimitReader(f, maxAdminBody), &in); err != nil {
		return State{}, fmt.Errorf("rollout file %s: %w", path, err)
	}
	if in.Enabled == nil || in.Mode == nil || in.CanaryPercent == nil {
		return State{}, fmt.Errorf("rollout file %s: %w: enabled, mode and canary_percent are all required", path, ErrInvalid)
	}
	s := State{Enabled: *in.Enabled, Mode: *in.Mode, CanaryPercent: *in.CanaryPercent}
	if err := s.Validate(); err != nil {
		return State{}, fmt.Errorf("rollout file %s: %w", path, err)
	}
	return s, nil
}

// ReloadFile reads path with LoadFile and applies it with Set. On any error
// the state is unchanged.
func (r *Router) ReloadFile(path string) (old, updated State, err error) {
	s, err := LoadFile(path)
	if err != nil {
		cur := r.Get()
		return cur, cur, err
	}
	return r.Update(func(State) State { return s })
}

// ReloadOn re-reads path with ReloadFile each time a value arrives on sig,
// typically a channel given to signal.Notify for SIGHUP, until ctx is done
// or sig is closed. A bad file is logged and leaves the state as it was;
// the router itself logs every change it applies.
func (r *Router) ReloadOn(ctx context.Context, sig <-chan os.Signal, path string) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-sig:
			if !ok {
				return
			}
			if _, _, err := r.ReloadFile(path); err != nil {
				r.log.Error("rollout reload failed; keeping the current state", slog.String("file", path), slog.String("error", err.Error()))
			}
		}
	}
}
