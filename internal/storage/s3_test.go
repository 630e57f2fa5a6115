package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

const testBucket = "vstage-test"

// fakeS3 is an in-memory S3-compatible server over real HTTP, with a few
// switches to misbehave in ways the real service might.
type fakeS3 struct {
	srv      *httptest.Server
	requests atomic.Int64
	// noLength makes GET answers chunked, without Content-Length.
	noLength atomic.Bool

	mu   sync.Mutex
	puts map[string]http.Header // request headers of each PUT, by path
}

func newFakeS3(t *testing.T) *fakeS3 {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket(testBucket); err != nil {
		t.Fatal(err)
	}
	s3h := gofakes3.New(backend).Server()
	f := &fakeS3{puts: make(map[string]http.Header)}
	quit := make(chan struct{})
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		if strings.HasSuffix(r.URL.Path, "/hang") {
			// Stands for a server that accepted the request and went quiet.
			// The server notices a client hanging up only once the body
			// has been read; quit frees the handler if it never does.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-quit:
			}
			return
		}
		if r.Method == http.MethodPut {
			f.mu.Lock()
			f.puts[r.URL.Path] = r.Header.Clone()
			f.mu.Unlock()
		}
		if r.Method == http.MethodGet && f.noLength.Load() {
			w = &noLengthWriter{ResponseWriter: w}
		}
		s3h.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(quit) }) // runs first: cleanups run last-in first-out
	return f
}

// client returns an SDK client for the server with static credentials and
// path-style addressing.
func (f *fakeS3) client() *s3.Client {
	return s3.New(s3.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDVSTAGETEST", "test-secret-key", ""),
		BaseEndpoint: aws.String(f.srv.URL),
		UsePathStyle: true,
		HTTPClient:   f.srv.Client(),
	})
}

func (f *fakeS3) putHeader(path string) http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.puts[path]
}

// noLengthWriter drops Content-Length, so the body goes out chunked and the
// client learns the size only by reading.
type noLengthWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *noLengthWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.Header().Del("Content-Length")
	}
	w.ResponseWriter.WriteHeader(code)
	// Sending the header now stops the server from measuring a short body
	// and adding the length back.
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

func (w *noLengthWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func TestS3RoundTrip(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	defer st.Close()

	data := bytes.Repeat([]byte{0xff, 0xd8, 0x00, 0x01}, 1000)
	opts := PutOptions{ContentType: "image/jpeg", CacheControl: "public, max-age=31536000, immutable"}
	if err := st.Put(ctx, "listings/1/staged/x.jpg", data, opts); err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, "listings/1/staged/x.jpg", int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("Get returned %d bytes, want the %d written", len(got), len(data))
	}

	head, err := f.client().HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(testBucket),
		Key:    aws.String("listings/1/staged/x.jpg"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ct := aws.ToString(head.ContentType); ct != opts.ContentType {
		t.Errorf("Content-Type = %q, want %q", ct, opts.ContentType)
	}
	if n := aws.ToInt64(head.ContentLength); n != int64(len(data)) {
		t.Errorf("Content-Length = %d, want %d", n, len(data))
	}
	// gofakes3 keeps Content-Type but drops Cache-Control, so that one is
	// checked where S3 would take it from: the PUT request itself.
	if cc := head.CacheControl; cc != nil && *cc != opts.CacheControl {
		t.Errorf("stored Cache-Control = %q, want %q", *cc, opts.CacheControl)
	}
	sent := f.putHeader("/" + testBucket + "/listings/1/staged/x.jpg")
	if cc := sent.Get("Cache-Control"); cc != opts.CacheControl {
		t.Errorf("PUT sent Cache-Control %q, want %q", cc, opts.CacheControl)
	}
	if ct := sent.Get("Content-Type"); ct != opts.ContentType {
		t.Errorf("PUT sent Content-Type %q, want %q", ct, opts.ContentType)
	}
}

func TestS3PutWithoutMetadata(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	if err := st.Put(ctx, "a/empty", nil, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, "a/empty", 0)
	if err != nil || len(got) != 0 {
		t.Errorf("Get of an empty object = %q, %v", got, err)
	}
	if cc := f.putHeader("/" + testBucket + "/a/empty").Get("Cache-Control"); cc != "" {
		t.Errorf("PUT sent Cache-Control %q for empty options", cc)
	}
}

func TestS3NotFound(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	_, err := st.Get(ctx, "listings/missing.jpg", 100)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "listings/missing.jpg") {
		t.Errorf("message %q does not name the key", err)
	}

	// A missing bucket is a configuration error, not a missing object.
	st = NewS3(f.client(), "no-such-bucket", "")
	if _, err := st.Get(ctx, "x", 100); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Get from a missing bucket = %v, want an error other than ErrNotFound", err)
	}
}

