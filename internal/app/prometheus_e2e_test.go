package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/app"
	"github.com/vstage/vstage/internal/testsupport"
)

// gpuOnlyRecords can only have series on a node with an NVIDIA driver: they
// are built from NVML's device metrics, which a sidecar without NVML does
// not export at all.
var gpuOnlyRecords = map[string]string{
	"vstage:gpu_memory_used:ratio": "vstage_gpu_memory_*_bytes come from NVML",
}

// TestPrometheusEvaluatesEveryRule runs a real Prometheus with the rules of
// deploy/prometheus/rules.yaml, scraping a self-mode sidecar (on the
// torch-free test engine) every second while it runs jobs of every tier,
// some queued, some refused, some invalid, one lost to an engine crash and
// one refused while the engine restarts.
// Every rule must evaluate without error, and every recording rule must
// have a result, except those built on GPU metrics on a machine without a
// GPU.
func TestPrometheusEvaluatesEveryRule(t *testing.T) {
	begin := time.Now()
	// Every wait below shares one budget, so a stuck part fails the test
	// well within two minutes; a run takes about 25 s.
	left := func() time.Duration { return time.Until(begin.Add(100 * time.Second)) }
	promBin := prometheusBinary(t)
	py := testsupport.EnginePython(t)
	dir := t.TempDir()
	store := localBlobs{dir}
	// A square original: its output is the 1024 px size of the latency SLO.
	store.put(t, "listings/42/empty.jpg", photo(t, 1024, 1024))
	t.Setenv("ENGINE_TEST_STEP_DELAY", "0.05") // 10 steps: half a second a job
	svc := start(t, map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_MODULE": "enginetest", "ENGINE_TINY_MODEL": "true",
		"STORAGE_URL": "file://" + dir, "INFERENCE_STEPS": "10",
		"CONCURRENCY": "1", "QUEUE_DEPTH": "4", "QUEUE_TIMEOUT": "10s", "FREE_QUEUE_SHARE": "1",
		"JOB_DURATION_PER_MEGAPIXEL": "1s", "GPU_HOUR_COST": "3.6", "REQUEST_TIMEOUT": "20s",
		// 3 to 6 s before the engine restarts: room for a refused job.
		"ENGINE_BACKOFF_MIN": "6s", "ENGINE_BACKOFF_MAX": "6s",
	})
	waitReady(t, svc, left())
	prom := startPrometheus(t, promBin, strings.TrimPrefix(svc.url, "http://"))
	t.Logf("sidecar and Prometheus up after %v", time.Since(begin).Round(time.Millisecond))

	// Scrapes before the first job, so the series that exist from the
	// start (refusal reasons, queue wait by tier) have a sample from
	// before their first increase.
	prom.waitForTarget(t, min(20*time.Second, left()))

	// A counter's series appears with its first increment, which rate()
	// cannot see (there is no earlier sample), so each kind of failure
	// happens twice, a scrape apart.
	//
	// One place and a queue of four: a burst of eight runs one, queues
	// four (business, then pro, then free) and refuses three; twice.
	for round := range 2 {
		var wg sync.WaitGroup
		burst := make([]outcome, 8)
		for i, tier := range []string{"free", "free", "pro", "business", "free", "pro", "business", "free"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				burst[i] = stage(t.Context(), svc, fmt.Sprintf("burst-%d-%d", round, i), tier)
			}()
			time.Sleep(20 * time.Millisecond)
		}
		wg.Wait()
		statuses := map[int]int{}
		for _, r := range burst {
			statuses[r.status]++
		}
		if statuses[200] < 2 || statuses[429] < 1 {
			t.Errorf("burst %d: answers by status %v, want some staged and some refused", round, statuses)
		}
		if r := stage(t.Context(), svc, burst[0].id, "free"); r.status != 200 {
			t.Errorf("replay of %s: %d %s", burst[0].id, r.status, r.code)
		}
		bad := job(fmt.Sprintf("bad-style-%d", round))
		bad["style"] = "no-such-style"
		if a := infer(t, svc, bad); a.status != 400 {
			t.Errorf("unknown style: %d %s", a.status, a.body)
		}
		missing := job(fmt.Sprintf("missing-%d", round))
		missing["original_key"] = "listings/42/absent.jpg"
		if a := infer(t, svc, missing); a.status != 404 {
			t.Errorf("missing original: %d %s", a.status, a.body)
		}
	}

	// Server failures: the engine dies under a job, and a job that comes
	// while it waits to restart (ENGINE_BACKOFF_MIN) is refused.
	pid := enginePID(t, svc.logs.String())
	lost := make(chan outcome, 1)
	go func() { lost <- stage(t.Context(), svc, "lost", "pro") }()
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if r := <-lost; r.status != 503 || r.code != "unavailable" {
		t.Errorf("job on a killed engine: %d %s, want 503 unavailable", r.status, r.code)
	}
	time.Sleep(1500 * time.Millisecond)
	if r := stage(t.Context(), svc, "while-restarting", "pro"); r.status != 503 || r.code != "unavailable" {
		t.Errorf("job while the engine restarts: %d %s, want 503 unavailable", r.status, r.code)
	}
	waitReady(t, svc, min(30*time.Second, left()))

	// A few more jobs of each tier, spread over several scrapes.
	for i, tier := range []string{"business", "pro", "free", "business", "pro", "free"} {
		if r := stage(t.Context(), svc, fmt.Sprintf("late-%d", i), tier); r.status != 200 {
			t.Errorf("late-%d: %d %s", i, r.status, r.code)
		}
	}
	jobsDone := time.Now()

	want := app.LoadRules(t)
	gpu := strings.Contains(string(get(t, svc.url+"/metrics").body), "vstage_gpu_up")
	var empty []string
	deadline := time.Now().Add(min(40*time.Second, left()))
	for {
		empty = prom.checkRules(t, want, gpu, jobsDone)
		if len(empty) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(empty) > 0 {
		t.Fatalf("after %v of scrapes, recording rules without a result: %v", time.Since(jobsDone).Round(time.Second), empty)
	}
	t.Logf("every recording rule has a result %v after the last job (%v in all)",
		time.Since(jobsDone).Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))

	// The results mean what they say: the killed job and the refusals are
	// failures, the self jobs cost money, the queue saw every tier.
	for query, check := range map[string]func(float64) bool{
		`vstage:staging_jobs_unavailable:ratio_rate5m{backend="self"}`:                  func(v float64) bool { return v > 0 && v < 0.5 },
		`vstage:staging_jobs_failed:ratio_rate5m{backend="self"}`:                       func(v float64) bool { return v > 0 && v < 0.8 },
		`vstage:staging_job_duration_seconds:p95_rate5m{backend="self",size="1024"}`:    func(v float64) bool { return v > 0.1 && v < 60 },
		`vstage:staging_cost_dollars_per_image:ratio_rate1h{backend="self",tier="pro"}`: func(v float64) bool { return v > 0 && v < 0.01 },
		`vstage:admission_load:ratio`:                                                   func(v float64) bool { return v >= 0 && v <= 5 },
	} {
		vs := prom.query(t, query)
		if len(vs) != 1 || !check(vs[0].value) {
			t.Errorf("%s = %v", query, vs)
		}
	}
	tiers := map[string]bool{}
	for _, s := range prom.query(t, `vstage:admission_queue_wait_seconds:p95_rate5m`) {
		tiers[s.labels["tier"]] = true
	}
	for _, tier := range []string{"business", "pro", "free"} {
		if !tiers[tier] {
			t.Errorf("no queue wait P95 of tier %s: %v", tier, tiers)
		}
	}
}

