package auditlog

import (
	"net/url"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keytrail/keytrail/event"
)

// A caller may type a secret into a query by mistake (GET /v1/keys/sk-proj-..., a token
// pasted as a project filter). The query audit log and the API's logs keep what was asked,
// so they would keep the secret for as long as they are retained. Both go through the
// functions below and event.RedactText, which use the ingester's detector
// (event.LooksLikeSecret) and put the ingester's fingerprint (event.Fingerprint) in place of
// what it flags: the same secret typed twice still shows as the same value, and the
// fingerprint of a leaked secret can be searched for, but cannot be reversed.

// RedactMessage returns m, or a copy of m with every string field (nested messages, lists
// and map keys and values included) that looks like a secret replaced by its fingerprint,
// and how many it replaced. m itself is never changed: the handler may still hold it.
func RedactMessage(m proto.Message) (proto.Message, int) {
	if m == nil {
		return m, 0
	}
	c := proto.Clone(m)
	if n := redactFields(c.ProtoReflect()); n > 0 {
		return c, n
	}
	return m, 0
}

// redactFields replaces secret-shaped strings in m (a copy the caller owns).
func redactFields(m protoreflect.Message) int {
	n := 0
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := v.List()
			for i := range l.Len() {
				if s := l.Get(i).String(); event.LooksLikeSecret(s) {
					l.Set(i, protoreflect.ValueOfString(event.Fingerprint(s)))
					n++
				}
			}
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := range l.Len() {
				n += redactFields(l.Get(i).Message())
			}
		case fd.IsMap():
			mp := v.Map()
			type entry struct {
				k protoreflect.MapKey
				v protoreflect.Value
			}
			var replace []entry
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					n += redactFields(mv.Message())
				} else if fd.MapValue().Kind() == protoreflect.StringKind && event.LooksLikeSecret(mv.String()) {
					mv = protoreflect.ValueOfString(event.Fingerprint(mv.String()))
					mp.Set(k, mv)
					n++
				}
				if fd.MapKey().Kind() == protoreflect.StringKind && event.LooksLikeSecret(k.String()) {
					replace = append(replace, entry{k, mv})
				}
				return true
			})
			for _, e := range replace {
				mp.Clear(e.k)
				mp.Set(protoreflect.ValueOfString(event.Fingerprint(e.k.String())).MapKey(), e.v)
				n++
			}
		case fd.Kind() == protoreflect.StringKind:
			if s := v.String(); event.LooksLikeSecret(s) {
				m.Set(fd, protoreflect.ValueOfString(event.Fingerprint(s)))
				n++
			}
		case fd.Kind() == protoreflect.MessageKind:
			n += redactFields(v.Message())
		}
		return true
	})
	return n
}

// RedactPath redacts each segment of a URL path (percent-decoded) on its own with
// event.RedactText, so the rest of the path stays readable.
func RedactPath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if u, err := url.PathUnescape(s); err == nil {
			s = u
		}
		segs[i], _ = event.RedactText(s)
	}
	return strings.Join(segs, "/")
}
