// Package config reads the sidecar's settings from environment variables
// into one typed struct, once, at start. Every setting has a default; a bad
// value stops the start with a message naming the variable and what is
// allowed.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vstage/vstage/internal/admission"
	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/storage"
)

// Config is the sidecar's configuration. The zero value is not valid; use
// Load.
type Config struct {
	ListenAddr string
	// Mode is the real backend, INFERENCE_MODE.
	Mode mode.Mode

	StorageURL       string
	S3Endpoint       string
	S3ForcePathStyle bool
	// S3AttemptTimeout, S3MaxAttempts and S3MaxBackoff bound each S3 call.
	S3AttemptTimeout time.Duration
	S3MaxAttempts    int
	S3MaxBackoff     time.Duration
	AllowedPrefixes  storage.Prefixes
	// StagedKeyTemplate derives the staged object's key; see StagedKey.
	StagedKeyTemplate  string
	StagedCacheControl string
	SeedDemo           bool
	MaxBodyBytes       int64
	MaxHeaderBytes     int64
	MaxInputBytes      int64
	MaxInputPixels     int64
	DecodePixelBudget  int64
	OutputLongSide     int
	OutputJPEGQuality  int
	RequestTimeout     time.Duration
	ShutdownTimeout    time.Duration
	DrainDelay         time.Duration
	LogLevel           slog.Level

	// Engine is the self mode's engine and its supervision.
	Engine Engine
	// Admission limits the jobs on the local GPU (self mode).
	Admission Admission
	// GPU configures NVML monitoring and the memory guard.
	GPU GPU
	// Rollout is the initial routing and its controls.
	Rollout Rollout
	// Managed configures the hosted provider backend.
	Managed Managed
	// Cost prices the work of each backend for the cost metrics.
	Cost Cost
	// Tracing configures what traces may record; the exporter itself is
	// configured by the standard OTEL_* variables.
	Tracing Tracing
	// Disclosure says how staged images are marked as virtually staged.
	Disclosure Disclosure
	// Checks are the content policy and the structure check of self-mode
	// jobs.
	Checks Checks
	// Upscale is the paid tiers' upscaler.
	Upscale Upscale
}

// The content policies of CONTENT_POLICY.
const (
	ContentOff    = "off"
	ContentWarn   = "warn"
	ContentReject = "reject"
)

// MaxStructureRetries bounds QA_RETRIES: each retry is one more full render
// of the job, inside the same request deadline.
const MaxStructureRetries = 3

// Checks configures what the engine checks on every self-mode job.
type Checks struct {
	// ContentPolicy is ContentOff, ContentWarn or ContentReject: what a
	// photo that shows people gets.
	ContentPolicy string
	// StructureMin is the lowest structure score (the share of the
	// original's edges kept, outside the mask) a staged image may have
	// without the warning structure_check_failed; 0 turns the check off.
	StructureMin float64
	// Retries is how many more seeds a job below StructureMin tries.
	Retries int
}

// Upscale configures the upscaler: a job that asks ("upscale": true) is
// rendered at OUTPUT_LONG_SIDE and then brought to LongSide.
type Upscale struct {
	// Enabled allows jobs to ask; when false, one that does is refused.
	Enabled bool
	// Tiers are the tiers allowed to ask, in the order written.
	Tiers []admission.Tier
	// LongSide is the long side of an upscaled image, a multiple of 8.
	LongSide int
}

// Disclosure configures the marking of staged images: every one carries
// the DigitalSourceType metadata; the label is burned in on request.
type Disclosure struct {
	// LabelDefault is the label of requests that do not say.
	LabelDefault bool
	// Text is the label's text.
	Text string
}

// Cost prices backend time, in any currency the operator counts in (the
// metrics say dollars). Zero prices count no cost.
type Cost struct {
	// GPUHour is the price of one GPU for an hour; a self-mode job costs
	// its share of the GPU (one of CONCURRENCY places) for the time it
	// held its place.
	GPUHour float64
	// ManagedPerSecond and ManagedPerRun price the provider's jobs: its
	// reported run time, and each run.
	ManagedPerSecond float64
	ManagedPerRun    float64
}

// Tracing configures traces.
type Tracing struct {
	// Exporter is OTEL_TRACES_EXPORTER: none, otlp or console. The
	// OpenTelemetry SDK reads the exporter's other OTEL_* variables itself.
	Exporter string
	// RecordPrompts adds the prompts to the job's span.
	RecordPrompts bool
}

// Rollout configures the routing between mock and the real backend.
type Rollout struct {
	Enabled       bool
	CanaryPercent int
	AdminAddr     string
	AdminToken    string
	File          string
}

