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

// jobEndMessages are the engine's log messages that end a job; each carries
// a job_id field. Together with the stream status they are how the
// supervisor learns that a job it cancelled has let go of its worker: after
// a cancellation gRPC gives the client no way to hear from that call again.
var jobEndMessages = map[string]bool{
	"job done": true, "job stopped": true, "job failed": true, "job rejected": true,
}

// forwarder copies the engine's stderr into the sidecar's log. read never
// blocks on the logger: it hands lines to a bounded channel and drops (and
// counts) what does not fit, so a slow log sink cannot stall the engine on a
// full pipe.
type forwarder struct {
	log     *slog.Logger
	lines   chan string
	dropped func()
	jobEnd  func(jobID string)
}

func newForwarder(log *slog.Logger, size int, dropped func(), jobEnd func(string)) *forwarder {
	return &forwarder{log: log, lines: make(chan string, size), dropped: dropped, jobEnd: jobEnd}
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
			// Acknowledgements are read here, not by the writer, so that
			// neither a slow log sink nor a dropped line can lose one.
			if f.jobEnd != nil && strings.Contains(line, `"job `) {
				f.ack(line)
			}
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

func (f *forwarder) ack(line string) {
	var entry struct {
		Msg   string `json:"msg"`
		JobID string `json:"job_id"`
	}
	if json.Unmarshal([]byte(line), &entry) == nil && entry.JobID != "" && jobEndMessages[entry.Msg] {
		f.jobEnd(entry.JobID)
	}
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
