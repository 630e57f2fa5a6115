package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/mode"
)

func newRouter(t *testing.T, s State, opts ...Option) *Router {
	t.Helper()
	r, err := NewRouter(s, opts...)
	if err != nil {
		t.Fatalf("NewRouter(%+v): %v", s, err)
	}
	return r
}

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("img-%06d", i)
	}
	return out
}

func TestCanaryShareAndStability(t *testing.T) {
	all := ids(10000)
	for _, p := range []int{0, 1, 5, 10, 25, 50, 90, 100} {
		r := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: p}, WithAvailable(mode.Self))
		self := 0
		for _, id := range all {
			if r.Route(id) == mode.Self {
				self++
			}
		}
		got := float64(self) / float64(len(all)) * 100
		if got < float64(p)-2 || got > float64(p)+2 {
			t.Errorf("canary %d%%: %.2f%% of ids went to self, want within ±2 points", p, got)
		}
	}
	// A wider canary keeps every id the narrower one sent to the real
	// backend, so raising the share never moves an image back to mock.
	narrow := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 10}, WithAvailable(mode.Self))
	wide := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 30}, WithAvailable(mode.Self))
	for _, id := range all {
		first := narrow.Route(id)
		if again := narrow.Route(id); again != first {
			t.Fatalf("id %s routed to %s then %s", id, first, again)
		}
		if first == mode.Self && wide.Route(id) != mode.Self {
			t.Fatalf("id %s is in the 10%% canary but not in the 30%% one", id)
		}
	}
}

func TestBucketIsStable(t *testing.T) {
	// Fixed values: a change of hash would reshuffle every canary in
	// production, so it must be a deliberate, visible change.
	for id, want := range map[string]int{"a": 1996, "img-000001": 208} {
		if got := Bucket(id); got != want {
			t.Errorf("Bucket(%q) = %d, want %d (FNV-1a 64 modulo %d)", id, got, want, Buckets)
		}
	}
}

func TestKillSwitchAndMockMode(t *testing.T) {
	r := newRouter(t, State{Enabled: false, Mode: mode.Managed, CanaryPercent: 100}, WithAvailable(mode.Managed))
	for _, id := range ids(200) {
		if got := r.Route(id); got != mode.Mock {
			t.Fatalf("kill switch off: %s routed to %s", id, got)
		}
	}
	if _, err := r.Set(State{Enabled: true, Mode: mode.Mock, CanaryPercent: 100}); err != nil {
		t.Fatal(err)
	}
	if got := r.Route("x"); got != mode.Mock {
		t.Fatalf("mode mock routed to %s", got)
	}
	if _, err := r.Set(State{Enabled: true, Mode: mode.Managed, CanaryPercent: 100}); err != nil {
		t.Fatal(err)
	}
	if got := r.Route("x"); got != mode.Managed {
		t.Fatalf("enabled at 100%% routed to %s", got)
	}
}

func TestSetRefusesInvalidAndUnavailable(t *testing.T) {
	start := State{Enabled: true, Mode: mode.Self, CanaryPercent: 50}
	r := newRouter(t, start, WithAvailable(mode.Self))
	for _, tc := range []struct {
		s    State
		want error
	}{
		{State{Enabled: true, Mode: "gpu", CanaryPercent: 10}, ErrInvalid},
		{State{Enabled: true, Mode: mode.Self, CanaryPercent: 101}, ErrInvalid},
		{State{Enabled: true, Mode: mode.Self, CanaryPercent: -1}, ErrInvalid},
		{State{Enabled: true, Mode: mode.Managed, CanaryPercent: 10}, ErrUnavailable},
	} {
		if _, err := r.Set(tc.s); !errors.Is(err, tc.want) {
			t.Errorf("Set(%+v) = %v, want %v", tc.s, err, tc.want)
		}
		if got := r.Get(); got != start {
			t.Fatalf("state changed to %+v after a refused Set", got)
		}
	}
	if _, err := NewRouter(State{Enabled: true, Mode: mode.Managed}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("NewRouter with an unconfigured mode: %v, want ErrUnavailable", err)
	}
}

func TestSetLogsOldAndNew(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	r := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 5}, WithAvailable(mode.Self), WithLogger(log))
	old, err := r.Set(State{Enabled: false, Mode: mode.Self, CanaryPercent: 20})
	if err != nil {
		t.Fatal(err)
	}
	if old.CanaryPercent != 5 || !old.Enabled {
		t.Fatalf("Set returned old state %+v", old)
	}
	var line struct {
		Msg      string `json:"msg"`
		Old, New State
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log line %q: %v", buf.String(), err)
	}
	if line.Msg != "rollout changed" || line.Old != old || line.New != r.Get() {
		t.Fatalf("log line %s does not carry old and new values", buf.String())
	}
}

// TestFlipUnderLoad routes from many goroutines while the kill switch flips:
// every job gets a valid backend, and once the flips end with the switch
// back on, every id is where the canary puts it.
func TestFlipUnderLoad(t *testing.T) {
	on := State{Enabled: true, Mode: mode.Self, CanaryPercent: 30}
	r := newRouter(t, on, WithAvailable(mode.Self))
	all := ids(2000)
	var (
		wg     sync.WaitGroup
		stop   atomic.Bool
		routed atomic.Int64
		bad    atomic.Value
	)
	for w := range 8 {
		wg.Go(func() {
			for i := w; !stop.Load(); i = (i + 8) % len(all) {
				got := r.Route(all[i])
				if got != mode.Mock && got != mode.Self {
					bad.Store(got)
				}
				routed.Add(1)
			}
		})
	}
	// The flips start once the workers route, and go on (at least 200 of
	// them, an even number so the switch ends on) until the workers have
	// routed a thousand jobs meanwhile, so the two really interleave.
	for routed.Load() < 8 {
		runtime.Gosched()
	}
	before := routed.Load()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 200 || (routed.Load()-before < 1000 && time.Now().Before(deadline)) || i%2 == 1; i++ {
		s := on
		s.Enabled = i%2 == 1
		if _, err := r.Set(s); err != nil {
			t.Error(err)
		}
	}
	during := routed.Load() - before
	stop.Store(true)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("a job was routed to %v", v)
	}
	if during < 1000 {
		t.Fatalf("only %d jobs were routed during the flips", during)
	}
	ref := State{Enabled: true, Mode: mode.Self, CanaryPercent: 30}
	for _, id := range all {
		if got, want := r.Route(id), ref.route(id); got != want {
			t.Fatalf("after the flips %s goes to %s, want %s", id, got, want)
		}
	}
}

func TestUpdateLosesNoConcurrentChange(t *testing.T) {
	r := newRouter(t, State{Enabled: true, Mode: mode.Self}, WithAvailable(mode.Self))
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, _, err := r.Update(func(s State) State { s.CanaryPercent++; return s }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := r.Get().CanaryPercent; got != 50 {
		t.Fatalf("after 50 increments canary is %d", got)
	}
}

func TestAvailableIncludesMock(t *testing.T) {
	r := newRouter(t, State{Mode: mode.Mock}, WithAvailable(mode.Managed))
	if got := r.Available(); !slices.Equal(got, []mode.Mode{mode.Mock, mode.Managed}) {
		t.Fatalf("Available() = %v", got)
	}
}