// prometheusBinary returns the Prometheus server the test runs: $PROMETHEUS
// (the Makefile's), else prometheus on the PATH, which make servers
// installs.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	name := os.Getenv("PROMETHEUS")
	if name == "" {
		name = "prometheus"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("no Prometheus server (%v): run `make servers`, which installs Debian's prometheus package, or set PROMETHEUS to its path", err)
	}
	return path
}

// promServer is a running Prometheus server.
type promServer struct {
	url  string
	logs *testsupport.LogBuffer
}

// startPrometheus runs a Prometheus server with its own data folder on a
// free loopback port, scraping target every second and evaluating the
// rules every second, and stops it when the test ends.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	rules, err := filepath.Abs("../../deploy/prometheus/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: vstage
    static_configs:
      - targets: [%q]
`, rules, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	logs := &testsupport.LogBuffer{}
	ctx, stop := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group, killed with the test binary even on SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		stop()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stop() // SIGTERM, then SIGKILL after WaitDelay
		<-exited
	})
	p := &promServer{url: "http://" + addr, logs: logs}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("prometheus exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 20s:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// api calls a Prometheus HTTP API endpoint and decodes its data.
func (p *promServer) api(t *testing.T, path string, data any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		t.Fatalf("%s: %d %s %v", path, resp.StatusCode, body.Error, err)
	}
	if err := json.Unmarshal(body.Data, data); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// waitForTarget waits until the sidecar has been scraped successfully.
func (p *promServer) waitForTarget(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var targets struct {
			ActiveTargets []struct {
				Health     string `json:"health"`
				LastError  string `json:"lastError"`
				LastScrape string `json:"lastScrape"`
			} `json:"activeTargets"`
		}
		p.api(t, "/api/v1/targets", &targets)
		if len(targets.ActiveTargets) == 1 && targets.ActiveTargets[0].Health == "up" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not scraped within %v: %+v\n%s", within, targets, p.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type sample struct {
	labels map[string]string
	value  float64
}

func (s sample) String() string { return fmt.Sprintf("%v %g", s.labels, s.value) }

// query runs an instant query and returns its vector.
func (p *promServer) query(t *testing.T, q string) []sample {
	t.Helper()
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	p.api(t, "/api/v1/query?query="+url.QueryEscape(q), &data)
	if data.ResultType != "vector" {
		t.Fatalf("%s: result type %s", q, data.ResultType)
	}
	var out []sample
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("%s: value %v", q, r.Value)
		}
		out = append(out, sample{labels: r.Metric, value: v})
	}
	return out
}

// checkRules fails the test for a rule Prometheus could not evaluate or a
// rule file that did not load whole, and returns the recording rules that
// have no result yet (GPU-only ones aside where there is no GPU), once
// each rule has been evaluated since the jobs ended.
func (p *promServer) checkRules(t *testing.T, want app.RuleFile, gpu bool, since time.Time) []string {
	t.Helper()
	var data struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name           string    `json:"name"`
				Type           string    `json:"type"`
				Health         string    `json:"health"`
				LastError      string    `json:"lastError"`
				LastEvaluation time.Time `json:"lastEvaluation"`
			} `json:"rules"`
		} `json:"groups"`
	}
	p.api(t, "/api/v1/rules", &data)
	var loaded, wantNames []string
	var waiting []string
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			loaded = append(loaded, r.Name)
			if r.Health == "err" || r.LastError != "" {
				t.Fatalf("%s (%s) does not evaluate: %s", r.Name, r.Type, r.LastError)
			}
			if r.Type != "recording" {
				continue
			}
			if _, skip := gpuOnlyRecords[r.Name]; skip && !gpu {
				continue
			}
			if r.LastEvaluation.Before(since) || len(p.query(t, r.Name)) == 0 {
				waiting = append(waiting, r.Name)
			}
		}
	}
	for _, r := range want.Rules() {
		wantNames = append(wantNames, r.Record+r.Alert)
	}
	slices.Sort(loaded)
	slices.Sort(wantNames)
	if !slices.Equal(loaded, wantNames) {
		t.Fatalf("Prometheus loaded the rules %v, rules.yaml has %v", loaded, wantNames)
	}
	for name, why := range gpuOnlyRecords {
		if !slices.Contains(wantNames, name) {
			t.Fatalf("%s is listed as GPU-only (%s) but is no rule of rules.yaml", name, why)
		}
	}
	return waiting
}
