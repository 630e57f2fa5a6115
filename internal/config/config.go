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
	"strconv"
	"strings"
	"time"

	"github.com/vstage/vstage/internal/storage"
)

// Mode selects the backend that produces staged images.
type Mode string

// The inference modes.
const (
	ModeMock    Mode = "mock"
	ModeManaged Mode = "managed"
	ModeSelf    Mode = "self"
)

// Config is the sidecar's configuration. The zero value is not valid; use
// Load.
type Config struct {
	ListenAddr string
	Mode       Mode

	StorageURL       string
	S3Endpoint       string
	S3ForcePathStyle bool
	AllowedPrefixes  storage.Prefixes
	// StagedKeyTemplate derives the staged object's key; see StagedKey.
	StagedKeyTemplate  string
	StagedCacheControl string
	SeedDemo           bool
	MaxBodyBytes       int64
	MaxInputBytes      int64
	MaxInputPixels     int64
	OutputLongSide     int
	OutputJPEGQuality  int
	RequestTimeout     time.Duration
	ShutdownTimeout    time.Duration
	DrainDelay         time.Duration
	LogLevel           slog.Level

	// Engine is the self mode's engine and its supervision.
	Engine Engine
}

// Engine configures the engine process of self mode. The engine reads its
// own ENGINE_* variables (sizes, dtype, concurrency) from the environment it
// inherits; these are the ones the sidecar acts on.
type Engine struct {
	Python        string
	ModelDir      string
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
	{"INFERENCE_MODE", "self", "Backend: self (the supervised engine) or mock (re-encodes the original, no GPU)."},
	{"STORAGE_URL", "file://<working dir>/var/storage", "file:///abs/dir or s3://bucket[/prefix]."},
	{"S3_ENDPOINT", "", "Endpoint of an S3-compatible server (empty: AWS)."},
	{"S3_FORCE_PATH_STYLE", "false", "Path-style S3 addressing, for S3-compatible servers."},
	{"ALLOWED_PREFIXES", "", "Comma-separated key folders requests may read and write under; empty allows any."},
	{"STAGED_KEY_TEMPLATE", "{dir}/staged/{image_id}.jpg", "Key of the staged image; {dir} is the original's folder, {name} its file name without extension, {image_id} the request's."},
	{"STAGED_CACHE_CONTROL", "public, max-age=86400", "Cache-Control written with staged images."},
	{"SEED_DEMO", "false", "Write the bundled sample photo at demo/empty_living_room.jpg at start when it is absent."},
	{"MAX_BODY_BYTES", "64KiB", "Largest /infer request body."},
	{"MAX_INPUT_BYTES", "25MiB", "Largest original or mask object read from storage."},
	{"MAX_INPUT_PIXELS", "40000000", "Largest original or mask in pixels, checked from the header before decoding."},
	{"OUTPUT_LONG_SIDE", "1024", "Long side of the staged image in pixels (never upscaled)."},
	{"OUTPUT_JPEG_QUALITY", "90", "JPEG quality of the staged image (1-100)."},
	{"REQUEST_TIMEOUT", "120s", "Deadline of one /infer request, storage and backend included."},
	{"SHUTDOWN_TIMEOUT", "30s", "How long requests in flight may take to finish after SIGTERM."},
	{"DRAIN_DELAY", "0s", "After SIGTERM, how long /readyz answers 503 before the listener closes (lets load balancers notice)."},
	{"LOG_LEVEL", "info", "debug, info, warn or error."},
	{"ENGINE_PYTHON", ".venv/bin/python if present, else python3", "Interpreter that runs the engine (python -m inference)."},
	{"MODEL_DIR", "", "Folder of diffusers-format models for the engine; empty: the engine's tiny random model (tests, demos)."},
	{"ENGINE_DEVICE", "auto", "auto, cpu or cuda."},
	{"INFERENCE_STEPS", "30", "Denoising steps per job."},
	{"ENGINE_START_TIMEOUT", "10m", "Longest time from spawn to ready (model load and warm-up included) before the engine is restarted."},
	{"ENGINE_HEALTH_TIMEOUT", "10s", "How long health checks may fail before the engine is restarted."},
	{"ENGINE_STOP_GRACE", "10s", "Time between SIGTERM and SIGKILL when the engine is stopped."},
	{"ENGINE_WEDGE_GRACE", "10s", "How long a job may outlive its deadline unacknowledged before the engine is declared wedged and restarted."},
	{"ENGINE_MAX_RSS", "0", "Engine resident memory that triggers a restart between jobs (e.g. 24GiB); 0: no limit."},
	{"ENGINE_MAX_JOBS", "0", "Restart the engine after this many jobs; 0: never."},
	{"ENGINE_BACKOFF_MIN", "500ms", "First wait between restart attempts; doubles per consecutive failure, with jitter."},
	{"ENGINE_BACKOFF_MAX", "30s", "Longest wait between restart attempts."},
}

