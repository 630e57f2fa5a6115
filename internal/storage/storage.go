// Package storage is vstage's blob store: a small interface with an S3
// implementation (aws-sdk-go-v2) and a local-folder implementation, and the
// key policy that both enforce.
//
// Every key passed to a Store is checked with [ValidateKey] on every call, so
// a caller that forgets to validate still cannot reach outside the store.
package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Errors reported by a Store. They are always wrapped with the key and the
// operation; test for them with [errors.Is].
var (
	// ErrNotFound means that no object exists under the key.
	ErrNotFound = errors.New("object not found")
	// ErrTooLarge means that the object is larger than the caller's limit.
	ErrTooLarge = errors.New("object too large")
	// ErrInvalidKey means that the key breaks the key policy; see [ValidateKey].
	ErrInvalidKey = errors.New("invalid key")
	// ErrExists means that a Put with [PutOptions.IfAbsent] found an object
	// under the key already; nothing was written.
	ErrExists = errors.New("object already exists")
)

// Store is a small blob store.
//
// Implementations are safe for concurrent use by multiple goroutines.
type Store interface {
	// Get returns the object's bytes. It fails with an error wrapping
	// ErrNotFound when the key does not exist, and ErrTooLarge when the
	// object is larger than maxBytes (checked from the size before reading
	// when possible, and enforced while reading in any case). A negative
	// maxBytes is an error.
	Get(ctx context.Context, key string, maxBytes int64) ([]byte, error)
	// Put writes the object atomically: readers see the previous object or
	// the new one, never a partial object. With opts.IfAbsent it writes only
	// when no object exists under the key, and fails with an error wrapping
	// ErrExists otherwise; of two such writers racing, exactly one wins.
	Put(ctx context.Context, key string, data []byte, opts PutOptions) error
	// Delete removes the object. A key with no object is not an error.
	Delete(ctx context.Context, key string) error
	// Close releases the store's resources. Calls after Close fail.
	Close() error
}

// PutOptions holds the metadata written with an object and how it is
// written. An empty metadata field is not sent. The local store has no place
// for metadata and ignores it.
type PutOptions struct {
	ContentType  string
	CacheControl string
	// IfAbsent makes the write conditional: it happens only when no object
	// exists under the key (If-None-Match: * on S3, an exclusive link on the
	// local disk). This is what lets several replicas agree on who runs a job.
	IfAbsent bool
	// Ephemeral marks an object that need not survive a power cut, such as
	// a lease that expires anyway: the local store then skips its fsyncs.
	Ephemeral bool
}

// Options configures [Open]. The zero value suits AWS S3.
type Options struct {
	// S3Endpoint is the base URL of an S3-compatible server, such as
	// "http://127.0.0.1:9000". Empty means the AWS endpoint for the region.
	S3Endpoint string
	// S3ForcePathStyle addresses buckets as http://host/bucket/key rather
	// than http://bucket.host/key, which most S3-compatible servers need.
	S3ForcePathStyle bool
	// HTTPClient sends the S3 requests. Nil means the SDK's default client.
	// The SDK cannot apply AWS_CA_BUNDLE to a client given here, and Open
	// fails if both are set.
	HTTPClient *http.Client
	// S3AttemptTimeout bounds one S3 attempt, connection, request and the
	// reading of the response body included, so that a store that has
	// stopped answering fails the attempt instead of holding the request
	// until its own deadline. Zero means no bound.
	S3AttemptTimeout time.Duration
	// S3MaxAttempts is how many times a failed S3 call that may succeed
	// later is tried (connection errors, timeouts, throttling, 5xx); zero
	// means the SDK's default of 3.
	S3MaxAttempts int
	// S3MaxBackoff caps the jittered wait between attempts; zero means the
	// SDK's default of 20s.
	S3MaxBackoff time.Duration
	// TracerProvider and Propagator trace the S3 calls (GetObject,
	// PutObject spans through the SDK's middleware); nil traces nothing.
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
}