// Managed configures the hosted provider. It is built when Version is set.
type Managed struct {
	BaseURL            string
	Version            string
	Token              string
	TokenFile          string
	CallTimeout        time.Duration
	Wait               time.Duration
	PollInterval       time.Duration
	MaxAttempts        int
	BreakerFailures    int
	BreakerOpenTimeout time.Duration
	FallbackToMock     bool
}

// Admission configures admission control of self-mode jobs.
type Admission struct {
	Concurrency          int
	QueueDepth           int
	QueueTimeout         time.Duration
	FreeQueueShare       float64
	DurationPerMegapixel time.Duration
	VRAMHeadroom         int64
	VRAMBase             int64
	VRAMPerMegapixel     int64
}

// GPU configures NVML monitoring.
type GPU struct {
	SampleInterval  time.Duration
	Device          int
	Dedicated       bool
	MaxEngineMemory int64
}

// Engine configures the engine process of self mode. The engine reads its
// own ENGINE_* variables (sizes, dtype, concurrency) from the environment it
// inherits; these are the ones the sidecar acts on.
type Engine struct {
	Python        string
	Module        string
	ModelDir      string
	TinyModel     bool
	Device        string
	Steps         int
	StartTimeout  time.Duration
	HealthTimeout time.Duration
	StopGrace     time.Duration
	WedgeGrace    time.Duration
	MaxRSS        int64
	MaxJobs       int
	BackoffMin    time.Duration
	BackoffMax    time.Duration
}

// Setting documents one environment variable. Settings lists them all, in
// the order the README shows them.
type Setting struct {
	Name    string
	Default string
	Help    string
}

