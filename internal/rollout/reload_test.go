package rollout

import (
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/testsupport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(2 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestReloadOnSIGHUP(t *testing.T) {
	var logs testsupport.LogBuffer
	r := newRouter(t, State{Enabled: true, Mode: mode.Self, CanaryPercent: 10}, WithAvailable(mode.Self),
		WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
	path := writeFile(t, `{"enabled": true, "mode": "self", "canary_percent": 60}`)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.ReloadOn(t.Context(), sig, path)
	}()
	// Stop guarantees no further delivery, so closing sig is then safe.
	defer func() { signal.Stop(sig); close(sig); <-done }()

	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reload", func() bool { return r.Get().CanaryPercent == 60 })

	// A broken file is logged and changes nothing.
	if err := os.WriteFile(path, []byte(`{"enabled": tru`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the failure to be logged", func() bool { return strings.Contains(logs.String(), "rollout reload failed") })
	if got := r.Get(); got != (State{Enabled: true, Mode: mode.Self, CanaryPercent: 60}) {
		t.Fatalf("a broken file changed the state to %+v", got)
	}
}
