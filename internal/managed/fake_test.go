package managed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testToken = "r8_secret_token_value"

// fakeProvider is a predictions API on loopback whose faults each test
// sets before the first call.
type fakeProvider struct {
	srv *httptest.Server

	// createStatus answers the first creates with these statuses, in order,
	// before creates succeed; retryAfter goes with them.
	createStatus []int
	retryAfter   string
	failEvery    atomic.Bool // answer every request with 500 while set
	pollsToEnd   int         // polls answered "processing" before the end
	final        string      // the end status; default succeeded
	errText      string      // the error of a failed prediction
	malformed    bool        // creates answer broken JSON
	delay        time.Duration
	image        []byte
	inline       bool // output as a data URI instead of a URL
	echoToken    bool // 5xx bodies repeat the Authorization header
	// linkBase, when set, is the origin of the prediction's links and
	// output instead of the fake's own.
	linkBase string
	// predictTime is the run time succeeded predictions report (metrics.predict_time).
	predictTime float64

	total, creates, polls, downloads atomic.Int32
	traceparents                     atomic.Int32 // requests that carried one
	inflight                         atomic.Int32

	mu     sync.Mutex
	preds  map[string]*prediction
	nPolls map[string]int
	byKey  map[string]string
	last   struct {
		auth, key, prefer string
		body              map[string]any
	}
}

func newFake(t *testing.T) *fakeProvider {
	t.Helper()
	f := &fakeProvider{image: testPNG(t, 32, 24), preds: map[string]*prediction{}, nPolls: map[string]int{}, byKey: map[string]string{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func testPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range m.Pix {
		m.Pix[i] = uint8(i)
	}
	m.Set(0, 0, color.White)
	var buf bytes.Buffer
	if err := png.Encode(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func (f *fakeProvider) serve(w http.ResponseWriter, r *http.Request) {
	f.total.Add(1)
	if r.Header.Get("Traceparent") != "" {
		f.traceparents.Add(1)
	}
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	// Reading the body first lets the server notice a client that hangs
	// up during the delay, so that no handler outlives its caller.
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			return
		}
	}
	if f.failEvery.Load() {
		msg := "upstream exploded"
		if f.echoToken {
			msg += " for " + r.Header.Get("Authorization")
		}
		http.Error(w, msg, http.StatusInternalServerError)
		return
	}
	if r.URL.Path == "/files/out.png" {
		f.downloads.Add(1)
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(f.image)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		http.Error(w, `{"detail":"Unauthenticated"}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/predictions":
		f.create(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/predictions/"):
		f.poll(w, strings.TrimPrefix(r.URL.Path, "/v1/predictions/"))
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeProvider) create(w http.ResponseWriter, r *http.Request) {
	n := int(f.creates.Add(1))
	if n <= len(f.createStatus) {
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		http.Error(w, `{"detail":"try again"}`, f.createStatus[n-1])
		return
	}
	if f.malformed {
		_, _ = w.Write([]byte(`{"id": "p1", "status": `))
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last.auth, f.last.key, f.last.prefer, f.last.body = r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key"), r.Header.Get("Prefer"), body
	if id, ok := f.byKey[f.last.key]; ok && f.last.key != "" {
		writeJSON(w, http.StatusCreated, f.preds[id])
		return
	}
	id := "p" + strconv.Itoa(len(f.preds)+1)
	p := &prediction{ID: id, Status: statusStarting}
	p.URLs.Get = f.links() + "/v1/predictions/" + id
	f.preds[id], f.byKey[f.last.key] = p, id
	if f.last.prefer != "" || f.pollsToEnd == 0 {
		f.finish(p)
	}
	writeJSON(w, http.StatusCreated, p)
}

func (f *fakeProvider) poll(w http.ResponseWriter, id string) {
	f.polls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.preds[id]
	if !ok {
		http.NotFound(w, nil)
		return
	}
	f.nPolls[id]++
	if f.nPolls[id] >= f.pollsToEnd && !terminal(p.Status) {
		f.finish(p)
	} else if !terminal(p.Status) {
		p.Status = statusProcessing
	}
	writeJSON(w, http.StatusOK, p)
}

func (f *fakeProvider) finish(p *prediction) {
	p.Status = f.final
	if p.Status == "" {
		p.Status = statusSucceeded
	}
	switch p.Status {
	case statusSucceeded:
		out := f.links() + "/files/out.png"
		if f.inline {
			out = dataURI(f.image)
		}
		p.Output, _ = json.Marshal([]string{out})
		p.Metrics.PredictTime = f.predictTime
	case statusFailed:
		p.Error, _ = json.Marshal(f.errText)
	}
}

func (f *fakeProvider) links() string {
	if f.linkBase != "" {
		return f.linkBase
	}
	return f.srv.URL
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeProvider) String() string {
	return fmt.Sprintf("total=%d creates=%d polls=%d downloads=%d", f.total.Load(), f.creates.Load(), f.polls.Load(), f.downloads.Load())
}
