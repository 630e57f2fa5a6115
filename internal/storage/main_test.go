package storage

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind: the concurrency
// tests start many, and the S3 tests run an HTTP server and client.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
