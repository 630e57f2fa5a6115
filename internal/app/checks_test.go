package app_test

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	demo "github.com/vstage/vstage/internal/sample"
	"github.com/vstage/vstage/internal/testsupport"
)

// astronaut is scikit-image's astronaut photo (Eileen Collins, NASA, public
// domain) as a 512 px JPEG: a face and a person the content policy must
// find. The Python tests check that it is the photo scikit-image ships.
func astronaut(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/astronaut.jpg")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// startChecked runs a self-mode service on the test engine with env added,
// and puts the astronaut and the demo room (an empty room) in its store.
func startChecked(t *testing.T, env map[string]string) (*service, localBlobs) {
	t.Helper()
	py := testsupport.EnginePython(t)
	dir := t.TempDir()
	store := localBlobs{dir}
	store.put(t, "listings/1/astronaut.jpg", astronaut(t))
	store.put(t, "listings/1/room.jpg", demo.JPEG())
	base := map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_MODULE": "enginetest", "ENGINE_TINY_MODEL": "true",
		"STORAGE_URL": "file://" + dir, "INFERENCE_STEPS": "2",
	}
	maps.Copy(base, env)
	svc := start(t, base)
	waitReady(t, svc, time.Minute)
	return svc, store
}

func checkedJob(id, key string, seed int) map[string]any {
	return map[string]any{"image_id": id, "original_key": key, "room_type": "living_room", "style": "scandinavian", "seed": seed}
}

func TestContentPolicyThroughTheService(t *testing.T) {
	t.Run("reject", func(t *testing.T) {
		svc, store := startChecked(t, map[string]string{"CONTENT_POLICY": "reject", "QA_STRUCTURE_MIN": "0"})
		before := store.snapshot(t)
		a := infer(t, svc, checkedJob("astro", "listings/1/astronaut.jpg", 1))
		if a.status != 422 || a.errorCode(t) != "content_rejected" {
			t.Fatalf("astronaut under reject: %d %s, want 422 content_rejected", a.status, a.body)
		}
		if a.header.Get("Retry-After") != "" || !strings.Contains(string(a.body), `"retryable":false`) {
			t.Errorf("a refusal by policy is not retryable: %s %v", a.body, a.header)
		}
		if after := store.snapshot(t); !maps.Equal(before, after) {
			t.Errorf("a rejected job wrote to the store: %v -> %v", before, after)
		}
		room := decodeStaged(t, infer(t, svc, checkedJob("room", "listings/1/room.jpg", 1)))
		if len(room.Warnings) != 0 {
			t.Errorf("the empty room got warnings %q", room.Warnings)
		}
		m := string(get(t, svc.url+"/metrics").body)
		for decision, want := range map[string]string{"pass": "1", "warn": "0", "reject": "1"} {
			if n := metricValue(t, m, `vstage_content_policy_decisions_total{decision="`+decision+`"}`); n != want {
				t.Errorf("%s decisions = %s, want %s", decision, n, want)
			}
		}
		if n := metricValue(t, m, `vstage_staging_jobs_total{backend="self",outcome="content_rejected",tier="free"}`); n != "1" {
			t.Errorf("content_rejected jobs = %s, want 1", n)
		}
		if n := metricValue(t, m, `vstage_engine_phase_duration_seconds_count{phase="content_check"}`); n != "1" {
			t.Errorf("content_check phases = %s, want 1 (the room's; a refused job has no phases counted)", n)
		}
	})
	t.Run("warn", func(t *testing.T) {
		svc, _ := startChecked(t, map[string]string{"QA_STRUCTURE_MIN": "0"}) // CONTENT_POLICY defaults to warn
		astro := decodeStaged(t, infer(t, svc, checkedJob("astro", "listings/1/astronaut.jpg", 1)))
		if !slices.Equal(astro.Warnings, []string{"people_detected"}) {
			t.Errorf("astronaut under warn: warnings %q, want people_detected", astro.Warnings)
		}
		m := string(get(t, svc.url+"/metrics").body)
		if n := metricValue(t, m, `vstage_content_policy_decisions_total{decision="warn"}`); n != "1" {
			t.Errorf("warn decisions = %s, want 1", n)
		}
	})
}

func TestStructureCheckThroughTheService(t *testing.T) {
	t.Run("shifted output", func(t *testing.T) {
		// The test engine rolls every output 64 px: the walls move.
		t.Setenv("ENGINE_TEST_JOB_FAULTS", "shift=64")
		svc, _ := startChecked(t, map[string]string{"CONTENT_POLICY": "off"}) // QA_STRUCTURE_MIN defaults to 0.5
		got := decodeStaged(t, infer(t, svc, checkedJob("room", "listings/1/room.jpg", 5)))
		if !slices.Equal(got.Warnings, []string{"structure_check_failed"}) || *got.Seed != 5 {
			t.Errorf("shifted room: warnings %q, seed %d; want structure_check_failed, seed 5", got.Warnings, *got.Seed)
		}
		m := string(get(t, svc.url+"/metrics").body)
		for series, want := range map[string]string{
			`vstage_structure_check_failures_total`:                                    "1",
			`vstage_structure_score_count`:                                             "1",
			`vstage_structure_score_bucket{le="0.5"}`:                                  "1",
			`vstage_structure_retries_total`:                                           "0",
			`vstage_engine_phase_duration_seconds_count{phase="structure_check"}`:      "1",
			`vstage_engine_phase_duration_seconds_count{phase="content_check"}`:        "0",
			`vstage_content_policy_decisions_total{decision="pass"}`:                   "0",
			`vstage_staging_jobs_total{backend="self",outcome="ok",tier="free"}`:       "1",
			`vstage_staging_jobs_total{backend="self",outcome="internal",tier="free"}`: "0",
		} {
			if n := metricValue(t, m, series); n != want {
				t.Errorf("%s = %s, want %s", series, n, want)
			}
		}
	})
	t.Run("retry passes", func(t *testing.T) {
		// Only the first render is shifted: the retry, with the next seed,
		// keeps the walls.
		t.Setenv("ENGINE_TEST_JOB_FAULTS", "shift=64,shift_renders=1")
		svc, _ := startChecked(t, map[string]string{"CONTENT_POLICY": "off", "QA_RETRIES": "2"})
		req := checkedJob("room", "listings/1/room.jpg", 5)
		got := decodeStaged(t, infer(t, svc, req))
		if len(got.Warnings) != 0 || *got.Seed != 6 {
			t.Errorf("retried room: warnings %q, seed %d; want none, seed 6 (the retry's)", got.Warnings, *got.Seed)
		}
		// The same request (seed 5) is the same job: replayed with the
		// answered seed, not refused as a conflict.
		again := infer(t, svc, req)
		replay := decodeStaged(t, again)
		if again.header.Get("Idempotent-Replay") != "true" || *replay.Seed != 6 || replay.StagedKey != got.StagedKey {
			t.Errorf("replay: %d %s %v", again.status, again.body, again.header)
		}
		m := string(get(t, svc.url+"/metrics").body)
		for series, want := range map[string]string{
			`vstage_structure_retries_total`:        "1",
			`vstage_structure_check_failures_total`: "0",
			`vstage_structure_score_count`:          "1",
		} {
			if n := metricValue(t, m, series); n != want {
				t.Errorf("%s = %s, want %s", series, n, want)
			}
		}
		// The engine logs the job once its result is sent.
		svc.logged(t, "engine job line saying it rendered twice", func(logs string) bool {
			return strings.Contains(logs, `"attempts":2`)
		})
	})
}
