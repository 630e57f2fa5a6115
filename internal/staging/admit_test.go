package staging

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

// countingStore records the keys a job reads.
type countingStore struct {
	Store
	mu   sync.Mutex
	gets []string
}

func (c *countingStore) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	c.mu.Lock()
	c.gets = append(c.gets, key)
	c.mu.Unlock()
	return c.Store.Get(ctx, key, maxBytes)
}

func (c *countingStore) reads() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.gets...)
}

// busyAdmit refuses every job, as a saturated GPU or a restarting engine
// does: a NoWait request gets ErrBusy, any other the refusal.
func busyAdmit(refusal error) func(context.Context, string, admission.Request) (func(admission.Report), error) {
	return func(_ context.Context, _ string, r admission.Request) (func(admission.Report), error) {
		if r.NoWait {
			return nil, admission.ErrBusy
		}
		return nil, refusal
	}
}

func TestRefusalReadsOnlyTheRecord(t *testing.T) {
	f := newFixture(t, 0)
	store := &countingStore{Store: f.store}
	refused := fault.New(fault.Overloaded, "busy")
	svc := New(store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return "mock" },
		Admit:  busyAdmit(refused),
	}, f.svc.catalog, f.svc.opts, f.metrics, nil)
	if _, err := svc.Stage(t.Context(), req("busy")); !errors.Is(err, refused) {
		t.Fatalf("err = %v, want the refusal", err)
	}
	if got := store.reads(); len(got) != 1 || got[0] != "l/staged/busy.jpg.json" {
		t.Errorf("a refused job read %v, want its record alone", got)
	}
}

// TestReplayNeedsNoPlace answers a replay and a conflict from the record
// while every new job is refused, and a replay never enters the queue.
func TestReplayNeedsNoPlace(t *testing.T) {
	f := newFixture(t, 0)
	first, err := f.svc.Stage(t.Context(), req("done"))
	if err != nil {
		t.Fatal(err)
	}
	for name, admit := range map[string]func(context.Context, string, admission.Request) (func(admission.Report), error){
		"refused": busyAdmit(fault.New(fault.Unavailable, "the engine is restarting")),
		"queued": func(ctx context.Context, _ string, r admission.Request) (func(admission.Report), error) {
			if r.NoWait {
				return nil, admission.ErrBusy
			}
			<-ctx.Done() // a queue that never moves
			return nil, ctx.Err()
		},
	} {
		t.Run(name, func(t *testing.T) {
			svc := New(f.store, Backends{
				ByName: map[string]backend.Backend{"mock": f.be},
				Route:  func(string) string { return "mock" },
				Admit:  admit,
			}, f.svc.catalog, f.svc.opts, f.metrics, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			out, err := svc.Stage(ctx, req("done"))
			if err != nil || !out.Replay || out.Response.Seed != first.Response.Seed {
				t.Fatalf("replay: %+v %v, want the recorded answer", out, err)
			}
			other := req("done")
			other.Style = "industrial"
			if _, err := svc.Stage(ctx, other); fault.CodeOf(err) != fault.IdempotencyConflict {
				t.Errorf("conflict: %v, want idempotency_conflict", err)
			}
		})
	}
	if got := f.be.calls.Load(); got != 1 {
		t.Errorf("backend ran %d times, want 1", got)
	}
}

func TestAdmissionReleasesOnceWithTheJobsCost(t *testing.T) {
	f := newFixture(t, 0)
	var (
		mu          sync.Mutex
		releases    []admission.Report
		admittedFor []string
	)
	svc := New(f.store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return "mock" },
		Admit: func(_ context.Context, name string, r admission.Request) (func(admission.Report), error) {
			mu.Lock()
			defer mu.Unlock()
			admittedFor = append(admittedFor, name+"/"+string(r.Tier))
			if r.Megapixels <= 0 || !r.NoWait {
				t.Errorf("request %+v, want a positive estimate asked without waiting", r)
			}
			return func(c admission.Report) {
				mu.Lock()
				releases = append(releases, c)
				mu.Unlock()
			}, nil
		},
	}, f.svc.catalog, f.svc.opts, f.metrics, nil)

	r := req("costed")
	r.Tier = "pro"
	out, err := svc.Stage(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	if len(releases) != 1 || releases[0].Megapixels != float64(out.Width*out.Height)/1e6 || releases[0].Duration <= 0 {
		t.Errorf("releases = %+v, want one with the output's size and the backend's time", releases)
	}
	if len(admittedFor) != 1 || admittedFor[0] != "mock/pro" {
		t.Errorf("admitted for %v", admittedFor)
	}

	// A replay that finds a place free holds it only while it reads its
	// record, and gives it back without a cost to learn from.
	releases = nil
	if out, err := svc.Stage(t.Context(), r); err != nil || !out.Replay {
		t.Fatalf("replay: %+v %v", out, err)
	}
	if len(releases) != 1 || releases[0] != (admission.Report{}) {
		t.Errorf("replay releases = %+v", releases)
	}
}

func TestUnknownRouteIsUnavailable(t *testing.T) {
	f := newFixture(t, 0)
	svc := New(f.store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return "self" },
	}, f.svc.catalog, f.svc.opts, f.metrics, nil)
	if _, err := svc.Stage(t.Context(), req("nowhere")); fault.CodeOf(err) != fault.Unavailable {
		t.Errorf("err = %v, want unavailable", err)
	}
	if _, err := f.store.Get(t.Context(), "l/staged/nowhere.jpg.json", 1<<20); err == nil || !isNotFound(err) {
		t.Errorf("record written for an unroutable job: %v", err)
	}
}

func isNotFound(err error) bool { return errors.Is(err, storage.ErrNotFound) }

func TestReroutedWhileWaitingGivesThePlaceBack(t *testing.T) {
	f := newFixture(t, 0)
	var route atomic.Value
	route.Store("self")
	var releases []admission.Report
	svc := New(f.store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return route.Load().(string) },
		Admit: func(_ context.Context, _ string, r admission.Request) (func(admission.Report), error) {
			if r.NoWait {
				return nil, admission.ErrBusy
			}
			route.Store("mock") // the kill switch flips while the job waits
			return func(c admission.Report) { releases = append(releases, c) }, nil
		},
	}, f.svc.catalog, f.svc.opts, f.metrics, nil)
	out, err := svc.Stage(t.Context(), req("flipped"))
	if err != nil || out.Backend != "mock" {
		t.Fatalf("%+v %v, want a mock answer", out, err)
	}
	if len(releases) != 1 || releases[0] != (admission.Report{}) {
		t.Errorf("releases = %+v, want the place given back once, unused", releases)
	}
}
