package staging

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

// replica returns another Service on f's store and backend, as a second
// sidecar sharing the bucket would be.
func (f fixture) replica() *Service {
	return New(f.store, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
}

func (f fixture) putClaim(t *testing.T, key, owner string, expires time.Time) {
	t.Helper()
	data, _ := json.Marshal(claimDoc{Version: 1, ImageID: "job", Owner: owner, ExpiresAt: expires})
	if err := f.store.Put(t.Context(), key, data, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (f fixture) exists(t *testing.T, key string) bool {
	t.Helper()
	_, err := f.store.Get(t.Context(), key, 1<<20)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

const jobRecord = "l/staged/job.jpg.json"

// checkReplayOfOneRun checks that out replays the job's one run, and that
// no claim on it is left.
func (f fixture) checkReplayOfOneRun(t *testing.T, out Outcome, err error) {
	t.Helper()
	if err != nil || !out.Replay {
		t.Fatalf("%+v %v, want a replay", out, err)
	}
	if n := f.be.calls.Load(); n != 1 {
		t.Errorf("backend ran %d times, want 1", n)
	}
	if f.exists(t, claimKey(jobRecord, 0)) {
		t.Error("a claim on the finished job was left behind")
	}
}

// awaitClaim waits for the job's first claim to be written and returns it.
func (f fixture) awaitClaim(t *testing.T) claimDoc {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var doc claimDoc
		data, err := f.store.Get(t.Context(), claimKey(jobRecord, 0), 1<<20)
		if err == nil && json.Unmarshal(data, &doc) == nil {
			return doc
		}
		if time.Now().After(deadline) {
			t.Fatal("the job was never claimed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSecondReplicaAnswersInProgress runs one job on two replicas at once:
// the second answers in_progress (retryable, with a pause) while the first
// runs, and replays its result afterwards; the backend runs once.
func TestSecondReplicaAnswersInProgress(t *testing.T) {
	f := newFixture(t, 400*time.Millisecond)
	b := f.replica()
	first := make(chan error, 1)
	go func() {
		_, err := f.svc.Stage(t.Context(), req("job"))
		first <- err
	}()
	f.awaitClaim(t)
	_, err := b.Stage(t.Context(), req("job"))
	e := fault.From(err)
	if e.Code != fault.InProgress || !e.Retryable || e.RetryAfter <= 0 {
		t.Fatalf("second replica: %v (retryable %v, retry after %v), want in_progress, retryable, with a pause", err, e.Retryable, e.RetryAfter)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	out, err := b.Stage(t.Context(), req("job"))
	f.checkReplayOfOneRun(t, out, err)
}

// TestExpiredClaimIsTakenOver stands for a replica that died mid-job: its
// claim expires, the next replica runs the job under the next generation's
// claim and then removes both.
func TestExpiredClaimIsTakenOver(t *testing.T) {
	f := newFixture(t, 0)
	f.putClaim(t, claimKey(jobRecord, 0), "dead-replica", time.Now().Add(-time.Second))
	out, err := f.svc.Stage(t.Context(), req("job"))
	if err != nil || out.Replay {
		t.Fatalf("%+v %v, want a fresh run", out, err)
	}
	for gen := range 2 {
		if k := claimKey(jobRecord, gen); f.exists(t, k) {
			t.Errorf("%s left behind", k)
		}
	}
}

func TestLiveClaimOfAnotherReplicaHoldsTheJob(t *testing.T) {
	f := newFixture(t, 0)
	f.putClaim(t, claimKey(jobRecord, 0), "other-replica", time.Now().Add(time.Minute))
	if _, err := f.svc.Stage(t.Context(), req("job")); fault.CodeOf(err) != fault.InProgress {
		t.Fatalf("err = %v, want in_progress", err)
	}
	if n := f.be.calls.Load(); n != 0 {
		t.Errorf("backend ran %d times", n)
	}
}

// TestOwnLeftoverClaimDoesNotBlock: a claim this replica failed to delete
// cannot belong to a run in progress (the process runs one per job), so it
// is passed over.
func TestOwnLeftoverClaimDoesNotBlock(t *testing.T) {
	f := newFixture(t, 0)
	f.putClaim(t, claimKey(jobRecord, 0), f.svc.owner, time.Now().Add(time.Minute))
	if _, err := f.svc.Stage(t.Context(), req("job")); err != nil {
		t.Fatal(err)
	}
}

func TestUnreadableClaimCountsAsExpired(t *testing.T) {
	f := newFixture(t, 0)
	if err := f.store.Put(t.Context(), claimKey(jobRecord, 0), []byte("{not json"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Stage(t.Context(), req("job")); err != nil {
		t.Fatal(err)
	}
}

func TestTooManyAbandonedClaims(t *testing.T) {
	f := newFixture(t, 0)
	for gen := range maxClaimGenerations {
		f.putClaim(t, claimKey(jobRecord, gen), "dead", time.Now().Add(-time.Second))
	}
	_, err := f.svc.Stage(t.Context(), req("job"))
	if e := fault.From(err); e.Code != fault.Internal || e.Retryable {
		t.Fatalf("err = %v, want internal, not retryable", err)
	}
	if n := f.be.calls.Load(); n != 0 {
		t.Errorf("backend ran %d times", n)
	}
}

// TestFailedJobDropsItsClaim lets a failed job's retry run at once on
// another replica instead of waiting for the claim to expire.
func TestFailedJobDropsItsClaim(t *testing.T) {
	f := newFixture(t, 0)
	f.be.fail.Store(true)
	if _, err := f.svc.Stage(t.Context(), req("job")); fault.CodeOf(err) != fault.Unavailable {
		t.Fatalf("err = %v, want the backend's failure", err)
	}
	if f.exists(t, claimKey(jobRecord, 0)) {
		t.Fatal("a failed job kept its claim")
	}
	f.be.fail.Store(false)
	if _, err := f.replica().Stage(t.Context(), req("job")); err != nil {
		t.Fatalf("retry on another replica: %v", err)
	}
}

// recordBeforeClaim finishes the job "on another replica" at the moment
// this one writes its claim: the record appears after this replica's
// lookup, and the other replica's claim is already gone.
type recordBeforeClaim struct {
	Store
	record []byte
}

func (r *recordBeforeClaim) Put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	if opts.IfAbsent && r.record != nil {
		if err := r.Store.Put(ctx, jobRecord, r.record, storage.PutOptions{}); err != nil {
			return err
		}
		r.record = nil
	}
	return r.Store.Put(ctx, key, data, opts)
}

func TestRecordWrittenBeforeOurClaimIsReplayed(t *testing.T) {
	f := newFixture(t, 0)
	if _, err := f.svc.Stage(t.Context(), req("job")); err != nil {
		t.Fatal(err)
	}
	rec, err := f.store.Get(t.Context(), jobRecord, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.Delete(t.Context(), jobRecord); err != nil {
		t.Fatal(err)
	}
	svc := New(&recordBeforeClaim{Store: f.store, record: rec}, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
	out, err := svc.Stage(t.Context(), req("job"))
	f.checkReplayOfOneRun(t, out, err)
}

func TestClaimWriteFailureIsRetryable(t *testing.T) {
	f := newFixture(t, 0)
	store := &faultyStore{Store: f.store, failPut: func(k string) bool { return k == claimKey(jobRecord, 0) }}
	svc := New(store, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
	_, err := svc.Stage(t.Context(), req("job"))
	if e := fault.From(err); e.Code != fault.Internal || !e.Retryable {
		t.Fatalf("err = %v, want a retryable internal error", err)
	}
	if n := f.be.calls.Load(); n != 0 {
		t.Errorf("backend ran %d times", n)
	}
}

// TestClaimOutlivesTheDeadline: a claim lasts the job's deadline plus a
// grace, so a job still stopping is not taken over.
func TestClaimOutlivesTheDeadline(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = f.svc.Stage(ctx, req("job"))
	}()
	doc := f.awaitClaim(t)
	<-done
	d, _ := ctx.Deadline()
	if want := d.Add(claimGrace); !doc.ExpiresAt.Equal(want.UTC()) {
		t.Errorf("claim expires %v, want the deadline plus %v (%v)", doc.ExpiresAt, claimGrace, want)
	}
	if doc.Owner != f.svc.owner || doc.ImageID != "job" {
		t.Errorf("claim %+v", doc)
	}
}

// refusingStore refuses the claim's key the way a file system refuses a
// name segment that is too long.
type refusingStore struct{ Store }

func (r refusingStore) Put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	if key == claimKey(jobRecord, 0) {
		return fmt.Errorf("put %s: %w", key, storage.ErrNameTooLong)
	}
	return r.Store.Put(ctx, key, data, opts)
}

// A claim key the store can never hold is the client's error, as for any
// other key: 400, not retryable, and nothing runs or is written.
func TestClaimKeyTheStoreRefusesIsAClientError(t *testing.T) {
	f := newFixture(t, 0)
	svc := New(refusingStore{f.store}, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
	_, err := svc.Stage(t.Context(), req("job"))
	if e := fault.From(err); e.Code != fault.InvalidInput || e.Retryable {
		t.Fatalf("err = %v (retryable %v), want invalid_input, not retryable", err, e.Retryable)
	}
	if n := f.be.calls.Load(); n != 0 {
		t.Errorf("backend ran %d times", n)
	}
	if f.exists(t, "l/staged/job.jpg") || f.exists(t, jobRecord) {
		t.Error("something was written")
	}
}

// claimAwaitsOriginal holds the claim's write until the original's read
// has begun: a service that reads the original only after the claim would
// wait here until its deadline.
type claimAwaitsOriginal struct {
	Store
	original string
	reading  chan struct{}
	once     sync.Once
}

func (c *claimAwaitsOriginal) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	if key == c.original {
		c.once.Do(func() { close(c.reading) })
	}
	return c.Store.Get(ctx, key, maxBytes)
}

func (c *claimAwaitsOriginal) Put(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	if opts.IfAbsent {
		select {
		case <-c.reading:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return c.Store.Put(ctx, key, data, opts)
}

// TestOriginalIsReadWhileTheClaimIsTaken: the two storage round trips of
// a new job overlap.
func TestOriginalIsReadWhileTheClaimIsTaken(t *testing.T) {
	f := newFixture(t, 0)
	store := &claimAwaitsOriginal{Store: f.store, original: req("job").OriginalKey, reading: make(chan struct{})}
	svc := New(store, NewSingle(f.be), f.svc.catalog, f.svc.opts, f.metrics, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	out, err := svc.Stage(ctx, req("job"))
	if err != nil || out.Replay || f.be.calls.Load() != 1 {
		t.Fatalf("Stage = %+v, %v after %d runs; want one fresh run", out, err, f.be.calls.Load())
	}
}

// TestClaimRefusalWinsOverAMissingOriginal: while another replica holds
// the job, the answer is in_progress even if this replica's read of the
// original, made meanwhile, failed; that replica may have better luck.
func TestClaimRefusalWinsOverAMissingOriginal(t *testing.T) {
	f := newFixture(t, 0)
	f.putClaim(t, claimKey(jobRecord, 0), "another-replica", time.Now().Add(time.Minute))
	r := req("job")
	r.OriginalKey = "l/missing.jpg"
	_, err := f.svc.Stage(t.Context(), r)
	if code := fault.CodeOf(err); code != fault.InProgress {
		t.Fatalf("err = %v, want in_progress", err)
	}
	if !f.exists(t, claimKey(jobRecord, 0)) || f.be.calls.Load() != 0 {
		t.Errorf("the other replica's claim was touched or the backend ran")
	}
}

// TestMissingOriginalDropsTheClaim: an input that cannot be read fails the
// job after this replica took its claim; the claim is let go at once, so
// a corrected retry anywhere need not wait for it to expire.
func TestMissingOriginalDropsTheClaim(t *testing.T) {
	f := newFixture(t, 0)
	r := req("job")
	r.OriginalKey = "l/missing.jpg"
	_, err := f.svc.Stage(t.Context(), r)
	if code := fault.CodeOf(err); code != fault.NotFound {
		t.Fatalf("err = %v, want not_found", err)
	}
	if f.exists(t, claimKey(jobRecord, 0)) || f.exists(t, jobRecord) || f.be.calls.Load() != 0 {
		t.Errorf("a claim or record was left, or the backend ran")
	}
}
