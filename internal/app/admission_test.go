package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/testsupport"
)

// slowEngine starts the sidecar in self mode on the torch-free test engine
// with jobs of 10 steps of stepDelay seconds (at strength 1).
func slowEngine(t *testing.T, stepDelay string, env map[string]string) (*service, localBlobs) {
	t.Helper()
	py := testsupport.EnginePython(t)
	dir := t.TempDir()
	store := localBlobs{dir}
	store.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	// The test engine reads its own settings from the environment it inherits.
	t.Setenv("ENGINE_TEST_STEP_DELAY", stepDelay)
	base := map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_MODULE": "enginetest", "ENGINE_TINY_MODEL": "true",
		"STORAGE_URL": "file://" + dir, "INFERENCE_STEPS": "10",
		"JOB_DURATION_PER_MEGAPIXEL": "1s", "CONCURRENCY": "1",
	}
	for k, v := range env {
		base[k] = v
	}
	svc := start(t, base)
	waitReady(t, svc, time.Minute)
	return svc, store
}

type outcome struct {
	id         string
	status     int
	code       string
	message    string
	retryAfter string
	at         time.Time
}

func stage(ctx context.Context, svc *service, id, tier string) outcome {
	m := job(id)
	m["strength"] = 1.0
	if tier != "" {
		m["tier"] = tier
	}
	body, _ := json.Marshal(m)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, svc.url+"/infer", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return outcome{id: id, status: -1, code: err.Error(), at: time.Now()}
	}
	defer resp.Body.Close()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return outcome{id, resp.StatusCode, e.Error.Code, e.Error.Message, resp.Header.Get("Retry-After"), time.Now()}
}

// TestSaturationAdmitsExactlyTheCapacity sends 64 concurrent jobs to one
// place and a queue of four: five succeed, every other one is refused at
// once with 429 and a Retry-After.
func TestSaturationAdmitsExactlyTheCapacity(t *testing.T) {
	// Two-second jobs leave a wide margin for all 64 requests to arrive
	// while the first job still runs, even on a loaded machine.
	svc, _ := slowEngine(t, "0.2", map[string]string{"QUEUE_DEPTH": "4", "FREE_QUEUE_SHARE": "1", "JOB_DURATION_PER_MEGAPIXEL": "2s"})
	const n = 64
	results := make([]outcome, n)
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = stage(t.Context(), svc, fmt.Sprintf("sat-%d", i), "")
		}()
	}
	wg.Wait()
	ok, refused := 0, 0
	var slowestRefusal time.Duration
	for _, r := range results {
		switch {
		case r.status == 200:
			ok++
		case r.status == 429 && r.code == "overloaded":
			refused++
			slowestRefusal = max(slowestRefusal, r.at.Sub(begin))
			// Refused on arrival, never after a wait in the queue.
			if !strings.Contains(r.message, "queue of 4 is full") {
				t.Errorf("%s: refused with %q, want the full queue", r.id, r.message)
			}
			if s, err := strconv.Atoi(r.retryAfter); err != nil || s < 1 {
				t.Errorf("%s: Retry-After %q", r.id, r.retryAfter)
			}
		default:
			t.Errorf("%s: %d %s", r.id, r.status, r.code)
		}
	}
	if ok != 5 || refused != n-5 {
		t.Errorf("%d succeeded and %d were refused, want 5 and %d", ok, refused, n-5)
	}
	t.Logf("64 clients: %d ok, %d refused, slowest refusal %v, all done in %v", ok, refused, slowestRefusal, time.Since(begin))
	metrics := string(get(t, svc.url+"/metrics").body)
	if v := metricValue(t, metrics, `vstage_admission_rejections_total{reason="queue_full"}`); v != strconv.Itoa(n-5) {
		t.Errorf("queue_full rejections = %s\n%s", v, grepLines(metrics, "vstage_admission"))
	}
}

