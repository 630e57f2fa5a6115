// Package rollout holds the live routing state of the service: the kill
// switch, the real backend's mode and the canary share, and the Router that
// turns them into a backend name for each job.
//
// The state can change at run time (an admin request, a reloaded settings
// file) without a restart. A change never touches a job already routed: the
// Router is read once per job, so jobs on a backend finish there and jobs
// routed afterwards follow the new state.
package rollout

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vstage/vstage/internal/mode"
)

// Buckets is the number of hash buckets image ids fall into; a canary
// percentage p sends the buckets below p*Buckets/100 to the real backend.
const Buckets = 10000

// ErrInvalid is wrapped by every validation error of a State.
var ErrInvalid = errors.New("invalid rollout state")

// ErrUnavailable is wrapped by the error of Set when the mode names a backend
// the service was not started with.
var ErrUnavailable = errors.New("backend not available")

// State is the routing state. Enabled false is the kill switch: every job
// goes to mock, whatever Mode and CanaryPercent say, so turning it back on
// restores the previous split exactly.
type State struct {
	Enabled bool      `json:"enabled"`
	Mode    mode.Mode `json:"mode"`
	// CanaryPercent is the share of image ids, from 0 to 100, that go to
	// Mode; the others go to mock.
	CanaryPercent int `json:"canary_percent"`
}

// Validate reports whether s is well formed: a known mode and a percentage
// from 0 to 100. It does not know which backends are configured; Router.Set
// checks that.
func (s State) Validate() error {
	if !s.Mode.Valid() {
		return fmt.Errorf("%w: mode must be %s, got %.40q", ErrInvalid, mode.Choices(), s.Mode)
	}
	if s.CanaryPercent < 0 || s.CanaryPercent > 100 {
		return fmt.Errorf("%w: canary_percent must be from 0 to 100, got %d", ErrInvalid, s.CanaryPercent)
	}
	return nil
}

// LogValue lets a State be logged as a group of its fields.
func (s State) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("enabled", s.Enabled),
		slog.String("mode", string(s.Mode)),
		slog.Int("canary_percent", s.CanaryPercent),
	)
}

// Bucket returns the hash bucket of an image id, in [0, Buckets). It is a
// pure function of the id (FNV-1a, 64 bits), so the same id lands in the
// same bucket in every process and after every restart.
func Bucket(imageID string) int {
	h := fnv.New64a()
	h.Write([]byte(imageID)) // a hash.Hash never fails to write
	return int(h.Sum64() % Buckets)
}

// Router routes jobs by the current State. It is safe for concurrent use;
// Route never blocks, even while Set runs.
type Router struct {
	state     atomic.Pointer[State]
	available []mode.Mode
	log       *slog.Logger
	// mu serialises changes, so that the old value each change logs is the
	// one it replaced and a read-modify-write loses no concurrent update.
	mu sync.Mutex
}

// Option configures a Router.
type Option func(*Router)

// WithAvailable lists the backends the service was started with. Mock is
// always available. Without this option only mock is, so a Router can never
// route to a backend nobody built.
func WithAvailable(modes ...mode.Mode) Option {
	return func(r *Router) { r.available = append(r.available, modes...) }
}

// WithLogger sets where changes are logged; the default discards them.
func WithLogger(l *slog.Logger) Option {
	return func(r *Router) {
		if l != nil {
			r.log = l
		}
	}
}

// NewRouter returns a Router starting at initial, which must be valid and
// name an available mode.
func NewRouter(initial State, opts ...Option) (*Router, error) {
	r := &Router{available: []mode.Mode{mode.Mock}, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(r)
	}
	if err := r.check(initial); err != nil {
		return nil, err
	}
	r.state.Store(&initial)
	return r, nil
}

// Available returns the backends the Router may route to.
func (r *Router) Available() []mode.Mode { return slices.Clone(r.available) }

// Get returns the current state.
func (r *Router) Get() State { return *r.state.Load() }

// Route returns the backend for the job with this image id: mock when the
// kill switch is off, when the mode is mock, or when the id's bucket is
// outside the canary share; the mode otherwise.
func (r *Router) Route(imageID string) mode.Mode {
	return r.state.Load().route(imageID)
}

func (s *State) route(imageID string) mode.Mode {
	if !s.Enabled || s.Mode == mode.Mock || s.CanaryPercent <= 0 {
		return mode.Mock
	}
	if s.CanaryPercent >= 100 || Bucket(imageID) < s.CanaryPercent*(Buckets/100) {
		return s.Mode
	}
	return mode.Mock
}

// Set replaces the state and returns the one it replaced. An invalid state,
// or one naming a backend that is not available, is refused and the
// current state stays. Every accepted change is logged with the old and new
// values.
func (r *Router) Set(s State) (old State, err error) {
	old, _, err = r.Update(func(State) State { return s })
	return old, err
}

// Update applies fn to the current state and stores the result, as one step
// with respect to other changes, so that two partial updates made at the
// same time both take effect. It returns the old and new states; on error
// the state is unchanged and new equals old.
func (r *Router) Update(fn func(State) State) (old, updated State, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old = *r.state.Load()
	updated = fn(old)
	if err := r.check(updated); err != nil {
		r.log.Warn("rollout change refused", slog.Any("current", old), slog.Any("refused", updated), slog.String("error", err.Error()))
		return old, old, err
	}
	r.state.Store(&updated)
	r.log.Info("rollout changed", slog.Any("old", old), slog.Any("new", updated))
	return old, updated, nil
}

func (r *Router) check(s State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if !slices.Contains(r.available, s.Mode) {
		return fmt.Errorf("%w: mode %s is not configured on this instance; available: %v", ErrUnavailable, s.Mode, r.available)
	}
	return nil
}
