package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
)

// maxLineBytes caps one forwarded line; the rest of a longer line is
// discarded so a runaway traceback cannot grow the buffer.
const maxLineBytes = 64 << 10

// forwarder copies the engine's stderr into the sidecar's log. read never
// blocks on the logger: it hands lines to a bounded channel and drops (and
// counts) what does not fit, so a slow log sink cannot stall the engine on a
// full pipe. The lines are only logged: nothing the supervisor decides
// rests on their text.
type forwarder struct {
	log     *slog.Logger
	lines   chan string
	dropped func()
}

func newForwarder(log *slog.Logger, size int, dropped func()) *forwarder {
	return &forwarder{log: log, lines: make(chan string, size), dropped: dropped}
}

// read reads r until EOF or an error and closes the channel.
func (f *forwarder) read(r io.Reader) {
	defer close(f.lines)
	br := bufio.NewReaderSize(r, 4096)
	var sb strings.Builder
	for {
		chunk, err := br.ReadSlice('\n')
		if sb.Len() < maxLineBytes {
			n := min(len(chunk), maxLineBytes-sb.Len())
			sb.Write(chunk[:n])
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if line := strings.TrimRight(sb.String(), "\r\n"); line != "" {
			select {
			case f.lines <- line:
			default:
				f.dropped()
			}
		}
		sb.Reset()
		if err != nil {
			return
		}
	}
}

// write logs the lines until the channel is closed.
func (f *forwarder) write() {
	for line := range f.lines {
		f.emit(line)
	}
}

func (f *forwarder) emit(line string) {
	level, msg := slog.LevelInfo, line
	var attrs []slog.Attr
	var fields map[string]any
	if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &fields) == nil {
		msg = "engine log"
		if m, ok := fields["msg"].(string); ok {
			msg = m
			delete(fields, "msg")
		}
		if l, ok := fields["level"].(string); ok {
			level = parseLevel(l)
			delete(fields, "level")
		}
		// The sidecar's handler stamps its own time; the engine's is kept
		// under another name for ordering across the two.
		if t, ok := fields["time"]; ok {
			fields["engine_time"] = t
			delete(fields, "time")
		}
		for _, k := range slices.Sorted(maps.Keys(fields)) {
			attrs = append(attrs, slog.Any(k, fields[k]))
		}
	} else {
		level = slog.LevelWarn
	}
	f.log.LogAttrs(context.Background(), level, msg, attrs...)
}

func parseLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warning", "warn":
		return slog.LevelWarn
	case "error", "critical", "fatal":
		return slog.LevelError
	}
	return slog.LevelInfo
}
