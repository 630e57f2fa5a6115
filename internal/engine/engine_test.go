package engine

import (
	"bytes"
	"context"
	"image/jpeg"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

func TestStageWithTheRealEngine(t *testing.T) {
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-engine")
	t.Setenv("VSTAGE_TEST_PASSWORD", "not-for-the-engine")
	h := start(t, python(t))
	took := h.waitReady(20 * time.Second)
	t.Logf("engine ready %v after Run", took)

	info := h.s.Info()
	if info.GetBackend() != "test" || info.GetLimits().GetMaxLongSide() != 256 {
		t.Errorf("Info = %v", info)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.s.Stage(ctx, stageRequest("room-1"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(res.GetImage()))
	if err != nil {
		t.Fatalf("result is not a JPEG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 128 || b.Dy() != 96 || res.GetWidth() != 128 || res.GetHeight() != 96 {
		t.Errorf("result %v, %dx%d; want 128x96", b, res.GetWidth(), res.GetHeight())
	}
	if res.GetModelRev() != "test-invert-v1" {
		t.Errorf("model_rev %q", res.GetModelRev())
	}

	// The engine's own failure comes back as its status, with its reason.
	bad := stageRequest("room-2")
	bad.Steps = 0
	_, err = h.s.Stage(ctx, bad)
	if status.Code(err) != codes.InvalidArgument || Reason(err) != enginev1.FailureReason_FAILURE_REASON_OUT_OF_RANGE {
		t.Errorf("zero steps: %v (reason %v)", err, Reason(err))
	}

	h.waitFor("no job in flight", 2*time.Second, func() bool { return testutil.ToFloat64(h.s.m.inFlight) == 0 })
	h.waitFor("an RSS sample", 2*time.Second, func() bool { return testutil.ToFloat64(h.s.m.rss) > 1<<20 })
	if testutil.ToFloat64(h.s.m.up) != 1 || testutil.ToFloat64(h.s.m.ready) != 1 {
		t.Errorf("up %v ready %v", testutil.ToFloat64(h.s.m.up), testutil.ToFloat64(h.s.m.ready))
	}
	logs := h.logs.String()
	if !hasLine(logs, `"msg":"job done"`) || !hasLine(logs, `"job_id":"room-1~1"`) || !hasLine(logs, `"source":"engine"`) {
		t.Errorf("engine log lines missing from the sidecar's log")
	}

	env, err := os.ReadFile("/proc/" + strconv.Itoa(h.s.Status().PID) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(env, []byte("not-for-the-engine")) {
		t.Error("credentials reached the engine's environment")
	}
	if h.restarts(ReasonExit)+h.restarts(ReasonHealth) != 0 {
		t.Error("unexpected restart")
	}
}

// A job whose caller leaves returns at once, and keeps its slot until the
// engine answers Cancel, that is once its worker is free: here the test
// engine holds the worker after the cancellation until it is released. The
// engine logs only errors, so no log line can play a part; no wedge is
// declared.
func TestCancelledJobIsReleasedWhenTheEngineSaysItEnded(t *testing.T) {
	t.Parallel()
	o := python(t, "--log-level", "error")
	o.Slots = 1
	o.WedgeGrace = time.Minute
	h := start(t, o)
	h.waitReady(20 * time.Second)
	pid := h.s.Status().PID
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := h.s.Stage(withFault(ctx, "sleep=30,hold="+dir), stageRequest("cancel-me"))
		done <- err
	}()
	h.waitFor("job running", 10*time.Second, func() bool { return exists(filepath.Join(dir, "running")) })
	cancel()
	select {
	case err := <-done:
		if status.Code(err) != codes.Canceled {
			t.Errorf("Stage = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Stage did not return after cancel")
	}
	// The engine still holds the worker: the job must stay in flight, so
	// the next job waits for the slot.
	next := make(chan error, 1)
	go func() {
		_, err := h.s.Stage(context.Background(), stageRequest("next"))
		next <- err
	}()
	for range 25 {
		if st := h.s.Status(); st.InFlight != 1 {
			t.Fatalf("in flight %d while the engine holds the cancelled job's worker", st.InFlight)
		}
		select {
		case err := <-next:
			t.Fatalf("the next job ran (%v) while the cancelled one held the slot", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-next:
		if err != nil {
			t.Errorf("next job: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the slot was not released after the engine let go of the job")
	}
	h.waitFor("no job in flight", 5*time.Second, func() bool { return h.s.Status().InFlight == 0 })
	if hasLine(h.logs.String(), `"msg":"job stopped"`) {
		t.Error("the engine logged below error level")
	}
	if h.restarts(ReasonWedged) != 0 || h.s.Status().PID != pid || h.s.Ready() != nil {
		t.Errorf("wedged %v, pid %d (was %d), ready %v", h.restarts(ReasonWedged), h.s.Status().PID, pid, h.s.Ready())
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Closing the supervisor stops and reaps the engine and removes the socket
// directory.
func TestRunReturnsAfterReapingTheEngine(t *testing.T) {
	t.Parallel()
	o := python(t)
	o.SocketDir = t.TempDir()
	// Registered first, so it runs after the harness has stopped Run.
	t.Cleanup(func() {
		if entries, _ := os.ReadDir(o.SocketDir); len(entries) != 0 {
			t.Errorf("socket dir left behind: %v", entries)
		}
	})
	h := start(t, o)
	h.waitReady(20 * time.Second)
	entries, _ := os.ReadDir(o.SocketDir)
	if len(entries) != 1 {
		t.Fatalf("socket dir entries: %v", entries)
	}
	fi, err := os.Stat(filepath.Join(o.SocketDir, entries[0].Name()))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %v (%v)", fi.Mode(), err)
	}
	if _, err := h.s.Stage(context.Background(), stageRequest("x")); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Run(context.Background()); err == nil {
		t.Error("a second Run must fail")
	}
}
