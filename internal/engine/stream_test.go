package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// scriptedEngine answers Stage with a fixed list of events; after them its
// stream either ends (io.EOF) or, with hold set, blocks until the call's
// context ends, as a status that is slow to come would.
type scriptedEngine struct {
	enginev1.EngineClient
	events []*enginev1.StageEvent
	hold   bool
	sent   *enginev1.StageRequest
}

func (e *scriptedEngine) Stage(ctx context.Context, in *enginev1.StageRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[enginev1.StageEvent], error) {
	e.sent = in
	return &scriptedStream{ctx: ctx, events: e.events, hold: e.hold}, nil
}

type scriptedStream struct {
	grpc.ClientStream
	ctx    context.Context
	events []*enginev1.StageEvent
	hold   bool
}

func (s *scriptedStream) Recv() (*enginev1.StageEvent, error) {
	if len(s.events) > 0 {
		ev := s.events[0]
		s.events = s.events[1:]
		return ev, nil
	}
	if s.hold {
		<-s.ctx.Done()
		return nil, s.ctx.Err()
	}
	return nil, io.EOF
}

func (s *scriptedStream) Header() (metadata.MD, error) { return nil, nil }

func progressEvent(step uint32) *enginev1.StageEvent {
	return &enginev1.StageEvent{Event: &enginev1.StageEvent_Progress{Progress: &enginev1.Progress{Step: step, Total: 2}}}
}

// The result is returned as soon as it arrives: the status behind it is
// not waited for.
func TestStreamReturnsAtTheResult(t *testing.T) {
	t.Parallel()
	want := &enginev1.Result{Image: []byte("img"), Width: 8, Height: 8}
	e := &scriptedEngine{hold: true, events: []*enginev1.StageEvent{
		progressEvent(1), progressEvent(2),
		{Event: &enginev1.StageEvent_Result{Result: want}},
	}}
	i := &instance{engine: e}
	// The stream holds after the result until ctx ends, so a stream that
	// waited for the status would return ctx's error instead.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := stream(ctx, i, &enginev1.StageRequest{JobId: "j"})
	if err != nil || res != want {
		t.Fatalf("stream = %v, %v; want the result", res, err)
	}
	if i.lastProgress.Load() == 0 {
		t.Errorf("events did not count as progress")
	}
}

func TestStreamEndingWithoutAResult(t *testing.T) {
	t.Parallel()
	e := &scriptedEngine{events: []*enginev1.StageEvent{progressEvent(1)}}
	_, err := stream(context.Background(), &instance{engine: e}, &enginev1.StageRequest{JobId: "j"})
	if !errors.Is(err, errNoResult) {
		t.Fatalf("stream = %v, want errNoResult", err)
	}
}

// The request sent is a copy with the caller's fields, sharing the image
// bytes instead of copying them; the caller's request is left as it was.
func TestShallowCopy(t *testing.T) {
	t.Parallel()
	req := &enginev1.StageRequest{
		JobId: "a", Image: bytes.Repeat([]byte{7}, 1<<10), Mask: []byte{1}, Prompt: "p",
		Seed: 9, Steps: 30, OutputLongSide: 1024, OutputFormat: enginev1.ImageFormat_IMAGE_FORMAT_PNG,
	}
	c := shallowCopy(req)
	c.JobId = "a~1"
	if req.GetJobId() != "a" {
		t.Errorf("the caller's job id changed to %q", req.GetJobId())
	}
	if &c.GetImage()[0] != &req.GetImage()[0] || &c.GetMask()[0] != &req.GetMask()[0] {
		t.Errorf("the image or mask bytes were copied")
	}
	if c.GetPrompt() != "p" || c.GetSeed() != 9 || c.GetSteps() != 30 || c.GetOutputLongSide() != 1024 ||
		c.GetOutputFormat() != enginev1.ImageFormat_IMAGE_FORMAT_PNG {
		t.Errorf("copy %v lost fields of %v", c, req)
	}
}