// Settings is every variable Load reads, with its default.
var Settings = []Setting{
	{"LISTEN_ADDR", "127.0.0.1:8080", "HTTP listen address (host:port)."},
	{"INFERENCE_MODE", "self", "Real backend: self (the supervised engine), managed (a hosted provider) or mock (re-encodes the original, no GPU)."},
	{"INFERENCE_ENABLED", "true", "false is the kill switch: every job goes to mock."},
	{"INFERENCE_CANARY_PERCENT", "100", "Share of image_ids (a stable hash) that go to the real backend; the rest go to mock."},
	{"UPSCALE_ENABLED", "false", "Whether jobs may ask for \"upscale\": true; when false such a job is refused with 400."},
	{"UPSCALE_TIERS", "pro,business", "Comma-separated tiers allowed to upscale; other tiers are refused with 403."},
	{"UPSCALE_LONG_SIDE", "2048", "Long side of an upscaled image in pixels: a multiple of 8 up to 4096, above OUTPUT_LONG_SIDE."},
	{"ADMIN_ADDR", "127.0.0.1:9091", "Admin listener (GET/PUT /admin/rollout); off: none. A non-loopback address needs ADMIN_TOKEN."},
	{"ADMIN_TOKEN", "", "Bearer token of the admin listener."},
	{"ROLLOUT_FILE", "", "JSON file with enabled, mode and canary_percent: read at start (over the variables) and again on SIGHUP."},
	{"STORAGE_URL", "file://<working dir>/var/storage", "file:///abs/dir or s3://bucket[/prefix]."},
	{"S3_ENDPOINT", "", "Endpoint of an S3-compatible server (empty: AWS)."},
	{"S3_FORCE_PATH_STYLE", "false", "Path-style S3 addressing, for S3-compatible servers."},
	{"S3_ATTEMPT_TIMEOUT", "10s", "Bound of one S3 attempt, the body's transfer included; a store that stops answering fails the attempt."},
	{"S3_MAX_ATTEMPTS", "3", "Tries of one S3 call on connection errors, timeouts, throttling and 5xx (jittered backoff; the SDK's retry quota stops retries against a dead store)."},
	{"S3_MAX_BACKOFF", "1s", "Longest wait between two S3 attempts (at least 1ms)."},
	{"ALLOWED_PREFIXES", "", "Comma-separated key folders requests may read and write under; empty allows any."},
	{"STAGED_KEY_TEMPLATE", "{dir}/staged/{image_id}.jpg", "Key of the staged image; {dir} is the original's folder, {name} its file name without extension, {image_id} the request's."},
	{"STAGED_CACHE_CONTROL", "public, max-age=86400", "Cache-Control written with staged images."},
	{"SEED_DEMO", "false", "Write the bundled sample photo at demo/empty_living_room.jpg at start when it is absent."},
	{"MAX_BODY_BYTES", "64KiB", "Largest /infer request body."},
	{"MAX_HEADER_BYTES", "32KiB", "Largest request line and header, on the API and the admin listener; more is answered 431 header_too_large."},
	{"MAX_INPUT_BYTES", "25MiB", "Largest original or mask object read from storage."},
	{"MAX_INPUT_PIXELS", "40000000", "Largest original or mask in pixels, checked from the header before decoding."},
	{"DECODE_PIXEL_BUDGET", "48000000", "Pixels the sidecar decodes at once (mock jobs, mask checks); more wait their turn. At least MAX_INPUT_PIXELS; see Memory."},
	{"OUTPUT_LONG_SIDE", "1024", "Long side of the staged image in pixels (the rendered size of an upscaled job)."},
	{"OUTPUT_JPEG_QUALITY", "90", "JPEG quality of the staged image (1-100)."},
	{"REQUEST_TIMEOUT", "120s", "Deadline of one /infer request, storage and backend included."},
	{"SHUTDOWN_TIMEOUT", "30s", "How long requests in flight may take to finish after SIGTERM."},
	{"DRAIN_DELAY", "0s", "After SIGTERM, how long /readyz answers 503 before the listener closes (lets load balancers notice)."},
	{"LOG_LEVEL", "info", "debug, info, warn or error."},
	{"ENGINE_PYTHON", ".venv/bin/python if present, else python3", "Interpreter that runs the engine (python -m ENGINE_MODULE)."},
	{"ENGINE_MODULE", "inference", "Python module run as the engine; tests run enginetest, a fault-injecting stand-in."},
	{"MODEL_DIR", "", "Folder of diffusers-format models for the engine; self mode needs it, or ENGINE_TINY_MODEL."},
	{"ENGINE_TINY_MODEL", "false", "true: the engine builds a tiny model with random weights instead of loading MODEL_DIR (tests, demos; its model_rev starts with tiny-random)."},
	{"ENGINE_DEVICE", "auto", "auto, cpu or cuda."},
	{"INFERENCE_STEPS", "30", "Denoising steps per job."},
	{"CONTENT_POLICY", "warn", "off, warn or reject: what a photo showing faces or people gets (self mode; the engine detects them before denoising). warn adds the warning people_detected; reject answers 422 content_rejected and writes nothing."},
	{"QA_STRUCTURE_MIN", "0.5", "Lowest structure score (share of the original's edges the staged image keeps, outside the mask) below which a self-mode job gets the warning structure_check_failed; 0 turns the check off. In [0, 1]."},
	{"QA_RETRIES", "0", "Extra renders, with the next seeds, of a job below QA_STRUCTURE_MIN before answering (0 to 3); the answer's seed is the one used."},
	{"ENGINE_START_TIMEOUT", "10m", "Longest time from spawn to ready (model load and warm-up included) before the engine is restarted."},
	{"ENGINE_HEALTH_TIMEOUT", "10s", "How long health checks may fail before the engine is restarted."},
	{"ENGINE_STOP_GRACE", "10s", "Time between SIGTERM and SIGKILL when the engine is stopped."},
	{"ENGINE_WEDGE_GRACE", "10s", "How long the engine may take to confirm that a job it was asked to cancel has ended (while no other job progresses) before it is declared wedged and restarted."},
	{"ENGINE_MAX_RSS", "0", "Engine resident memory that triggers a restart between jobs (e.g. 24GiB); 0: no limit."},
	{"ENGINE_MAX_JOBS", "0", "Restart the engine after this many jobs; 0: never."},
	{"ENGINE_BACKOFF_MIN", "500ms", "First wait between restart attempts; doubles per consecutive failure, with jitter."},
	{"ENGINE_BACKOFF_MAX", "30s", "Longest wait between restart attempts."},
	{"CONCURRENCY", "1", "Jobs on the GPU at once (also the engine's ENGINE_CONCURRENCY)."},
	{"QUEUE_DEPTH", "0", "Jobs that may wait for a place; 0: a busy service answers 429 at once."},
	{"QUEUE_TIMEOUT", "15s", "Longest wait in the queue; a job expected to wait longer is refused at once."},
	{"FREE_QUEUE_SHARE", "0.5", "Largest share of the queue free-tier jobs may hold (at least one place)."},
	{"JOB_DURATION_PER_MEGAPIXEL", "8s", "Job time per output megapixel assumed until jobs have been measured (for Retry-After and queue estimates)."},
	{"VRAM_HEADROOM_MB", "1024", "GPU memory kept free beside the jobs' estimated peaks."},
	{"VRAM_ESTIMATE_BASE_MB", "10240", "Seed of a job's peak GPU memory: base, until the engine reports real peaks."},
	{"VRAM_ESTIMATE_MB_PER_MEGAPIXEL", "4096", "Seed of a job's peak GPU memory: per output megapixel."},
	{"GPU_SAMPLE_INTERVAL", "1s", "Period of NVML samples."},
	{"ENGINE_GPU", "0", "Index of the engine's GPU while its process is not found in NVML's list."},
	{"GPU_DEDICATED", "false", "The GPUs serve this pod alone (needed in containers, where NVML reports host process ids)."},
	{"MANAGED_BASE_URL", "https://api.replicate.com", "Hosted provider's API root (a predictions API shaped like Replicate's)."},
	{"MANAGED_MODEL_VERSION", "", "Model version the provider runs; setting it builds the managed backend."},
	{"MANAGED_API_TOKEN", "", "Provider token (or MANAGED_API_TOKEN_FILE; never logged)."},
	{"MANAGED_API_TOKEN_FILE", "", "File holding the provider token."},
	{"MANAGED_TIMEOUT", "30s", "Bound of one provider HTTP call, inside the request deadline."},
	{"MANAGED_WAIT", "0s", "Ask the provider to hold the create call up to this long (Prefer: wait); 0: poll."},
	{"MANAGED_POLL_INTERVAL", "1s", "Pause between polls of a prediction."},
	{"MANAGED_MAX_ATTEMPTS", "4", "Tries of one provider call on 429, 5xx and timeouts (backoff with jitter, Retry-After honoured)."},
	{"MANAGED_BREAKER_FAILURES", "5", "Consecutive failed jobs that open the provider circuit."},
	{"MANAGED_BREAKER_OPEN_TIMEOUT", "30s", "How long the circuit stays open before a trial job."},
	{"FALLBACK_TO_MOCK", "false", "While the provider circuit is open, answer from mock with warning fallback_mock instead of 502."},
	{"ENGINE_MAX_GPU_MEMORY", "0", "Engine GPU memory, measured between jobs, that triggers a graceful recycle (a leak), e.g. 30GiB; 0: off."},
	{"GPU_HOUR_COST", "0", "Price of one GPU hour, for vstage_staging_cost_dollars_total: a self-mode job costs its place's share (1/CONCURRENCY) of the GPU for the time it held it; 0: not counted."},
	{"MANAGED_COST_PER_SECOND", "0", "Provider's price per second of run time (the run time it reports, else the time the sidecar saw)."},
	{"MANAGED_COST_PER_RUN", "0", "Provider's price per run, added to the per-second price."},
	{"DISCLOSURE_LABEL_DEFAULT", "false", "Whether a request without \"label\" gets the disclosure label burned in; every staged image carries the DigitalSourceType metadata either way."},
	{"DISCLOSURE_TEXT", "Virtually staged", "Text of the disclosure label: 1 to 64 printable characters that the bundled Go Bold font can draw (Latin, Greek, Cyrillic)."},
	{"OTEL_TRACES_EXPORTER", "none", "none, otlp or console: where the sidecar and the engine send their traces; see Tracing for the other OTEL_* variables."},
	{"TRACE_PROMPTS", "false", "true: the job's span records the prompts; off by default, since they can be long and are the business's wording."},
}

