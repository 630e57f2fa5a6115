package storage

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestS3AttemptsAreBounded points the store at a server that accepts
// requests and never answers: each call fails after the configured attempts,
// each cut off by the attempt timeout, while the caller's own deadline is
// still far away.
func TestS3AttemptsAreBounded(t *testing.T) {
	isolateAWSConfig(t)
	f := newFakeS3(t)
	st, err := Open(t.Context(), "s3://"+testBucket, Options{
		S3Endpoint: f.srv.URL, S3ForcePathStyle: true, HTTPClient: f.srv.Client(),
		S3AttemptTimeout: 200 * time.Millisecond, S3MaxAttempts: 2, S3MaxBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	for name, call := range map[string]func() error{
		"get": func() error { _, err := st.Get(ctx, "hang", 100); return err },
		"put": func() error { return st.Put(ctx, "hang", []byte("x"), PutOptions{}) },
	} {
		before := f.requests.Load()
		err := call()
		if err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("%s on a silent server: %v, want a failure", name, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s waited for the caller's deadline", name)
		}
		if got := f.requests.Load() - before; got != 2 {
			t.Errorf("%s: the server saw %d attempts, want 2", name, got)
		}
	}
}

// TestS3DeadStoreFailsAtOnce stops the server: a call fails after its
// attempts without waiting for the caller's deadline.
func TestS3DeadStoreFailsAtOnce(t *testing.T) {
	isolateAWSConfig(t)
	f := newFakeS3(t)
	st, err := Open(t.Context(), "s3://"+testBucket, Options{
		S3Endpoint: f.srv.URL, S3ForcePathStyle: true, HTTPClient: f.srv.Client(),
		S3AttemptTimeout: time.Second, S3MaxAttempts: 3, S3MaxBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f.srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	if _, err := st.Get(ctx, "k", 100); err == nil || errors.Is(err, ErrNotFound) || ctx.Err() != nil {
		t.Fatalf("Get on a stopped server: %v (context %v), want a failure before the deadline", err, ctx.Err())
	}
}
