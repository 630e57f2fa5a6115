package engine

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// payload returns n bytes that differ from one call to the next, so a
// buffer reused without being overwritten would show.
func payload(n int, fill byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = fill + byte(i%251)
	}
	return b
}

func TestCodecRoundTripsEverySize(t *testing.T) {
	c := codec{pool: &dirtyPool{}}
	std := encoding.GetCodecV2("proto")
	// Below the pooling threshold, at and around tier edges, and a
	// typical request, descending so that every later message lands in a
	// buffer a larger one has dirtied.
	sizes := []int{700 << 10, 256 << 10, 200_000, 64 << 10, 4097, 4096, 4000, 1500, 100, 0}
	for i, n := range sizes {
		req := &enginev1.StageRequest{JobId: "j", Image: payload(n, byte(i)), Prompt: "a room", Seed: uint64(n)}
		got, err := c.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want) {
			t.Fatalf("size %d: Marshal differs from proto.Marshal", n)
		}
		// Decode from several small buffers, as the transport hands over
		// frames, and from the one buffer Marshal made.
		var split mem.BufferSlice
		for b := want; len(b) > 0; {
			k := min(len(b), 16<<10)
			split = append(split, mem.SliceBuffer(b[:k]))
			b = b[k:]
		}
		for _, data := range []mem.BufferSlice{split, got} {
			var back enginev1.StageRequest
			if err := c.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&back, req) {
				t.Fatalf("size %d: round trip changed the message", n)
			}
			var ref enginev1.StageRequest
			if err := std.Unmarshal(data, &ref); err != nil || !proto.Equal(&back, &ref) {
				t.Fatalf("size %d: differs from gRPC's codec (%v)", n, err)
			}
		}
		got.Free()
	}
}

func TestCodecMessageOutlivesTheBuffer(t *testing.T) {
	c := codec{pool: &dirtyPool{}}
	want := payload(300_000, 7)
	data, err := c.Marshal(&enginev1.Result{Image: want})
	if err != nil {
		t.Fatal(err)
	}
	var res enginev1.Result
	if err := c.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	// gRPC frees the data once Unmarshal returns; the next call reuses it.
	raw := data.Materialize()
	data.Free()
	next := c.pool.Get(len(raw))
	clear(*next)
	if !bytes.Equal(res.GetImage(), want) {
		t.Fatal("the decoded image shares the codec's buffer")
	}
}

func TestCodecRefusesOtherTypes(t *testing.T) {
	c := codec{pool: &dirtyPool{}}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Error("Marshal accepted a string")
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{1})}, new(int)); err == nil {
		t.Error("Unmarshal accepted an *int")
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0xff})}, &enginev1.Result{}); err == nil {
		t.Error("Unmarshal accepted malformed bytes")
	}
}

func TestDirtyPoolTiers(t *testing.T) {
	p := &dirtyPool{}
	for _, tc := range []struct{ n, cap int }{
		{1, 4096}, {4096, 4096}, {4097, 8192}, {200_000, 256 << 10}, {1 << 26, 1 << 26}, {1<<26 + 1, 1<<26 + 1},
	} {
		b := p.Get(tc.n)
		if len(*b) != tc.n || cap(*b) != tc.cap {
			t.Errorf("Get(%d): len %d cap %d, want %d %d", tc.n, len(*b), cap(*b), tc.n, tc.cap)
		}
		p.Put(b)
	}
	// A buffer from elsewhere is not pooled: its capacity is no tier's.
	odd := make([]byte, 5000)
	p.Put(&odd)
	if b := p.Get(5000); cap(*b) != 8192 {
		t.Errorf("Get after a foreign Put: cap %d", cap(*b))
	}
}

// The codec against gRPC's own, for a job's request (a 1536x1024 JPEG)
// and result: go test -run '^$' -bench Codec -benchmem ./internal/engine
func BenchmarkCodec(b *testing.B) {
	req := &enginev1.StageRequest{JobId: "bench", Image: payload(250_000, 1), Prompt: "a living room"}
	res := &enginev1.Result{Image: payload(180_000, 2), Width: 1024, Height: 683}
	wire, err := proto.Marshal(res)
	if err != nil {
		b.Fatal(err)
	}
	var frames mem.BufferSlice
	for w := wire; len(w) > 0; {
		k := min(len(w), 16<<10)
		frames = append(frames, mem.SliceBuffer(w[:k]))
		w = w[k:]
	}
	for _, bc := range []struct {
		name string
		c    encoding.CodecV2
	}{{"grpc", encoding.GetCodecV2("proto")}, {"engine", codec{pool: &dirtyPool{}}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(proto.Size(req) + len(wire)))
			for b.Loop() {
				out, err := bc.c.Marshal(req)
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
				var r enginev1.Result
				if err := bc.c.Unmarshal(frames, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
