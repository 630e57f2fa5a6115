package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"go.opentelemetry.io/contrib/instrumentation/github.com/aws/aws-sdk-go-v2/otelaws"
)

// S3 is a [Store] kept in an S3 bucket, or in a bucket of an S3-compatible
// server. PutObject replaces an object in one step, so writes are atomic.
type S3 struct {
	client *s3.Client
	bucket string
	prefix string
	closed atomic.Bool
}

var _ Store = (*S3)(nil)

// defaultRegion is used for S3-compatible servers when the AWS chain names
// no region: the SDK refuses to sign without one, and such servers accept it.
const defaultRegion = "us-east-1"

// NewS3 returns a store kept in bucket. A non-empty prefix, such as
// "some/prefix/", is prepended to every key as is; [Open] derives it from the
// URL with the trailing slash added. The caller keeps ownership of client.
func NewS3(client *s3.Client, bucket, prefix string) *S3 {
	return &S3{client: client, bucket: bucket, prefix: prefix}
}

// newS3Client builds a client from the standard AWS chain and opts.
func newS3Client(ctx context.Context, opts Options) (*s3.Client, error) {
	var loadOpts []func(*config.LoadOptions) error
	// A typed nil inside the interface would be called and panic, so the
	// option is only passed with a client in it.
	if opts.HTTPClient != nil {
		loadOpts = append(loadOpts, config.WithHTTPClient(opts.HTTPClient))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("storage: load AWS configuration: %w", err)
	}
	if cfg.Region == "" && opts.S3Endpoint != "" {
		cfg.Region = defaultRegion
	}
	if err := limitAttempts(&cfg, opts); err != nil {
		return nil, err
	}
	if opts.TracerProvider != nil {
		tracing := []otelaws.Option{otelaws.WithTracerProvider(opts.TracerProvider)}
		if opts.Propagator != nil {
			tracing = append(tracing, otelaws.WithTextMapPropagator(opts.Propagator))
		}
		otelaws.AppendMiddlewares(&cfg.APIOptions, tracing...)
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if opts.S3Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.S3Endpoint)
		}
		o.UsePathStyle = opts.S3ForcePathStyle
		// S3-compatible servers often send no checksum; the SDK would log a
		// line to stderr, outside our logger, on every such read.
		o.DisableLogOutputChecksumValidationSkipped = true
	}), nil
}

// limitAttempts gives every S3 call a bound per attempt (through the HTTP
// client's timeout, which also covers reading the body after the call
// returns) and the retry settings of opts. The SDK's standard retryer
// retries connection errors, timeouts, throttling and 5xx answers with
// jittered backoff, and its retry quota makes calls fail at once, without
// retrying, once a dead store has used it up.
func limitAttempts(cfg *aws.Config, opts Options) error {
	if opts.S3AttemptTimeout > 0 {
		switch c := cfg.HTTPClient.(type) {
		case nil:
			cfg.HTTPClient = awshttp.NewBuildableClient().WithTimeout(opts.S3AttemptTimeout)
		case *awshttp.BuildableClient:
			cfg.HTTPClient = c.WithTimeout(opts.S3AttemptTimeout)
		case *http.Client:
			bounded := *c
			bounded.Timeout = opts.S3AttemptTimeout
			cfg.HTTPClient = &bounded
		default:
			return fmt.Errorf("storage: cannot bound S3 attempts with an HTTP client of type %T", cfg.HTTPClient)
		}
	}
	cfg.Retryer = func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			if opts.S3MaxAttempts > 0 {
				o.MaxAttempts = opts.S3MaxAttempts
			}
			if opts.S3MaxBackoff > 0 {
				o.MaxBackoff = opts.S3MaxBackoff
			}
		})
	}
	return nil
}

// Get implements [Store]. It refuses an object larger than maxBytes from
// the response's Content-Length, before reading the body.
func (s *S3) Get(ctx context.Context, key string, maxBytes int64) ([]byte, error) {
	if err := checkGet(ctx, key, maxBytes); err != nil {
		return nil, opError("get", key, err)
	}
	if s.closed.Load() {
		return nil, opError("get", key, errClosed)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil {
		return nil, opError("get", key, s3NotFound(err))
	}
	defer out.Body.Close()
	size := int64(-1)
	if out.ContentLength != nil {
		size = *out.ContentLength
	}
	if size > maxBytes {
		return nil, opError("get", key, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, maxBytes))
	}
	// The length may be absent (chunked) or wrong; the limit still holds.
	data, err := readLimited(out.Body, size, maxBytes)
	if err != nil {
		return nil, opError("get", key, err)
	}
	return data, nil
}

// Put implements [Store]. It sets Content-Type and Cache-Control from opts
// when they are not empty; opts.IfAbsent sends If-None-Match: *, which S3
// and compatible servers answer with 412 (or 409 while another conditional
// write of the key is in progress) when the key exists.
func (s *S3) Put(ctx context.Context, key string, data []byte, opts PutOptions) error {
	if err := ValidateKey(key); err != nil {
		return opError("put", key, err)
	}
	if err := ctx.Err(); err != nil {
		return opError("put", key, err)
	}
	if s.closed.Load() {
		return opError("put", key, errClosed)
	}
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(s.prefix + key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	}
	if opts.ContentType != "" {
		in.ContentType = aws.String(opts.ContentType)
	}
	if opts.CacheControl != "" {
		in.CacheControl = aws.String(opts.CacheControl)
	}
	if opts.IfAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := s.client.PutObject(ctx, in); err != nil {
		if opts.IfAbsent && s3Exists(err) {
			err = fmt.Errorf("%w: %w", ErrExists, err)
		}
		return opError("put", key, err)
	}
	return nil
}

// Delete implements [Store].
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return opError("delete", key, err)
	}
	if err := ctx.Err(); err != nil {
		return opError("delete", key, err)
	}
	if s.closed.Load() {
		return opError("delete", key, errClosed)
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	// S3 answers 204 for a missing key; some compatible servers say 404.
	if err != nil && !errors.Is(s3NotFound(err), ErrNotFound) {
		return opError("delete", key, err)
	}
	return nil
}

// s3Exists reports whether a conditional PutObject failed because the key
// exists: 412 Precondition Failed, or 409 when a concurrent conditional
// write of the same key is still in progress (the other writer wins).
func s3Exists(err error) bool {
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) {
		switch respErr.HTTPStatusCode() {
		case http.StatusPreconditionFailed, http.StatusConflict:
			return true
		}
	}
	return false
}

// Close marks the store closed; later calls fail. The client is left as is:
// its idle connections close on their own.
func (s *S3) Close() error {
	s.closed.Store(true)
	return nil
}

var errClosed = errors.New("store is closed")

// s3NotFound adds ErrNotFound to the errors that mean the object is missing.
// A missing bucket is also a 404, but it is a configuration error, not a
// missing object, and must not turn into a client's 404.
func s3NotFound(err error) error {
	var noKey *types.NoSuchKey
	if errors.As(err, &noKey) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchBucket" {
		return err
	}
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) && respErr.HTTPStatusCode() == http.StatusNotFound {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}
