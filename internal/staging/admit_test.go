package staging

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

// countingStore counts the reads a job makes.
type countingStore struct {
	Store
	gets atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key, maxBytes)
}

func TestAdmissionRefusalReadsNothing(t *testing.T) {
	f := newFixture(t, 0)
	store := &countingStore{Store: f.store}
	refused := fault.New(fault.Overloaded, "busy")
	svc := New(store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return "mock" },
		Admit: func(context.Context, string, string, float64) (func(Cost), error) {
			return nil, refused
		},
	}, f.svc.catalog, f.svc.opts, f.metrics, nil)
	if _, err := svc.Stage(t.Context(), req("busy")); fault.CodeOf(err) != fault.Overloaded {
		t.Fatalf("err = %v, want overloaded", err)
	}
	if n := store.gets.Load(); n != 0 {
		t.Errorf("a refused job read storage %d times", n)
	}
}

func TestAdmissionReleasesOnceWithTheJobsCost(t *testing.T) {
	f := newFixture(t, 0)
	var releases []Cost
	var admittedFor []string
	route := atomic.Value{}
	route.Store("mock")
	svc := New(f.store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return route.Load().(string) },
		Admit: func(_ context.Context, name, tier string, mp float64) (func(Cost), error) {
			admittedFor = append(admittedFor, name+"/"+tier)
			if mp <= 0 {
				t.Errorf("estimate %v megapixels", mp)
			}
			return func(c Cost) { releases = append(releases, c) }, nil
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

	// A replay is admitted too (admission comes before any read) and gives
	// its place back without a cost to learn from.
	releases = nil
	if out, err := svc.Stage(t.Context(), r); err != nil || !out.Replay {
		t.Fatalf("replay: %+v %v", out, err)
	}
	if len(releases) != 1 || releases[0].Megapixels != 0 {
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
	var releases []Cost
	svc := New(f.store, Backends{
		ByName: map[string]backend.Backend{"mock": f.be},
		Route:  func(string) string { return route.Load().(string) },
		Admit: func(context.Context, string, string, float64) (func(Cost), error) {
			route.Store("mock") // the kill switch flips while the job waits
			return func(c Cost) { releases = append(releases, c) }, nil
		},
	}, f.svc.catalog, f.svc.opts, f.metrics, nil)
	out, err := svc.Stage(t.Context(), req("flipped"))
	if err != nil || out.Backend != "mock" {
		t.Fatalf("%+v %v, want a mock answer", out, err)
	}
	if len(releases) != 1 || releases[0] != (Cost{}) {
		t.Errorf("releases = %+v, want the place given back once, unused", releases)
	}
}