// TestTiersAreServedInOrder queues free, pro and business jobs behind a
// running one: business runs next, then pro, then free.
func TestTiersAreServedInOrder(t *testing.T) {
	svc, _ := slowEngine(t, "0.1", map[string]string{"QUEUE_DEPTH": "3", "FREE_QUEUE_SHARE": "1"})
	var wg sync.WaitGroup
	results := make([]outcome, 4)
	for i, tier := range []string{"free", "free", "pro", "business"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = stage(t.Context(), svc, "tier-"+strconv.Itoa(i)+"-"+tier, tier)
		}()
		time.Sleep(150 * time.Millisecond) // arrival order: the first free job runs, the rest queue
	}
	wg.Wait()
	for _, r := range results {
		if r.status != 200 {
			t.Fatalf("%s: %d %s", r.id, r.status, r.code)
		}
	}
	queued := results[1:]
	slices.SortFunc(queued, func(a, b outcome) int { return a.at.Compare(b.at) })
	var order []string
	for _, r := range queued {
		order = append(order, r.id)
	}
	if want := []string{"tier-3-business", "tier-2-pro", "tier-1-free"}; !slices.Equal(order, want) {
		t.Errorf("finished in order %v, want %v", order, want)
	}
}

// TestQueueTimeoutAndDisconnects checks that a job whose expected wait
// passes QUEUE_TIMEOUT is refused at once, and that clients who go away
// leave the queue so their places serve others.
func TestQueueTimeoutAndDisconnects(t *testing.T) {
	svc, _ := slowEngine(t, "0.1", map[string]string{"QUEUE_DEPTH": "4", "FREE_QUEUE_SHARE": "1", "QUEUE_TIMEOUT": "2500ms"})
	running := make(chan outcome, 1)
	go func() { running <- stage(t.Context(), svc, "running", "") }()
	time.Sleep(200 * time.Millisecond)

	// Two queued jobs are expected to wait about 1 s and 2 s; a third
	// would wait about 3 s, past the timeout.
	ctx, cancel := context.WithCancel(t.Context())
	leavers := make(chan outcome, 2)
	for i := range 2 {
		go func() { leavers <- stage(ctx, svc, fmt.Sprintf("leaver-%d", i), "") }()
	}
	time.Sleep(200 * time.Millisecond)
	late := stage(t.Context(), svc, "late", "")
	// At once, from the expected wait; a job let into the queue would be
	// refused only when QUEUE_TIMEOUT passed, with another message.
	if late.status != 429 || late.code != "overloaded" || !strings.Contains(late.message, "expected wait") {
		t.Errorf("third in the queue: %d %s %q, want 429 at once for the expected wait", late.status, late.code, late.message)
	}

	cancel() // the two queued clients go away
	for range 2 {
		if r := <-leavers; r.status != -1 {
			t.Errorf("%s: %d, want a cancelled request", r.id, r.status)
		}
	}
	time.Sleep(100 * time.Millisecond)
	// Their places are free again: two new jobs queue and succeed.
	var wg sync.WaitGroup
	again := make([]outcome, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			again[i] = stage(t.Context(), svc, fmt.Sprintf("again-%d", i), "")
		}()
	}
	wg.Wait()
	for _, r := range again {
		if r.status != 200 {
			t.Errorf("%s after the others left: %d %s", r.id, r.status, r.code)
		}
	}
	if r := <-running; r.status != 200 {
		t.Errorf("running job: %d %s", r.status, r.code)
	}
	metrics := string(get(t, svc.url+"/metrics").body)
	if v := metricValue(t, metrics, `vstage_admission_queue_abandoned_total`); v != "2" {
		t.Errorf("abandoned = %s, want 2", v)
	}
	if v := metricValue(t, metrics, `vstage_admission_rejections_total{reason="queue_timeout"}`); v != "1" {
		t.Errorf("queue_timeout rejections = %s, want 1", v)
	}
}