// Load reads the configuration through getenv (os.Getenv in production) and
// validates it. wd resolves the default local storage folder. All problems
// are reported together.
func Load(getenv func(string) string, wd string) (Config, error) {
	p := parser{getenv: getenv}
	c := Config{
		ListenAddr:         p.str("LISTEN_ADDR"),
		Mode:               Mode(strings.ToLower(p.str("INFERENCE_MODE"))),
		S3Endpoint:         p.str("S3_ENDPOINT"),
		S3ForcePathStyle:   p.boolean("S3_FORCE_PATH_STYLE"),
		StagedKeyTemplate:  p.str("STAGED_KEY_TEMPLATE"),
		StagedCacheControl: p.str("STAGED_CACHE_CONTROL"),
		SeedDemo:           p.boolean("SEED_DEMO"),
		MaxBodyBytes:       p.bytes("MAX_BODY_BYTES", 1<<10, 16<<20),
		MaxInputBytes:      p.bytes("MAX_INPUT_BYTES", 1<<10, 1<<30),
		MaxInputPixels:     p.integer("MAX_INPUT_PIXELS", 1, 1<<31),
		OutputLongSide:     int(p.integer("OUTPUT_LONG_SIDE", 64, 8192)),
		OutputJPEGQuality:  int(p.integer("OUTPUT_JPEG_QUALITY", 1, 100)),
		RequestTimeout:     p.duration("REQUEST_TIMEOUT", time.Second),
		ShutdownTimeout:    p.duration("SHUTDOWN_TIMEOUT", 0),
		DrainDelay:         p.duration("DRAIN_DELAY", 0),
	}
	prefixes, err := storage.ParsePrefixes(p.str("ALLOWED_PREFIXES"))
	if err != nil {
		p.fail("ALLOWED_PREFIXES", "%v", err)
	}
	c.AllowedPrefixes = prefixes
	if err := c.LogLevel.UnmarshalText([]byte(p.str("LOG_LEVEL"))); err != nil {
		p.fail("LOG_LEVEL", "must be debug, info, warn or error")
	}
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		p.fail("LISTEN_ADDR", "must be host:port, e.g. 127.0.0.1:8080 or :8080")
	}
	switch c.Mode {
	case ModeMock, ModeSelf:
	case ModeManaged:
		p.fail("INFERENCE_MODE", "%q is not available in this build; use self or mock", c.Mode)
	default:
		p.fail("INFERENCE_MODE", "must be self, mock or managed")
	}
	c.Engine = p.engine(wd)
	// The documented default names the working directory, which only Load
	// knows.
	c.StorageURL, _ = p.lookup("STORAGE_URL")
	if c.StorageURL == "" {
		c.StorageURL = "file://" + filepath.ToSlash(filepath.Join(wd, "var", "storage"))
	}
	if err := checkStorageURL(c.StorageURL); err != nil {
		p.fail("STORAGE_URL", "%v", err)
	}
	if err := checkTemplate(c.StagedKeyTemplate); err != nil {
		p.fail("STAGED_KEY_TEMPLATE", "%v", err)
	}
	return c, errors.Join(p.errs...)
}

func (p *parser) engine(wd string) Engine {
	e := Engine{
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