func TestS3TooLarge(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	data := bytes.Repeat([]byte("z"), 1000)
	if err := st.Put(ctx, "big", data, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := st.Get(ctx, "big", 999)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Get = %v, want ErrTooLarge", err)
	}
	if !strings.Contains(err.Error(), "1000 bytes") {
		t.Errorf("message %q does not say the size came from Content-Length", err)
	}
	if got, err := st.Get(ctx, "big", 1000); err != nil || len(got) != 1000 {
		t.Errorf("Get at the limit = %d bytes, %v", len(got), err)
	}
}

func TestS3TooLargeWithoutContentLength(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	data := bytes.Repeat([]byte("z"), 1000)
	if err := st.Put(ctx, "big", data, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	f.noLength.Store(true)
	_, err := st.Get(ctx, "big", 999)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Get = %v, want ErrTooLarge", err)
	}
	if !strings.Contains(err.Error(), "more than 999 bytes") {
		t.Errorf("message %q: the limit should have been hit while reading", err)
	}
	if got, err := st.Get(ctx, "big", 1000); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Get at the limit = %d bytes, %v", len(got), err)
	}
}

func TestS3Prefix(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	prefixed := NewS3(f.client(), testBucket, "tenant/a/")
	bare := NewS3(f.client(), testBucket, "")
	if err := prefixed.Put(ctx, "x/y.jpg", []byte("in tenant"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := bare.Get(ctx, "tenant/a/x/y.jpg", 100); err != nil || string(got) != "in tenant" {
		t.Errorf("object under the full key = %q, %v", got, err)
	}
	if _, err := bare.Get(ctx, "x/y.jpg", 100); !errors.Is(err, ErrNotFound) {
		t.Errorf("object under the bare key: %v, want ErrNotFound", err)
	}
	if got, err := prefixed.Get(ctx, "x/y.jpg", 100); err != nil || string(got) != "in tenant" {
		t.Errorf("prefixed Get = %q, %v", got, err)
	}
}

func TestS3Cancellation(t *testing.T) {
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	before := f.requests.Load()
	if _, err := st.Get(ctx, "k", 10); !errors.Is(err, context.Canceled) {
		t.Errorf("Get = %v, want context.Canceled", err)
	}
	if err := st.Put(ctx, "k", []byte("x"), PutOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Put = %v, want context.Canceled", err)
	}
	if n := f.requests.Load() - before; n != 0 {
		t.Errorf("a cancelled context still sent %d requests", n)
	}

	// A server that stops answering: the deadline must end the call.
	for name, call := range map[string]func(context.Context) error{
		"get": func(ctx context.Context) error { _, err := st.Get(ctx, "slow/hang", 10); return err },
		"put": func(ctx context.Context) error { return st.Put(ctx, "slow/hang", []byte("x"), PutOptions{}) },
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		start := time.Now()
		err := call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a silent server = %v, want context.DeadlineExceeded", name, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s took %v to notice the deadline", name, d)
		}
	}
}

func TestS3RejectsInvalidKeysWithoutARequest(t *testing.T) {
	ctx := t.Context()
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "tenant/")
	for _, key := range []string{"../escape", "/abs", "a//b", "a\x00", ""} {
		if err := st.Put(ctx, key, []byte("x"), PutOptions{}); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", key, err)
		}
		if _, err := st.Get(ctx, key, 10); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Get(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
	if n := f.requests.Load(); n != 0 {
		t.Errorf("invalid keys sent %d requests", n)
	}
}

func TestS3Closed(t *testing.T) {
	f := newFakeS3(t)
	st := NewS3(f.client(), testBucket, "")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(t.Context(), "k", []byte("x"), PutOptions{}); err == nil {
		t.Error("Put after Close succeeded")
	}
	if _, err := st.Get(t.Context(), "k", 10); err == nil {
		t.Error("Get after Close succeeded")
	}
}

// isolateAWSConfig points the AWS chain at test-only values, so that the
// machine's own profile, region or credentials play no part.
func isolateAWSConfig(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CA_BUNDLE", "") // the SDK cannot add it to a plain *http.Client
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDVSTAGETEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
}

// TestOpenS3 goes through Open as the service does: credentials from the
// environment, no region set, an endpoint and path style from Options.
func TestOpenS3(t *testing.T) {
	isolateAWSConfig(t)
	ctx := t.Context()
	f := newFakeS3(t)
	st, err := Open(ctx, "s3://"+testBucket+"/some/prefix/", Options{
		S3Endpoint:       f.srv.URL,
		S3ForcePathStyle: true,
		HTTPClient:       f.srv.Client(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Put(ctx, "k.txt", []byte("via Open"), PutOptions{ContentType: "text/plain"}); err != nil {
		t.Fatal(err)
	}
	bare := NewS3(f.client(), testBucket, "")
	if got, err := bare.Get(ctx, "some/prefix/k.txt", 100); err != nil || string(got) != "via Open" {
		t.Errorf("object under the URL's prefix = %q, %v", got, err)
	}
	if got, err := st.Get(ctx, "k.txt", 100); err != nil || string(got) != "via Open" {
		t.Errorf("Get through Open = %q, %v", got, err)
	}
}