// Load reads the configuration through getenv (os.Getenv in production) and
// validates it. wd resolves the default local storage folder and engine
// Python. All problems are reported together.
func Load(getenv func(string) string, wd string) (Config, error) {
	p := parser{getenv: getenv}
	var c Config
	p.server(&c)
	p.images(&c)
	p.storage(&c, wd)
	c.Rollout = p.rollout()
	c.Upscale = p.upscale(c.OutputLongSide)
	c.Managed = p.managed(c.Mode)
	c.Engine = p.engine(wd, c.Mode)
	c.Admission = p.admission()
	c.GPU = p.gpu()
	c.Cost = Cost{
		GPUHour:          p.price("GPU_HOUR_COST"),
		ManagedPerSecond: p.price("MANAGED_COST_PER_SECOND"),
		ManagedPerRun:    p.price("MANAGED_COST_PER_RUN"),
	}
	c.Checks = p.checks()
	c.Disclosure = Disclosure{LabelDefault: p.boolean("DISCLOSURE_LABEL_DEFAULT"), Text: p.str("DISCLOSURE_TEXT")}
	if n := utf8.RuneCountInString(c.Disclosure.Text); n > 64 || !printable(c.Disclosure.Text) {
		p.fail("DISCLOSURE_TEXT", "must be 1 to 64 printable characters, got %q", c.Disclosure.Text)
	}
	c.Tracing = Tracing{Exporter: strings.ToLower(p.str("OTEL_TRACES_EXPORTER")), RecordPrompts: p.boolean("TRACE_PROMPTS")}
	switch c.Tracing.Exporter {
	case "none", "otlp", "console":
	default:
		p.fail("OTEL_TRACES_EXPORTER", "must be none, otlp or console, got %q", c.Tracing.Exporter)
	}
	return c, errors.Join(p.errs...)
}

