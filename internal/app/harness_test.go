package app_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/vstage/vstage/internal/app"
	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

const bucket = "vstage-e2e"

// blobs is what a test needs of a store: put fixtures, read results, and
// list everything to prove that nothing was written.
type blobs interface {
	put(t *testing.T, key string, data []byte)
	get(t *testing.T, key string) ([]byte, bool)
	snapshot(t *testing.T) map[string]string // key -> sha256
}

// localBlobs is a folder on disk, as the file:// store sees it.
type localBlobs struct{ dir string }

func (l localBlobs) put(t *testing.T, key string, data []byte) {
	t.Helper()
	p := filepath.Join(l.dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

func (l localBlobs) get(t *testing.T, key string) ([]byte, bool) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(l.dir, filepath.FromSlash(key)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return data, true
}

func (l localBlobs) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(l.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(l.dir, p)
		out[filepath.ToSlash(rel)] = digest(data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// s3Blobs is an S3-compatible server over real HTTP.
type s3Blobs struct {
	srv    *httptest.Server
	client *s3.Client
	prefix string

	mu   sync.Mutex
	puts map[string]int // successful PUTs by path
}

// putsOf counts the objects written under a request path, /bucket/key.
func (s *s3Blobs) putsOf(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts[path]
}

// newS3 starts an in-memory S3 server. delayGet, when set, holds GETs of
// that key for the given time, so a request can be caught in flight.
func newS3(t *testing.T, prefix string, delayGet map[string]time.Duration) *s3Blobs {
	t.Helper()
	be := s3mem.New()
	if err := be.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	h := gofakes3.New(be).Server()
	blobs := &s3Blobs{prefix: prefix, puts: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, ok := delayGet[r.URL.Path]; ok && r.Method == http.MethodGet {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		sw := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		if r.Method == http.MethodPut && sw.status == http.StatusOK {
			blobs.mu.Lock()
			blobs.puts[r.URL.Path]++
			blobs.mu.Unlock()
		}
	}))
	t.Cleanup(srv.Close)
	// The service reads credentials from the standard chain; keep the
	// machine's own AWS files out of it.
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_CONFIG_FILE": filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_PROFILE": "", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_ACCESS_KEY_ID": "AKIDE2E", "AWS_SECRET_ACCESS_KEY": "e2e-secret", "AWS_SESSION_TOKEN": "",
	} {
		t.Setenv(k, v)
	}
	blobs.srv = srv
	blobs.client = s3.New(s3.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDE2E", "e2e-secret", ""),
		BaseEndpoint: aws.String(srv.URL),
		UsePathStyle: true,
	})
	return blobs
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func decodeJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%v: %s", err, data)
	}
}

func (s *s3Blobs) url() string { return "s3://" + bucket + "/" + s.prefix }

func (s *s3Blobs) put(t *testing.T, key string, data []byte) {
	t.Helper()
	_, err := s.client.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(s.prefix + key), Body: bytes.NewReader(data),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *s3Blobs) head(t *testing.T, key string) *s3.HeadObjectOutput {
	t.Helper()
	out, err := s.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(s.prefix + key)})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *s3Blobs) get(t *testing.T, key string) ([]byte, bool) {
	t.Helper()
	out, err := s.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(s.prefix + key)})
	if err != nil {
		return nil, false
	}
	defer out.Body.Close()
	data, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return data, true
}

func (s *s3Blobs) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	list, err := s.client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range list.Contents {
		key := aws.ToString(o.Key)
		data, _ := s.get(t, key[len(s.prefix):])
		out[key] = digest(data)
	}
	return out
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// service is a running sidecar.
type service struct {
	url      string
	adminURL string
	stop     func() error
	logs     *testsupport.LogBuffer
}

// start runs the sidecar with the given settings on a loopback port and
// stops it when the test ends.
func start(t *testing.T, env map[string]string) *service {
	t.Helper()
	return startWithReload(t, env, nil)
}

// startWithReload is start with a channel standing for SIGHUP.
func startWithReload(t *testing.T, env map[string]string, reload <-chan os.Signal) *service {
	t.Helper()
	return startTraced(t, env, reload, telemetry.NoTracing())
}

