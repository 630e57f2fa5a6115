package engine

import (
	"context"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/testsupport"
)

// BenchmarkRecoveryAfterSIGKILL measures the time from a SIGKILL of a ready
// engine (the test engine) to a new engine being ready, with the default
// backoff and health settings.
func BenchmarkRecoveryAfterSIGKILL(b *testing.B) {
	py := testsupport.EnginePython(b)
	s, err := New(Options{
		Python: py,
		Module: "enginetest",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	waitNew := func(old int) {
		for t0 := time.Now(); s.Ready() != nil || s.Status().PID == old; time.Sleep(time.Millisecond) {
			if time.Since(t0) > 30*time.Second {
				b.Fatalf("not ready: %v", s.Ready())
			}
		}
	}
	waitNew(0)
	b.ResetTimer()
	for range b.N {
		pid := s.Status().PID
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		waitNew(pid)
		b.StopTimer()
		// Past BackoffMax the failure count resets; without this wait each
		// iteration would measure a longer backoff than the last.
		s.mu.Lock()
		s.failures = 0
		s.mu.Unlock()
		b.StartTimer()
	}
}
