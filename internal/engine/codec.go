package engine

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// codec is the protobuf codec of the engine's calls. It differs from gRPC's
// own in one way: its buffers come from dirtyPool. gRPC's default pool
// zeroes every buffer it hands out, and a job's request and result (a few
// hundred kilobytes each) land in its 1 MiB tier, so each job paid for
// clearing two mebibytes: about an eighth of the sidecar's CPU per job in a
// profile. Every buffer this codec takes is overwritten in full before it is
// read (Marshal writes exactly the message's size; Unmarshal reads exactly
// what was copied in), so no stale byte can reach the wire or a message.
type codec struct {
	pool mem.BufferPool
}

var _ encoding.CodecV2 = codec{}

// Marshal encodes v, a proto.Message.
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("engine: codec: cannot marshal %T, not a proto.Message", v)
	}
	size := proto.Size(m)
	// Size has just been computed, so the marshal below can use the cached
	// sizes instead of walking the message again.
	opts := proto.MarshalOptions{UseCachedSize: true}
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("engine: codec: %w", err)
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := c.pool.Get(size)
	out, err := opts.MarshalAppend((*buf)[:0], m)
	if err != nil {
		c.pool.Put(buf)
		return nil, fmt.Errorf("engine: codec: %w", err)
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, c.pool)}, nil
}

// Unmarshal decodes data into v, a proto.Message. The message keeps no
// reference to data: proto.Unmarshal copies bytes fields.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("engine: codec: cannot unmarshal into %T, not a proto.Message", v)
	}
	buf := data.MaterializeToBuffer(c.pool)
	defer buf.Free()
	if err := proto.Unmarshal(buf.ReadOnlyData(), m); err != nil {
		return fmt.Errorf("engine: codec: %w", err)
	}
	return nil
}

// Name is the content subtype, the same as gRPC's own protobuf codec, so
// the engine sees an ordinary application/grpc+proto call.
func (codec) Name() string { return "proto" }

// Tiers of dirtyPool: powers of two from 4 KiB to the largest message.
const (
	minTierShift = 12
	maxTierShift = 26 // maxMessageBytes
)

// dirtyPool is a mem.BufferPool that does not clear the buffers it hands
// out: callers overwrite them. Buffers are pooled by power-of-two capacity;
// sync.Pool lets the collector drop idle ones, so the pool holds no memory
// that is not in use between two collections.
type dirtyPool struct {
	tiers [maxTierShift - minTierShift + 1]sync.Pool
}

var _ mem.BufferPool = (*dirtyPool)(nil)

// tier returns the index of the smallest tier that holds n bytes, and
// false when n is over the largest.
func tier(n int) (int, bool) {
	shift := minTierShift
	if n > 1<<minTierShift {
		shift = bits.Len(uint(n - 1))
	}
	if shift > maxTierShift {
		return 0, false
	}
	return shift - minTierShift, true
}

// Get returns a buffer of length n whose contents are unspecified.
func (p *dirtyPool) Get(n int) *[]byte {
	t, ok := tier(n)
	if !ok {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.tiers[t].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(t+minTierShift))
	return &b
}

// Put returns a buffer for reuse. Buffers whose capacity is not a tier's
// (those made outside the pool) are left to the collector.
func (p *dirtyPool) Put(b *[]byte) {
	c := cap(*b)
	t, ok := tier(c)
	if !ok || c != 1<<(t+minTierShift) {
		return
	}
	p.tiers[t].Put(b)
}
