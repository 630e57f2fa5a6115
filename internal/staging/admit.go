package staging

import (
	"context"
	"sync"
	"time"

	"github.com/vstage/vstage/internal/admission"
)

// gate is where a job was routed and the place it holds there.
type gate struct {
	backend string
	// release gives the place back with what the job cost; only its
	// first call counts.
	release func(admission.Report)
}

func openGate(backend string, release func(admission.Report)) gate {
	var once sync.Once
	return gate{backend: backend, release: func(r admission.Report) { once.Do(func() { release(r) }) }}
}

func noPlace(admission.Report) {}

// admitOrLookup routes p, reads its record and takes a place for it on its
// backend, in the order that keeps a replay independent of the GPU: a job
// that gets a place at once reads its record while holding it (for a fresh
// job, which is almost every job, that costs nothing more than before); a
// job that would wait or be refused reads its record first, so a replay or a
// conflict is answered from the record whatever the GPU, the engine or the
// queue is doing, and only a job with no record queues or is refused. A
// refusal thus costs one record read, never more.
//
// found is the record when there is one; the gate then holds no place
// worth keeping, but its release must still be called.
func (s *Service) admitOrLookup(ctx context.Context, p plan) (g gate, found *record, err error) {
	name := s.backends.route(p.imageID)
	if s.backends.Admit == nil {
		found, err = s.lookup(ctx, p)
		return gate{backend: name, release: noPlace}, found, err
	}
	// The output's exact size is known only after reading the original; a
	// square is the upper bound. An upscaled job is priced at its final
	// size, whose class learns its own time and peak memory.
	side := s.opts.OutputLongSide
	if p.params.Upscale {
		side = s.opts.Upscale.LongSide
	}
	req := admission.Request{
		Tier: p.tier, Megapixels: float64(side*side) / 1e6, NoWait: true,
	}
	actx, span := s.start(ctx, "admission", attrTier.String(string(p.tier)), attrBackend.String(name))
	rel, err := s.backends.Admit(actx, name, req)
	span.SetAttributes(attrAdmitted.Bool(err == nil))
	span.End()
	if err == nil {
		g = openGate(name, rel)
		found, err = s.lookup(ctx, p)
		if err != nil || found != nil {
			g.release(admission.Report{})
		}
		return g, found, err
	}
	if found, err = s.lookup(ctx, p); err != nil || found != nil {
		return gate{backend: name, release: noPlace}, found, err
	}
	req.NoWait = false
	wctx, span := s.start(ctx, "admission.wait", attrTier.String(string(p.tier)), attrBackend.String(name))
	asked := time.Now()
	rel, err = s.backends.Admit(wctx, name, req)
	span.SetAttributes(attrWaitedMS.Float64(float64(time.Since(asked).Microseconds())/1000), attrAdmitted.Bool(err == nil))
	end(span, err)
	if err != nil {
		if ctx.Err() != nil {
			return gate{}, nil, contextFault(ctx)
		}
		return gate{}, nil, err
	}
	g = openGate(name, rel)
	if again := s.backends.route(p.imageID); again != name {
		// Rerouted while it waited (a kill switch, a canary change): the
		// place it got is for a backend it no longer uses.
		g.release(admission.Report{})
		g = gate{backend: again, release: noPlace}
	}
	return g, nil, nil
}
