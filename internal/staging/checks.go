package staging

import (
	"slices"

	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/fault"
)

// checked counts what the engine's checks decided for one backend call and
// adds it to the call's span. A call that failed for another reason, or a
// backend that runs no checks, counts nothing.
func (s *Service) checked(span trace.Span, res backend.Result, err error) {
	m := s.metrics
	if err != nil {
		if fault.CodeOf(err) == fault.ContentRejected {
			m.ContentDecisions.WithLabelValues("reject").Inc()
			span.SetAttributes(attrContentDecision.String("reject"))
		}
		return
	}
	c := res.Checks
	if c.Content {
		decision := "pass"
		if slices.Contains(res.Warnings, backend.WarningPeopleDetected) {
			decision = "warn"
		}
		m.ContentDecisions.WithLabelValues(decision).Inc()
		span.SetAttributes(attrContentDecision.String(decision))
	}
	if c.Renders > 1 {
		m.StructureRetries.Add(float64(c.Renders - 1))
	}
	if c.Renders > 0 {
		span.SetAttributes(attrRenders.Int(c.Renders))
	}
	if c.Structure {
		m.StructureScore.Observe(c.StructureScore)
		passed := !slices.Contains(res.Warnings, backend.WarningStructureCheckFailed)
		if !passed {
			m.StructureFailures.Inc()
		}
		span.SetAttributes(attrStructureScore.Float64(c.StructureScore), attrStructurePassed.Bool(passed))
	}
}

// jobSeed is the seed r's job ran with.
func (r record) jobSeed() uint32 {
	if r.JobSeed != nil {
		return *r.JobSeed
	}
	return r.Response.Seed
}
