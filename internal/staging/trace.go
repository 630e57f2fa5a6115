package staging

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/internal/fault"
)

// The attributes of the job's span and its children. They are named under
// vstage. because they are this service's vocabulary, not a semantic
// convention's.
const (
	attrImageID    = attribute.Key("vstage.image_id")
	attrTier       = attribute.Key("vstage.tier")
	attrRoomType   = attribute.Key("vstage.room_type")
	attrStyle      = attribute.Key("vstage.style")
	attrUpscale    = attribute.Key("vstage.upscale")
	attrBackend    = attribute.Key("vstage.backend")
	attrOutcome    = attribute.Key("vstage.outcome")
	attrReplay     = attribute.Key("vstage.replay")
	attrModelRev   = attribute.Key("vstage.model_rev")
	attrSeed       = attribute.Key("vstage.seed")
	attrWidth      = attribute.Key("vstage.output.width")
	attrHeight     = attribute.Key("vstage.output.height")
	attrPrompt     = attribute.Key("vstage.prompt")
	attrNegPrompt  = attribute.Key("vstage.negative_prompt")
	attrKey        = attribute.Key("vstage.storage.key")
	attrBytes      = attribute.Key("vstage.storage.bytes")
	attrResult     = attribute.Key("vstage.storage.result")
	attrFormat     = attribute.Key("vstage.image.format")
	attrPixels     = attribute.Key("vstage.image.pixels")
	attrErrorCode  = attribute.Key("vstage.error.code")
	attrWaitedMS   = attribute.Key("vstage.admission.waited_ms")
	attrAdmitted   = attribute.Key("vstage.admission.admitted")
	attrRecordSeen = attribute.Key("vstage.record.found")
	attrLabel      = attribute.Key("vstage.label")
	// What the engine's checks found, on the backend span: the content
	// policy's decision, and the structure score and the renders it took.
	attrContentDecision = attribute.Key("vstage.content.decision")
	attrStructureScore  = attribute.Key("vstage.structure.score")
	attrStructurePassed = attribute.Key("vstage.structure.passed")
	attrRenders         = attribute.Key("vstage.structure.renders")
)

// clientErrors are the codes of requests refused for what they asked: the
// service worked as it should, so their spans are not errors.
var clientErrors = map[fault.Code]bool{
	fault.InvalidInput: true, fault.Forbidden: true, fault.NotFound: true, fault.IdempotencyConflict: true,
	fault.PayloadTooLarge: true, fault.UnsupportedMediaType: true, fault.ImageTooLarge: true,
	fault.ContentRejected: true,
}

// start opens a child span of ctx's span.
func (s *Service) start(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return s.tracer.Start(ctx, name, trace.WithAttributes(attrs...))
}

// end ends span with err's outcome: an error status, with the error's code,
// unless err is nil or a client's error.
func end(span trace.Span, err error) {
	if err != nil {
		code := fault.CodeOf(err)
		span.SetAttributes(attrErrorCode.String(string(code)))
		if !clientErrors[code] {
			span.RecordError(err)
			span.SetStatus(codes.Error, string(code))
		}
	}
	span.End()
}