// server reads the listener, the mode, the log level and the limits of an
// HTTP request.
func (p *parser) server(c *Config) {
	c.ListenAddr = p.str("LISTEN_ADDR")
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		p.fail("LISTEN_ADDR", "must be host:port, e.g. 127.0.0.1:8080 or :8080")
	}
	var err error
	if c.Mode, err = mode.Parse(strings.ToLower(p.str("INFERENCE_MODE"))); err != nil {
		p.fail("INFERENCE_MODE", "must be %s", mode.Choices())
	}
	if err := c.LogLevel.UnmarshalText([]byte(p.str("LOG_LEVEL"))); err != nil {
		p.fail("LOG_LEVEL", "must be debug, info, warn or error")
	}
	c.MaxBodyBytes = p.bytes("MAX_BODY_BYTES", 1<<10, 16<<20)
	c.MaxHeaderBytes = p.bytes("MAX_HEADER_BYTES", 4<<10, 1<<20)
	c.RequestTimeout = p.duration("REQUEST_TIMEOUT", time.Second)
	c.ShutdownTimeout = p.duration("SHUTDOWN_TIMEOUT", 0)
	c.DrainDelay = p.duration("DRAIN_DELAY", 0)
}

// images reads the caps on input images and the output's size and quality.
func (p *parser) images(c *Config) {
	c.MaxInputBytes = p.bytes("MAX_INPUT_BYTES", 1<<10, 1<<30)
	c.MaxInputPixels = p.integer("MAX_INPUT_PIXELS", 1, 1<<31)
	c.DecodePixelBudget = p.integer("DECODE_PIXEL_BUDGET", 1, 1<<34)
	if c.DecodePixelBudget < c.MaxInputPixels {
		p.fail("DECODE_PIXEL_BUDGET", "must be at least MAX_INPUT_PIXELS (%d), or the largest allowed image would never decode", c.MaxInputPixels)
	}
	c.OutputLongSide = int(p.integer("OUTPUT_LONG_SIDE", 64, 8192))
	c.OutputJPEGQuality = int(p.integer("OUTPUT_JPEG_QUALITY", 1, 100))
}

// storage reads where images live, how S3 is called, the keys a request
// may name and how the staged image is written.
func (p *parser) storage(c *Config, wd string) {
	// The documented default names the working directory, which only Load
	// knows.
	c.StorageURL, _ = p.lookup("STORAGE_URL")
	if c.StorageURL == "" {
		c.StorageURL = "file://" + filepath.ToSlash(filepath.Join(wd, "var", "storage"))
	}
	if err := checkStorageURL(c.StorageURL); err != nil {
		p.fail("STORAGE_URL", "%v", err)
	}
	c.S3Endpoint = p.str("S3_ENDPOINT")
	c.S3ForcePathStyle = p.boolean("S3_FORCE_PATH_STYLE")
	c.S3AttemptTimeout = p.duration("S3_ATTEMPT_TIMEOUT", 10*time.Millisecond)
	c.S3MaxAttempts = int(p.integer("S3_MAX_ATTEMPTS", 1, 20))
	c.S3MaxBackoff = p.duration("S3_MAX_BACKOFF", time.Millisecond)
	prefixes, err := storage.ParsePrefixes(p.str("ALLOWED_PREFIXES"))
	if err != nil {
		p.fail("ALLOWED_PREFIXES", "%v", err)
	}
	c.AllowedPrefixes = prefixes
	c.StagedKeyTemplate = p.str("STAGED_KEY_TEMPLATE")
	if err := checkTemplate(c.StagedKeyTemplate); err != nil {
		p.fail("STAGED_KEY_TEMPLATE", "%v", err)
	}
	c.StagedCacheControl = p.str("STAGED_CACHE_CONTROL")
	c.SeedDemo = p.boolean("SEED_DEMO")
}

