package backend

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/vstage/vstage/internal/fault"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

func TestSelfSendsTheChecks(t *testing.T) {
	limits := func(n uint32) *enginev1.InfoResponse {
		return &enginev1.InfoResponse{Limits: &enginev1.Limits{MaxStructureRetries: n}}
	}
	for _, tc := range []struct {
		name        string
		opts        SelfOptions
		info        *enginev1.InfoResponse
		seed        uint32
		wantPolicy  enginev1.ContentPolicy
		wantMin     float32
		wantRetries uint32
	}{
		{"off", SelfOptions{}, nil, 1, enginev1.ContentPolicy_CONTENT_POLICY_OFF, 0, 0},
		{"retries need a minimum", SelfOptions{StructureRetries: 2}, nil, 1, enginev1.ContentPolicy_CONTENT_POLICY_OFF, 0, 0},
		{"warn", SelfOptions{ContentPolicy: enginev1.ContentPolicy_CONTENT_POLICY_WARN, StructureMin: 0.5, StructureRetries: 2},
			limits(3), 1, enginev1.ContentPolicy_CONTENT_POLICY_WARN, 0.5, 2},
		{"reject", SelfOptions{ContentPolicy: enginev1.ContentPolicy_CONTENT_POLICY_REJECT, StructureMin: 0.25, StructureRetries: 3},
			nil, 1, enginev1.ContentPolicy_CONTENT_POLICY_REJECT, 0.25, 3},
		{"engine allows fewer", SelfOptions{StructureMin: 0.5, StructureRetries: 3}, limits(1), 1,
			enginev1.ContentPolicy_CONTENT_POLICY_OFF, 0.5, 1},
		{"seed near the top", SelfOptions{StructureMin: 0.5, StructureRetries: 3}, limits(3), math.MaxUint32 - 1,
			enginev1.ContentPolicy_CONTENT_POLICY_OFF, 0.5, 1},
		{"top seed", SelfOptions{StructureMin: 0.5, StructureRetries: 3}, nil, math.MaxUint32,
			enginev1.ContentPolicy_CONTENT_POLICY_OFF, 0.5, 0},
	} {
		f := &fakeEngine{info: tc.info, res: &enginev1.Result{Image: []byte{1}, Seed: uint64(tc.seed)}}
		s, err := NewSelf(f, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stage(context.Background(), Job{ID: "x", Seed: tc.seed}); err != nil {
			t.Fatal(err)
		}
		g := f.got
		if g.GetContentPolicy() != tc.wantPolicy || g.GetStructureMin() != tc.wantMin || g.GetStructureRetries() != tc.wantRetries {
			t.Errorf("%s: sent policy %v, min %v, retries %d; want %v, %v, %d", tc.name,
				g.GetContentPolicy(), g.GetStructureMin(), g.GetStructureRetries(), tc.wantPolicy, tc.wantMin, tc.wantRetries)
		}
	}
	for _, bad := range []SelfOptions{{StructureMin: -0.1}, {StructureMin: 1.5}, {StructureMin: math.NaN()},
		{StructureRetries: -1}, {StructureRetries: 101}, {ContentPolicy: 9}} {
		if _, err := NewSelf(&fakeEngine{}, bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestSelfReadsTheChecks(t *testing.T) {
	f := &fakeEngine{res: &enginev1.Result{
		Image: []byte{1}, Seed: 43, Attempts: 2, StructureScore: proto.Float32(0.25),
		Warnings: []string{"people_detected", "structure_check_failed"},
		Timings:  &enginev1.Timings{DecodeMs: 1, ContentCheckMs: 20, DenoiseMs: 100, StructureCheckMs: 8, EncodeMs: 2},
	}}
	s, err := NewSelf(f, SelfOptions{ContentPolicy: enginev1.ContentPolicy_CONTENT_POLICY_WARN, StructureMin: 0.5, StructureRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Stage(context.Background(), Job{ID: "x", Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Warnings, []string{"people_detected", "structure_check_failed"}) {
		t.Errorf("warnings %q", res.Warnings)
	}
	if res.Seed == nil || *res.Seed != 43 {
		t.Errorf("seed %v, want the engine's 43", res.Seed)
	}
	if want := (Checks{Content: true, Structure: true, StructureScore: 0.25, Renders: 2}); res.Checks != want {
		t.Errorf("checks %+v, want %+v", res.Checks, want)
	}
	var names []string
	for _, p := range res.Phases {
		names = append(names, p.Name)
	}
	if want := []string{"decode", "preprocess", "content_check", "denoise", "vae_decode", "structure_check", "encode"}; !slices.Equal(names, want) {
		t.Errorf("phases %q, want %q", names, want)
	}

	// Without the checks: no score, no check phases.
	f.res = &enginev1.Result{Image: []byte{1}, Seed: 42, Attempts: 1, Timings: &enginev1.Timings{DenoiseMs: 5}}
	s, _ = NewSelf(f, SelfOptions{})
	res, err = s.Stage(context.Background(), Job{ID: "x", Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checks.Content || res.Checks.Structure || len(res.Warnings) != 0 {
		t.Errorf("checks off: %+v, warnings %q", res.Checks, res.Warnings)
	}
	for _, p := range res.Phases {
		if strings.HasSuffix(p.Name, "_check") {
			t.Errorf("phase %s without its check", p.Name)
		}
	}
}

func TestSelfMapsContentRejected(t *testing.T) {
	cause := engineStatus(codes.FailedPrecondition, enginev1.FailureReason_FAILURE_REASON_CONTENT_REJECTED, "the photo shows people")
	s, _ := NewSelf(&fakeEngine{err: cause}, SelfOptions{ContentPolicy: enginev1.ContentPolicy_CONTENT_POLICY_REJECT})
	_, err := s.Stage(context.Background(), Job{ID: "x"})
	fe := fault.From(err)
	if fe.Code != fault.ContentRejected || fe.Retryable || !errors.Is(err, cause) {
		t.Fatalf("got %v (retryable %v), want content_rejected, not retryable", err, fe.Retryable)
	}
	if !strings.Contains(fe.Message, "people") || !strings.Contains(fe.Message, "content policy") {
		t.Errorf("message %q does not name the reason", fe.Message)
	}
	// Another FAILED_PRECONDITION is no content refusal.
	s, _ = NewSelf(&fakeEngine{err: engineStatus(codes.FailedPrecondition, enginev1.FailureReason_FAILURE_REASON_INTERNAL, "x")}, SelfOptions{})
	if _, err := s.Stage(context.Background(), Job{ID: "x"}); fault.CodeOf(err) != fault.Internal {
		t.Errorf("other precondition: %v", err)
	}
}
