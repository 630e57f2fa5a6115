package staging

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/storage"
)

const (
	// claimGrace is how long a claim outlives its job's deadline, so that a
	// job still stopping after its deadline keeps it; past that the claim
	// belongs to a replica that died, and the next one may take the job.
	claimGrace = 30 * time.Second
	// claimLease is a claim's life when the job has no deadline.
	claimLease = 10 * time.Minute
	// maxClaimGenerations bounds the claims of one job that replicas
	// abandoned (each one a crash mid-job) before the job is refused.
	maxClaimGenerations = 8
	// inProgressRetryAfter is the pause suggested to a client whose job
	// another replica is running; jobs take seconds.
	inProgressRetryAfter = 2 * time.Second
	// claimCleanupTimeout bounds the removal of claims after a job, which
	// runs even when the job's own context has ended.
	claimCleanupTimeout = 5 * time.Second
	maxClaimBytes       = 4 << 10
)

// Replicas that share a store agree on which of them runs a job through a
// claim object: the one whose conditional write creates it
// (storage.PutOptions.IfAbsent) runs the job. Identical requests within
// one replica already share one execution; claims extend that to every
// replica. Claims go through the service's own storage calls, so they are
// timed like every other read and write, and a key the store refuses gets
// the same client error as anywhere else.
//
// A claim carries an expiry, so a replica that dies mid-job holds the job
// up for a bounded time: the next claimant finds the expired claim and
// writes the next generation's claim object instead (replacing the expired
// one would need a compare-and-swap that a local folder cannot do). A
// finished job deletes its claims after writing its record. The claim's
// owner (Service.owner) names this replica, so that it can recognise a
// claim it failed to delete itself.

// claimDoc is a claim object's content.
type claimDoc struct {
	Version   int       `json:"version"`
	ImageID   string    `json:"image_id"`
	Owner     string    `json:"owner"`
	ExpiresAt time.Time `json:"expires_at"`
}

// heldClaim is a claim this replica holds, and the expired claims it passed
// on the way, which are removed with it once the job is done.
type heldClaim struct {
	s       *Service
	key     string
	expired []string
}

func newOwner() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), rand.Text()[:8])
}

// claimKey names generation gen of the claim on recordKey.
func claimKey(recordKey string, gen int) string {
	if gen == 0 {
		return recordKey + ".claim"
	}
	return recordKey + ".claim." + strconv.Itoa(gen)
}

// takeClaim claims p for this replica, or answers in_progress (retryable) while
// another replica holds a live claim on it.
//
// The caller leads p's only execution in this process, so a live claim of
// this replica's own is one it failed to delete after an earlier run, and is
// passed over like an expired one.
func (s *Service) takeClaim(ctx context.Context, p plan) (*heldClaim, error) {
	expires := time.Now().Add(claimLease)
	if d, ok := ctx.Deadline(); ok {
		expires = d.Add(claimGrace)
	}
	data, err := json.Marshal(claimDoc{Version: 1, ImageID: p.imageID, Owner: s.owner, ExpiresAt: expires.UTC()})
	if err != nil {
		return nil, fault.Wrap(err, fault.Internal, "encoding the job's claim failed")
	}
	h := &heldClaim{s: s}
	for gen, vanished := 0, 0; gen < maxClaimGenerations; gen++ {
		key := claimKey(p.recordKey, gen)
		err := s.put(ctx, key, data, storage.PutOptions{
			ContentType: "application/json", CacheControl: "no-store", IfAbsent: true, Ephemeral: true,
		})
		if err == nil {
			h.key = key
			return h, nil
		}
		if !errors.Is(err, storage.ErrExists) {
			return nil, s.storageFault(ctx, err, "writing the job's claim")
		}
		other, err := s.readClaim(ctx, key)
		switch {
		case errors.Is(err, storage.ErrNotFound) && vanished < 2:
			// Its owner let go of it a moment ago: try this generation again.
			vanished++
			gen--
			continue
		case err != nil && !errors.Is(err, storage.ErrNotFound):
			return nil, s.storageFault(ctx, err, "reading the job's claim")
		case err == nil && other.ExpiresAt.After(time.Now()) && other.Owner != s.owner:
			e := fault.New(fault.InProgress,
				"image_id %s is being staged by another replica; retry shortly for its result", quote(p.imageID))
			e.RetryAfter = inProgressRetryAfter
			return nil, e
		}
		h.expired = append(h.expired, key)
	}
	s.log.ErrorContext(ctx, "too many abandoned claims", "key", claimKey(p.recordKey, 0), "generations", maxClaimGenerations)
	return nil, fault.New(fault.Internal,
		"image_id %s was abandoned by %d replicas mid-job; an operator must look at it", quote(p.imageID), maxClaimGenerations)
}

// readClaim returns the claim under key. A claim that cannot be parsed was
// not written by a replica (they write whole objects), so it is treated as
// expired rather than let it block the job for ever.
func (s *Service) readClaim(ctx context.Context, key string) (claimDoc, error) {
	data, err := s.get(ctx, key, maxClaimBytes)
	if err != nil {
		return claimDoc{}, err
	}
	var doc claimDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		s.log.WarnContext(ctx, "unreadable claim treated as expired", "key", key, "error", err)
		return claimDoc{}, nil
	}
	return doc, nil
}

// done removes the claim and the expired ones passed on the way: the
// record is written, so nobody needs them. It runs even after ctx ended.
func (h *heldClaim) done(ctx context.Context) {
	h.remove(ctx, append([]string{h.key}, h.expired...))
}

// drop removes the claim of a job that failed, so that its retry, here or
// on another replica, need not wait for the claim to expire.
func (h *heldClaim) drop(ctx context.Context) {
	h.remove(ctx, []string{h.key})
}

func (h *heldClaim) remove(ctx context.Context, keys []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimCleanupTimeout)
	defer cancel()
	for _, k := range keys {
		// A claim left behind expires on its own; it only delays a retry
		// on another replica.
		if err := h.s.store.Delete(ctx, k); err != nil {
			h.s.log.WarnContext(ctx, "claim not removed", "key", k, "error", err)
		}
	}
}