// rollout reads the initial routing and the admin listener.
func (p *parser) rollout() Rollout {
	r := Rollout{
		Enabled:       p.boolean("INFERENCE_ENABLED"),
		CanaryPercent: int(p.integer("INFERENCE_CANARY_PERCENT", 0, 100)),
		AdminAddr:     p.str("ADMIN_ADDR"),
		AdminToken:    p.str("ADMIN_TOKEN"),
		File:          p.str("ROLLOUT_FILE"),
	}
	if strings.EqualFold(r.AdminAddr, "off") {
		r.AdminAddr = ""
	} else if _, _, err := net.SplitHostPort(r.AdminAddr); err != nil {
		p.fail("ADMIN_ADDR", "must be host:port or off, got %q", r.AdminAddr)
	}
	return r
}

// maxUpscaleLongSide bounds UPSCALE_LONG_SIDE: the engine's default limit
// (ENGINE_MAX_UPSCALE_LONG_SIDE), 16.8 MP at most per image.
const maxUpscaleLongSide = 4096

// upscale reads the upscaler's settings; output is OUTPUT_LONG_SIDE, which
// an enabled upscaler must exceed.
func (p *parser) upscale(output int) Upscale {
	u := Upscale{
		Enabled:  p.boolean("UPSCALE_ENABLED"),
		LongSide: int(p.integer("UPSCALE_LONG_SIDE", 64, maxUpscaleLongSide)),
	}
	if u.LongSide%8 != 0 {
		p.fail("UPSCALE_LONG_SIDE", "must be a multiple of 8, got %d", u.LongSide)
	}
	if u.Enabled && u.LongSide <= output {
		p.fail("UPSCALE_LONG_SIDE", "must be above OUTPUT_LONG_SIDE (%d) while UPSCALE_ENABLED is true, got %d", output, u.LongSide)
	}
	for _, name := range strings.Split(p.str("UPSCALE_TIERS"), ",") {
		name = strings.TrimSpace(name)
		t, err := admission.ParseTier(name)
		if name == "" || err != nil {
			p.fail("UPSCALE_TIERS", "must be a comma-separated list of free, pro and business, got %q", p.str("UPSCALE_TIERS"))
			break
		}
		if !slices.Contains(u.Tiers, t) {
			u.Tiers = append(u.Tiers, t)
		}
	}
	return u
}

// managed reads the hosted provider's settings; m is the configured mode,
// which needs a model version when it is managed.
func (p *parser) managed(m mode.Mode) Managed {
	c := Managed{
		BaseURL:            p.str("MANAGED_BASE_URL"),
		Version:            p.str("MANAGED_MODEL_VERSION"),
		Token:              p.str("MANAGED_API_TOKEN"),
		TokenFile:          p.str("MANAGED_API_TOKEN_FILE"),
		CallTimeout:        p.duration("MANAGED_TIMEOUT", 10*time.Millisecond),
		Wait:               p.duration("MANAGED_WAIT", 0),
		PollInterval:       p.duration("MANAGED_POLL_INTERVAL", time.Millisecond),
		MaxAttempts:        int(p.integer("MANAGED_MAX_ATTEMPTS", 1, 20)),
		BreakerFailures:    int(p.integer("MANAGED_BREAKER_FAILURES", 1, 1000)),
		BreakerOpenTimeout: p.duration("MANAGED_BREAKER_OPEN_TIMEOUT", time.Millisecond),
		FallbackToMock:     p.boolean("FALLBACK_TO_MOCK"),
	}
	if m == mode.Managed && c.Version == "" {
		p.fail("MANAGED_MODEL_VERSION", "is required with INFERENCE_MODE=managed")
	}
	if c.Version != "" && (c.Token == "") == (c.TokenFile == "") {
		p.fail("MANAGED_API_TOKEN", "set exactly one of MANAGED_API_TOKEN and MANAGED_API_TOKEN_FILE with the managed backend")
	}
	return c
}

// admission reads the limits on self-mode jobs.
func (p *parser) admission() Admission {
	return Admission{
		Concurrency:          int(p.integer("CONCURRENCY", 1, 64)),
		QueueDepth:           int(p.integer("QUEUE_DEPTH", 0, 10000)),
		QueueTimeout:         p.duration("QUEUE_TIMEOUT", 0),
		FreeQueueShare:       p.fraction("FREE_QUEUE_SHARE"),
		DurationPerMegapixel: p.duration("JOB_DURATION_PER_MEGAPIXEL", time.Millisecond),
		VRAMHeadroom:         p.integer("VRAM_HEADROOM_MB", 0, 1<<20) << 20,
		VRAMBase:             p.integer("VRAM_ESTIMATE_BASE_MB", 0, 1<<20) << 20,
		VRAMPerMegapixel:     p.integer("VRAM_ESTIMATE_MB_PER_MEGAPIXEL", 0, 1<<20) << 20,
	}
}

