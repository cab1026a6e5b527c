package api

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"

	"github.com/keytrail/keytrail/event"
)

// redactingHandler passes every record of the API's logger through event.RedactText: the
// message and each attribute, however deep. A caller's input reaches log lines in error
// messages ("key \"sk-...\" not found"), in storage errors that quote a query, and in the
// REST edge's lines, and a secret typed into a query must not outlive it there.
//
// Attributes whose values the server itself sets (method names, codes, timings, addresses)
// are left as they are: some method names are long enough to look random to the detector.
type redactingHandler struct{ next slog.Handler }

// serverSetKeys are attributes no caller input reaches.
var serverSetKeys = map[string]bool{
	logging.ComponentFieldKey: true, logging.ServiceFieldKey: true, logging.MethodFieldKey: true,
	logging.MethodTypeFieldKey: true, "protocol": true, "component": true, "grpc.code": true,
	"grpc.start_time": true, "grpc.request.deadline": true, "grpc.time_ms": true, "peer.address": true,
}

func newRedactingLogger(l *slog.Logger) *slog.Logger {
	if h, ok := l.Handler().(redactingHandler); ok {
		return slog.New(h)
	}
	return slog.New(redactingHandler{l.Handler()})
}

func (h redactingHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

func (h redactingHandler) Handle(ctx context.Context, r slog.Record) error {
	msg, _ := event.RedactText(r.Message)
	out := slog.NewRecord(r.Time, r.Level, msg, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h redactingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = redactAttr(a)
	}
	return redactingHandler{h.next.WithAttrs(red)}
}

func (h redactingHandler) WithGroup(name string) slog.Handler {
	return redactingHandler{h.next.WithGroup(name)}
}

func redactAttr(a slog.Attr) slog.Attr {
	if serverSetKeys[a.Key] {
		return a
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		red, _ := event.RedactText(v.String())
		return slog.String(a.Key, red)
	case slog.KindGroup:
		group := v.Group()
		red := make([]any, len(group))
		for i, g := range group {
			red[i] = redactAttr(g)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		// Errors, stringers, structs: keep the value unless its text holds a secret.
		text := fmt.Sprint(v.Any())
		if red, n := event.RedactText(text); n > 0 {
			return slog.String(a.Key, red)
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