// Open opens the store named by rawURL:
//
//   - "file:///abs/dir" is a folder on the local disk, created with mode
//     0o750 if missing; see [NewLocal].
//   - "s3://bucket" or "s3://bucket/some/prefix" is an S3 bucket, with the
//     prefix, if any, prepended as "some/prefix/" to every key; see [NewS3].
//     Region and credentials come from the standard AWS chain
//     (environment, shared files, or a role). When no region is configured
//     and opts.S3Endpoint is set, the region defaults to "us-east-1", which
//     S3-compatible servers accept.
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// The parse error quotes the URL, which could carry a password.
		return nil, errors.New("storage: STORAGE_URL is not a valid URL; want file:///abs/dir or s3://bucket[/prefix]")
	}
	if u.User != nil {
		return nil, fmt.Errorf("storage: %s URL must not contain user information; S3 credentials come from the AWS chain", u.Scheme)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("storage: URL %q must not have a query or fragment", u.Redacted())
	}
	switch u.Scheme {
	case "file":
		dir, err := fileURLPath(u)
		if err != nil {
			return nil, err
		}
		return NewLocal(dir)
	case "s3":
		bucket, prefix, err := s3URLParts(u)
		if err != nil {
			return nil, err
		}
		client, err := newS3Client(ctx, opts)
		if err != nil {
			return nil, err
		}
		return NewS3(client, bucket, prefix), nil
	default:
		return nil, fmt.Errorf("storage: URL %q has scheme %q; want file:///abs/dir or s3://bucket[/prefix]", u.Redacted(), u.Scheme)
	}
}

// fileURLPath returns the absolute folder named by a file URL.
func fileURLPath(u *url.URL) (string, error) {
	if u.Opaque != "" || (u.Host != "" && u.Host != "localhost") {
		// "file://var/data" parses with host "var": almost always a
		// relative path written with two slashes instead of three.
		return "", fmt.Errorf("storage: URL %q is not file:///abs/dir (three slashes, absolute path)", u.Redacted())
	}
	dir := filepath.FromSlash(u.Path)
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("storage: URL %q must name an absolute folder, as in file:///abs/dir", u.Redacted())
	}
	return filepath.Clean(dir), nil
}

// s3URLParts splits s3://bucket/some/prefix into the bucket and the key
// prefix "some/prefix/" (empty when the URL has no path).
func s3URLParts(u *url.URL) (bucket, prefix string, err error) {
	bucket = u.Host
	if bucket == "" || u.Opaque != "" {
		return "", "", fmt.Errorf("storage: URL %q has no bucket; want s3://bucket[/prefix]", u.Redacted())
	}
	if !validBucketName(bucket) {
		return "", "", fmt.Errorf("storage: bucket %q: want 3 to 63 characters of a-z, 0-9, '.' and '-'", bucket)
	}
	p := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if p == "" {
		return bucket, "", nil
	}
	if err := ValidateKey(p); err != nil {
		return "", "", fmt.Errorf("storage: URL %q has a bad prefix: %w", u.Redacted(), err)
	}
	return bucket, p + "/", nil
}

// validBucketName is deliberately loose: S3 has more rules, and the server
// enforces them; this only keeps odd characters out of URLs and messages.
func validBucketName(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for _, c := range []byte(b) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// readLimited reads r to the end, failing with ErrTooLarge as soon as more
// than maxBytes arrive. size is the announced length, or -1 when unknown; it
// only sizes the buffer, because the limit must hold even when it lies.
func readLimited(r io.Reader, size, maxBytes int64) ([]byte, error) {
	var buf bytes.Buffer
	if size > 0 && size <= maxBytes {
		buf.Grow(int(min(size, 64<<20)))
	}
	limit := maxBytes
	if limit < math.MaxInt64 {
		limit++ // one byte past the cap tells "exactly maxBytes" from "more"
	}
	n, err := buf.ReadFrom(io.LimitReader(r, limit))
	if err != nil {
		return nil, err
	}
	if n > maxBytes {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, maxBytes)
	}
	return buf.Bytes(), nil
}

// checkGet holds the argument checks shared by every Get.
func checkGet(ctx context.Context, key string, maxBytes int64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if maxBytes < 0 {
		return fmt.Errorf("maxBytes is %d; want 0 or more", maxBytes)
	}
	return ctx.Err()
}
