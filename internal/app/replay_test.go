package app_test

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestReplayWhileTheGPUIsBusy answers a replay and a conflict from the
// record while the one GPU place is taken and new jobs are refused, and
// again right after the engine is SIGKILLed, while it restarts.
func TestReplayWhileTheGPUIsBusy(t *testing.T) {
	svc, _ := slowEngine(t, "0.2", map[string]string{"QUEUE_DEPTH": "0", "ENGINE_BACKOFF_MIN": "2s", "ENGINE_BACKOFF_MAX": "4s"})
	if o := stage(t.Context(), svc, "done", ""); o.status != 200 {
		t.Fatalf("first run: %+v", o)
	}
	replayNow := func(when string) {
		t.Helper()
		t0 := time.Now()
		m := job("done")
		m["strength"] = 1.0
		a := infer(t, svc, m)
		if took := time.Since(t0); a.status != 200 || a.header.Get("Idempotent-Replay") != "true" || took > time.Second {
			t.Errorf("replay %s: %d %s after %v, want 200 with Idempotent-Replay well under a second", when, a.status, a.body, took)
		}
		m["style"] = "industrial"
		if a := infer(t, svc, m); a.status != 409 || a.errorCode(t) != "idempotency_conflict" {
			t.Errorf("conflict %s: %d %s", when, a.status, a.body)
		}
	}

	busy := make(chan outcome, 1)
	go func() { busy <- stage(context.Background(), svc, "busy", "") }()
	waitFor(t, func() bool {
		return metricValue(t, string(get(t, svc.url+"/metrics").body), "vstage_engine_jobs_in_flight") == "1"
	})
	if o := stage(t.Context(), svc, "new-while-busy", ""); o.status != 429 {
		t.Errorf("a new job while the place is taken: %+v, want 429", o)
	}
	replayNow("while the place is taken")
	if o := <-busy; o.status != 200 {
		t.Fatalf("the job that held the place: %+v", o)
	}

	if err := syscall.Kill(enginePID(t, svc.logs.String()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return get(t, svc.url+"/readyz").status == 503 })
	if o := stage(t.Context(), svc, "new-while-down", ""); o.status != 503 {
		t.Errorf("a new job while the engine restarts: %+v, want 503", o)
	}
	replayNow("while the engine restarts")
}

// TestTwoReplicasRunAJobOnce runs two sidecars on one S3-compatible server
// and gives both the same job: one runs it, the other answers in_progress
// (409, retryable, Retry-After) while it runs and replays it afterwards; the
// staged image is written once. A burst split across both replicas also
// runs once.
func TestTwoReplicasRunAJobOnce(t *testing.T) {
	// Reads of the original are held, so a job holds its claim long enough
	// for the other replica to find it.
	s3b := newS3(t, "", map[string]time.Duration{"/" + bucket + "/listings/42/empty.jpg": 700 * time.Millisecond})
	s3b.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	env := map[string]string{"STORAGE_URL": s3b.url(), "S3_ENDPOINT": s3b.srv.URL, "S3_FORCE_PATH_STYLE": "true"}
	a, b := start(t, env), start(t, env)

	first := make(chan answer, 1)
	go func() { first <- infer(t, a, job("x")) }()
	waitFor(t, func() bool { _, ok := s3b.get(t, "listings/42/staged/x.jpg.json.claim"); return ok })
	other := infer(t, b, job("x"))
	if other.status != 409 || other.errorCode(t) != "in_progress" || other.header.Get("Retry-After") == "" {
		t.Errorf("second replica while the first runs: %d %v %s", other.status, other.header, other.body)
	}
	if !retryable(t, other) {
		t.Errorf("in_progress is not retryable: %s", other.body)
	}
	if got := <-first; got.status != 200 || got.header.Get("Idempotent-Replay") != "" {
		t.Fatalf("first replica: %d %s", got.status, got.body)
	}
	if again := infer(t, b, job("x")); again.status != 200 || again.header.Get("Idempotent-Replay") != "true" {
		t.Errorf("second replica afterwards: %d %s, want a replay", again.status, again.body)
	}

	const n = 8
	answers := make([]answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = infer(t, []*service{a, b}[i%2], job("burst"))
		}()
	}
	wg.Wait()
	fresh := 0
	for i, ans := range answers {
		switch {
		case ans.status == 200 && ans.header.Get("Idempotent-Replay") == "":
			fresh++
		case ans.status == 200:
		case ans.status == 409 && ans.errorCode(t) == "in_progress":
		default:
			t.Errorf("burst answer %d: %d %s", i, ans.status, ans.body)
		}
	}
	if fresh != 1 {
		t.Errorf("%d answers ran the job, want 1", fresh)
	}
	for _, id := range []string{"x", "burst"} {
		if n := s3b.putsOf("/" + bucket + "/listings/42/staged/" + id + ".jpg"); n != 1 {
			t.Errorf("staged image of %s written %d times, want once", id, n)
		}
	}
	list, err := s3b.client.ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String("listings/42/staged/")})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range list.Contents {
		if k := aws.ToString(o.Key); len(k) > 6 && k[len(k)-6:] == ".claim" {
			t.Errorf("claim %s left behind", k)
		}
	}
}

func retryable(t *testing.T, a answer) bool {
	t.Helper()
	var e struct {
		Error struct {
			Retryable bool `json:"retryable"`
		} `json:"error"`
	}
	decodeJSON(t, a.body, &e)
	return e.Error.Retryable
}