// checks reads the content policy and the structure check.
func (p *parser) checks() Checks {
	c := Checks{
		ContentPolicy: strings.ToLower(p.str("CONTENT_POLICY")),
		StructureMin:  p.unit("QA_STRUCTURE_MIN"),
		Retries:       int(p.integer("QA_RETRIES", 0, MaxStructureRetries)),
	}
	switch c.ContentPolicy {
	case ContentOff, ContentWarn, ContentReject:
	default:
		p.fail("CONTENT_POLICY", "must be off, warn or reject, got %q", c.ContentPolicy)
	}
	return c
}

// gpu reads NVML monitoring and the engine's GPU memory limit.
func (p *parser) gpu() GPU {
	return GPU{
		SampleInterval:  p.duration("GPU_SAMPLE_INTERVAL", 10*time.Millisecond),
		Device:          int(p.integer("ENGINE_GPU", 0, 64)),
		Dedicated:       p.boolean("GPU_DEDICATED"),
		MaxEngineMemory: p.bytes("ENGINE_MAX_GPU_MEMORY", 0, 1<<50),
	}
}

// engine reads the engine process's settings; m is the configured mode,
// which needs a model when it is self.
func (p *parser) engine(wd string, m mode.Mode) Engine {
	e := Engine{
		Module:        p.str("ENGINE_MODULE"),
		TinyModel:     p.boolean("ENGINE_TINY_MODEL"),
		Device:        strings.ToLower(p.str("ENGINE_DEVICE")),
		Steps:         int(p.integer("INFERENCE_STEPS", 1, 200)),
		StartTimeout:  p.duration("ENGINE_START_TIMEOUT", time.Second),
		HealthTimeout: p.duration("ENGINE_HEALTH_TIMEOUT", 100*time.Millisecond),
		StopGrace:     p.duration("ENGINE_STOP_GRACE", 0),
		WedgeGrace:    p.duration("ENGINE_WEDGE_GRACE", 0),
		MaxRSS:        p.bytes("ENGINE_MAX_RSS", 0, 1<<50),
		MaxJobs:       int(p.integer("ENGINE_MAX_JOBS", 0, 1<<31)),
		BackoffMin:    p.duration("ENGINE_BACKOFF_MIN", time.Millisecond),
		BackoffMax:    p.duration("ENGINE_BACKOFF_MAX", time.Millisecond),
	}
	switch e.Device {
	case "auto", "cpu", "cuda":
	default:
		p.fail("ENGINE_DEVICE", "must be auto, cpu or cuda, got %q", e.Device)
	}
	if e.BackoffMax < e.BackoffMin {
		p.fail("ENGINE_BACKOFF_MAX", "must not be below ENGINE_BACKOFF_MIN (%s)", e.BackoffMin)
	}
	if dir, ok := p.lookup("MODEL_DIR"); ok {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			p.fail("MODEL_DIR", "%q is not a folder", dir)
		}
		e.ModelDir = dir
		if e.TinyModel {
			p.fail("ENGINE_TINY_MODEL", "must not be true when MODEL_DIR is set: the engine loads one model")
		}
	}
	if !validModule(e.Module) {
		p.fail("ENGINE_MODULE", "must be a Python module name such as inference, got %q", e.Module)
	}
	// Random weights are never served by accident: self mode names its model.
	if m == mode.Self && e.ModelDir == "" && !e.TinyModel {
		p.fail("MODEL_DIR", "is required with INFERENCE_MODE=self (or ENGINE_TINY_MODEL=true for the tiny random model of tests and demos)")
	}
	// The documented default depends on the working directory.
	if py, ok := p.lookup("ENGINE_PYTHON"); ok {
		e.Python = py
	} else if venv := filepath.Join(wd, ".venv", "bin", "python"); isFile(venv) {
		e.Python = venv
	} else {
		e.Python = "python3"
	}
	return e
}

// validModule reports whether name is a dotted Python module name.
func validModule(name string) bool {
	for _, part := range strings.Split(name, ".") {
		if part == "" || (part[0] >= '0' && part[0] <= '9') {
			return false
		}
		for _, r := range part {
			if r != '_' && !(r >= 'a' && r <= 'z') && !(r >= 'A' && r <= 'Z') && !(r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir()
}

func checkStorageURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("must be file:///abs/dir or s3://bucket[/prefix]")
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return errors.New("a file URL needs an absolute path: file:///abs/dir")
		}
	case "s3":
		if u.Host == "" {
			return errors.New("an s3 URL needs a bucket: s3://bucket[/prefix]")
		}
	default:
		return errors.New("must be file:///abs/dir or s3://bucket[/prefix]")
	}
	return nil
}