// startTraced is startWithReload with the given tracing.
func startTraced(t *testing.T, env map[string]string, reload <-chan os.Signal, tr *telemetry.Tracing) *service {
	t.Helper()
	cfg, err := config.Load(func(k string) string {
		if v, ok := env[k]; ok || k != "INFERENCE_MODE" {
			return v
		}
		return "mock" // the tests that need the engine say so
	}, t.TempDir())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &testsupport.LogBuffer{}
	log := telemetry.NewLogger(logs, slog.LevelDebug)
	a, err := app.New(t.Context(), cfg, log, tr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := app.ServeOptions{Reload: reload}
	adminURL := ""
	if cfg.Rollout.AdminAddr != "" {
		if opts.Admin, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		adminURL = "http://" + opts.Admin.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln, opts) }()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &service{url: "http://" + ln.Addr().String(), adminURL: adminURL, stop: stop, logs: logs}
}

// logged waits up to 5 s for the service's log to satisfy ok and returns
// it. The request's own line is written after its answer has been sent.
func (s *service) logged(t *testing.T, what string, ok func(logs string) bool) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs := s.logs.String()
		if ok(logs) {
			return logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the log within 5s:\n%s", what, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answer is a decoded HTTP answer.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) errorCode(t *testing.T) string {
	t.Helper()
	var e struct {
		Error struct {
			Code      string `json:"code"`
			Message   string `json:"message"`
			Retryable *bool  `json:"retryable"`
		} `json:"error"`
	}
	if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" || e.Error.Retryable == nil {
		t.Fatalf("not an error body (%v): %s", err, a.body)
	}
	return e.Error.Code
}

func post(t *testing.T, url, contentType string, body []byte) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, req)
}

func get(t *testing.T, url string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: body}
}

func infer(t *testing.T, s *service, fields map[string]any) answer {
	t.Helper()
	body, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return post(t, s.url+"/infer", "application/json", body)
}

// photo returns a w×h JPEG with some structure, as a camera would give.
func photo(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x ^ y) & 0xff), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 85}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pngClaiming returns a PNG that is only a signature and a header chunk
// claiming w×h pixels: a few dozen bytes that would decode to gigabytes.
func pngClaiming(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := []byte("IHDR\x00\x00\x00\x00\x00\x00\x00\x00\x08\x02\x00\x00\x00")
	ihdr[4], ihdr[5], ihdr[6], ihdr[7] = byte(w>>24), byte(w>>16), byte(w>>8), byte(w)
	ihdr[8], ihdr[9], ihdr[10], ihdr[11] = byte(h>>24), byte(h>>16), byte(h>>8), byte(h)
	b.Write([]byte{0, 0, 0, 13})
	b.Write(ihdr)
	crc := crc32.ChecksumIEEE(ihdr)
	b.Write([]byte{byte(crc >> 24), byte(crc >> 16), byte(crc >> 8), byte(crc)})
	return b.Bytes()
}

func pngOf(t *testing.T, w, h int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// withOrientation inserts an EXIF block with the given orientation tag
// right after a JPEG's SOI marker, as a phone camera writes it.
func withOrientation(jpg []byte, orientation uint16) []byte {
	tiff := []byte{'M', 'M', 0, 42, 0, 0, 0, 8, // big-endian header, IFD at 8
		0, 1, // one entry
		0x01, 0x12, 0, 3, 0, 0, 0, 1, byte(orientation >> 8), byte(orientation), 0, 0, // Orientation, SHORT, 1
		0, 0, 0, 0} // no next IFD
	payload := append([]byte("Exif\x00\x00"), tiff...)
	seg := []byte{0xff, 0xe1, byte((len(payload) + 2) >> 8), byte(len(payload) + 2)}
	out := append([]byte{}, jpg[:2]...)
	out = append(out, seg...)
	out = append(out, payload...)
	return append(out, jpg[2:]...)
}

// hasMarker reports whether a JPEG has a segment with the given marker
// before its scan data.
func hasMarker(jpg []byte, marker byte) bool {
	for i := 2; i+4 <= len(jpg); {
		if jpg[i] != 0xff {
			return false
		}
		m := jpg[i+1]
		if m == marker {
			return true
		}
		if m == 0xda { // start of scan: no more header segments
			return false
		}
		i += 2 + int(jpg[i+2])<<8 | int(jpg[i+3])
	}
	return false
}
