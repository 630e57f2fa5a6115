package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/testenv"
)

func open(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(t.Context(), testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.CheckSchema(t.Context()); err == nil {
		t.Error("CheckSchema passed on an empty database")
	}
	applied, err := s.Migrate(t.Context())
	if err != nil || len(applied) == 0 {
		t.Fatalf("Migrate: %v %v", applied, err)
	}
	if again, err := s.Migrate(t.Context()); err != nil || len(again) != 0 {
		t.Fatalf("second Migrate applied %v, %v", again, err)
	}
	if err := s.CheckSchema(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

func img(id string) store.Image {
	return store.Image{ID: id, OriginalKey: "listings/1/a.jpg", RoomType: "bedroom", Style: "japandi"}
}

func status(t *testing.T, s *store.Store, id string) store.Row {
	t.Helper()
	r, err := s.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestStatusOnlyMovesForward plays updates in every late order: a failure
// after a success, a start after a failure or a success, a second
// success. None undoes a result.
func TestStatusOnlyMovesForward(t *testing.T) {
	s := open(t)
	ctx := t.Context()
	noop := func() error { return nil }
	if _, err := s.Enqueue(ctx, img("fwd"), "pro", noop); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Start(ctx, img("fwd"), "pro"); err != nil || st.Status != store.StatusProcessing || st.Attempts != 1 {
		t.Fatalf("Start: %+v %v", st, err)
	}
	if moved, err := s.Staged(ctx, "fwd", store.Result{StagedKey: "k1", Meta: map[string]any{"model_rev": "r1"}, Metrics: map[string]int{"a": 1}}); !moved || err != nil {
		t.Fatalf("Staged: %v %v", moved, err)
	}
	if moved, err := s.Failed(ctx, "fwd", "timeout", "late", nil); moved || err != nil {
		t.Errorf("a late failure moved a staged image: %v %v", moved, err)
	}
	if moved, err := s.Staged(ctx, "fwd", store.Result{StagedKey: "k2", Meta: map[string]any{}}); moved || err != nil {
		t.Errorf("a second success replaced the first: %v %v", moved, err)
	}
	if st, err := s.Start(ctx, img("fwd"), "pro"); err != nil || st.Status != store.StatusStaged || st.Attempts != 2 {
		t.Errorf("a late start: %+v %v", st, err)
	}
	r := status(t, s, "fwd")
	if r.Status != store.StatusStaged || *r.StagedKey != "k1" || r.ErrorCode != nil || string(r.InferenceMeta) != `{"model_rev": "r1"}` {
		t.Errorf("row after late updates: %+v meta %s", r, r.InferenceMeta)
	}

	// A failure stays failed against a late start, but a success recorded
	// after it wins.
	if _, err := s.Enqueue(ctx, img("bad"), "free", noop); err != nil {
		t.Fatal(err)
	}
	if moved, err := s.Failed(ctx, "bad", "unavailable", "down", map[string]int{"attempts": 3}); !moved || err != nil {
		t.Fatalf("Failed: %v %v", moved, err)
	}
	if st, _ := s.Start(ctx, img("bad"), "free"); st.Status != store.StatusFailed {
		t.Errorf("a start moved a failed image back to %s", st.Status)
	}
	if moved, _ := s.Failed(ctx, "bad", "timeout", "again", nil); moved {
		t.Error("a second failure replaced the first")
	}
	if r := status(t, s, "bad"); *r.ErrorCode != "unavailable" {
		t.Errorf("error_code %s", *r.ErrorCode)
	}
	if moved, _ := s.Staged(ctx, "bad", store.Result{StagedKey: "k", Meta: map[string]any{}}); !moved {
		t.Error("a success after a failure was not recorded")
	}
	if r := status(t, s, "bad"); r.Status != store.StatusStaged || r.ErrorCode != nil {
		t.Errorf("after the late success: %s %v", r.Status, r.ErrorCode)
	}
}

// TestEnqueueRecordsOnlyWhatWasQueued: a refused enqueue leaves no row; the
// same image_id with other parameters is a conflict; a start of a task
// whose rows are missing creates them.
func TestEnqueueRecordsOnlyWhatWasQueued(t *testing.T) {
	s := open(t)
	ctx := t.Context()
	full := errors.New("full")
	if _, err := s.Enqueue(ctx, img("refused"), "free", func() error { return full }); !errors.Is(err, full) {
		t.Fatalf("Enqueue: %v", err)
	}
	if _, err := s.Get(ctx, "refused"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused enqueue left a row: %v", err)
	}
	seed := uint32(7)
	a := img("a")
	a.Seed = &seed
	if got, err := s.Enqueue(ctx, a, "free", func() error { return nil }); err != nil || !got.New {
		t.Fatalf("first enqueue: %+v %v", got, err)
	}
	calls := 0
	if got, err := s.Enqueue(ctx, a, "free", func() error { calls++; return nil }); err != nil || got.New || got.Status != store.StatusQueued || calls != 1 {
		t.Errorf("second enqueue of a queued image: %+v %v, enqueue called %d times", got, err, calls)
	}
	b := a
	other := uint32(8)
	b.Seed = &other
	if _, err := s.Enqueue(ctx, b, "free", func() error { return nil }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("other seed: %v, want ErrConflict", err)
	}
	b.Seed, b.MaskKey = a.Seed, "m.png"
	if _, err := s.Enqueue(ctx, b, "free", func() error { return nil }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("other mask: %v, want ErrConflict", err)
	}
	b.MaskKey, b.Upscale = "", true
	if _, err := s.Enqueue(ctx, b, "free", func() error { return nil }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("upscale: %v, want ErrConflict", err)
	}
	for _, label := range []*bool{new(bool), ptr(true)} {
		b.Upscale, b.Label = false, label
		if _, err := s.Enqueue(ctx, b, "free", func() error { return nil }); !errors.Is(err, store.ErrConflict) {
			t.Errorf("label %v where none was given: %v, want ErrConflict", *label, err)
		}
	}
	l := img("labelled")
	l.Label, l.Upscale = ptr(false), true
	for range 2 {
		if _, err := s.Enqueue(ctx, l, "pro", func() error { return nil }); err != nil {
			t.Fatalf("enqueue with label false and upscale: %v", err)
		}
	}
	if r := status(t, s, "labelled"); r.Label == nil || *r.Label || !r.Upscale {
		t.Errorf("labelled: label %v upscale %v", r.Label, r.Upscale)
	}
	if st, err := s.Start(ctx, img("orphan"), "business"); err != nil || st.Status != store.StatusProcessing || st.Attempts != 1 {
		t.Fatalf("Start without rows: %+v %v", st, err)
	}
	if r := status(t, s, "orphan"); r.Job == nil || r.Job.Tier != "business" || r.Job.StartedAt == nil {
		t.Errorf("orphan: %+v", r)
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(ctx2, "a"); err == nil {
		t.Error("Get with a cancelled context succeeded")
	}
}

func ptr[T any](v T) *T { return &v }
