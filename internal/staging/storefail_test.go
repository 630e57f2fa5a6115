package staging

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

// faultyStore fails the reads or writes of chosen keys, as a storage
// outage would.
type faultyStore struct {
	Store
	failGet func(key string) bool
	failPut func(key string) bool
}

var errOutage = errors.New("connection reset by peer")

func (f *faultyStore) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	if f.failGet != nil && f.failGet(key) {
		return nil, errOutage
	}
	return f.Store.Get(ctx, key, maxBytes)
}

func (f *faultyStore) Put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	if f.failPut != nil && f.failPut(key) {
		return errOutage
	}
	return f.Store.Put(ctx, key, data, opts)
}

func TestStorageFailuresAreRetryableAndLeaveNoRecord(t *testing.T) {
	is := func(k string) func(string) bool { return func(key string) bool { return key == k } }
	for name, store := range map[string]func(Store) *faultyStore{
		"reading the record":   func(s Store) *faultyStore { return &faultyStore{Store: s, failGet: is("l/staged/job.jpg.json")} },
		"reading the original": func(s Store) *faultyStore { return &faultyStore{Store: s, failGet: is("l/o.jpg")} },
		"writing the image":    func(s Store) *faultyStore { return &faultyStore{Store: s, failPut: is("l/staged/job.jpg")} },
		"writing the record":   func(s Store) *faultyStore { return &faultyStore{Store: s, failPut: is("l/staged/job.jpg.json")} },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, 0)
			svc := New(store(f.store), NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
			_, err := svc.Stage(t.Context(), req("job"))
			e := fault.From(err)
			if e.Code != fault.Internal || !e.Retryable || !errors.Is(err, errOutage) {
				t.Fatalf("err = %v (retryable %v), want a retryable internal error wrapping the outage", err, e.Retryable)
			}
			if strings.Contains(e.Message, errOutage.Error()) {
				t.Errorf("the storage error reached the client's message: %q", e.Message)
			}
			if _, err := f.store.Get(t.Context(), "l/staged/job.jpg.json", 1<<20); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("a record exists after the failure: %v", err)
			}
			// Once storage is back, the retry runs the job.
			if out, err := f.svc.Stage(t.Context(), req("job")); err != nil || out.Replay {
				t.Errorf("retry: %+v %v, want a fresh success", out, err)
			}
		})
	}
}

func TestUnreadableRecordIsNeitherReplayedNorOverwritten(t *testing.T) {
	f := newFixture(t, 0)
	garbage := []byte(`{"version":1,"image_id":"other"}`)
	if err := f.store.Put(t.Context(), "l/staged/job.jpg.json", garbage, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Stage(t.Context(), req("job"))
	if fault.CodeOf(err) != fault.Internal {
		t.Fatalf("err = %v, want internal", err)
	}
	if got := f.be.calls.Load(); got != 0 {
		t.Errorf("the backend ran %d times", got)
	}
	if data, _ := f.store.Get(t.Context(), "l/staged/job.jpg.json", 1<<20); string(data) != string(garbage) {
		t.Errorf("the record was overwritten: %s", data)
	}
}

// TestRecordReadUnderTheClaimFailing: the second record read, made while
// the original is already being read, fails. The read of the original is
// abandoned, the claim dropped, nothing run or written, and the client
// may retry.
func TestRecordReadUnderTheClaimFailing(t *testing.T) {
	f := newFixture(t, 0)
	reads := 0
	store := &faultyStore{Store: f.store, failGet: func(key string) bool {
		if key != jobRecord {
			return false
		}
		reads++
		return reads == 2
	}}
	svc := New(store, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
	_, err := svc.Stage(t.Context(), req("job"))
	if e := fault.From(err); e.Code != fault.Internal || !e.Retryable || !errors.Is(err, errOutage) {
		t.Fatalf("err = %v, want a retryable internal error wrapping the outage", err)
	}
	if reads != 2 {
		t.Fatalf("the record was read %d times, want 2", reads)
	}
	if f.be.calls.Load() != 0 || f.exists(t, claimKey(jobRecord, 0)) || f.exists(t, jobRecord) || f.exists(t, "l/staged/job.jpg") {
		t.Errorf("the backend ran (%d) or a claim, record or image was left", f.be.calls.Load())
	}
}