func checkTemplate(t string) error {
	if !strings.Contains(t, "{image_id}") {
		return errors.New("must contain {image_id}, so every job gets its own key")
	}
	rest := t
	for _, f := range []string{"{dir}", "{name}", "{image_id}"} {
		rest = strings.ReplaceAll(rest, f, "x")
	}
	if strings.ContainsAny(rest, "{}") {
		return errors.New("only {dir}, {name} and {image_id} may be used")
	}
	if strings.HasPrefix(t, "/") || strings.Contains(t, "..") {
		return errors.New("must be a relative key without ..")
	}
	return nil
}

// StagedKey derives the staged image's key from the original's key and the
// image id. The caller validates the result like any other key.
func (c Config) StagedKey(originalKey, imageID string) string {
	dir, file := "", originalKey
	if i := strings.LastIndexByte(originalKey, '/'); i >= 0 {
		dir, file = originalKey[:i], originalKey[i+1:]
	}
	name := strings.TrimSuffix(file, filepath.Ext(file))
	k := strings.NewReplacer("{dir}", dir, "{name}", name, "{image_id}", imageID).Replace(c.StagedKeyTemplate)
	// An original at the top level has no folder; drop the empty segment
	// rather than produce "/staged/...".
	return strings.TrimPrefix(strings.ReplaceAll(k, "//", "/"), "/")
}

type parser struct {
	getenv func(string) string
	errs   []error
}

func (p *parser) fail(name, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

func (p *parser) str(name string) string {
	if v, ok := p.lookup(name); ok {
		return v
	}
	for _, s := range Settings {
		if s.Name == name {
			return s.Default
		}
	}
	panic("config: no default for " + name)
}

func (p *parser) lookup(name string) (string, bool) {
	v := strings.TrimSpace(p.getenv(name))
	return v, v != ""
}

func (p *parser) boolean(name string) bool {
	v, err := strconv.ParseBool(p.str(name))
	if err != nil {
		p.fail(name, "must be true or false, got %q", p.str(name))
	}
	return v
}

func (p *parser) integer(name string, lo, hi int64) int64 {
	s := strings.ReplaceAll(p.str(name), "_", "")
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < lo || v > hi {
		p.fail(name, "must be a whole number from %d to %d, got %q", lo, hi, p.str(name))
	}
	return v
}

func (p *parser) duration(name string, lo time.Duration) time.Duration {
	v, err := time.ParseDuration(p.str(name))
	if err != nil || v < lo {
		p.fail(name, "must be a duration of at least %s such as 30s or 2m, got %q", lo, p.str(name))
	}
	return v
}

// fraction accepts a number in (0, 1].
func (p *parser) fraction(name string) float64 {
	v, err := strconv.ParseFloat(p.str(name), 64)
	if err != nil || !(v > 0 && v <= 1) {
		p.fail(name, "must be a number in (0, 1], got %q", p.str(name))
	}
	return v
}

// unit accepts a number in [0, 1].
func (p *parser) unit(name string) float64 {
	v, err := strconv.ParseFloat(p.str(name), 64)
	if err != nil || !(v >= 0 && v <= 1) {
		p.fail(name, "must be a number in [0, 1], got %q", p.str(name))
	}
	return v
}

// printable reports whether s is non-empty and has no control characters
// nor invalid UTF-8.
func printable(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// price accepts a finite number of at least 0.
func (p *parser) price(name string) float64 {
	v, err := strconv.ParseFloat(p.str(name), 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) || v < 0 {
		p.fail(name, "must be a price of at least 0 such as 2.50, got %q", p.str(name))
	}
	return v
}

// bytes accepts a plain number of bytes or one with a KiB, MiB or GiB
// suffix.
func (p *parser) bytes(name string, lo, hi int64) int64 {
	s := p.str(name)
	v, err := ParseBytes(s)
	if err != nil || v < lo || v > hi {
		p.fail(name, "must be a size from %d to %d bytes (e.g. 64KiB, 25MiB), got %q", lo, hi, s)
	}
	return v
}

// ParseBytes parses "1024", "64KiB", "25MiB" or "1GiB".
func ParseBytes(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse size %q: %w", s, err)
	}
	if n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	return n * mult, nil
}
