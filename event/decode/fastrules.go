package decode

import (
	"regexp/syntax"
	"slices"
	"unicode/utf8"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The fast path of the static rules. protovalidate evaluates events.proto's annotations
// through its general machinery (reflection per rule, Go regexps for the character classes,
// CEL for timestamps) at about ten times the instructions the hand-written checks took
// (BenchmarkValidateUsage; figures in docs/benchmarks.md), and the ingester validates every
// usage event. So the same annotations are also compiled, once, into the plain Go checks
// below, for the messages whose every rule is of a kind they know. They only accept or
// refuse: an event they refuse is evaluated again by protovalidate, whose violation gives
// the reason and detail, and protovalidate decides. A rule of any other kind (a CEL
// expression, a rule this file does not know, a pattern other than an anchored run of one
// character class) leaves the whole message to protovalidate, so an annotation added to
// events.proto is never skipped. FuzzFastRules checks that both agree.

// fastRules are one message's rules as plain checks.
type fastRules struct {
	fields []fastField
}

type fastField struct {
	fd       protoreflect.FieldDescriptor
	required bool
	// Exactly one of these applies, by the field's kind; nil means no rule of that kind.
	value    *valueCheck
	repeated *listCheck
	mapped   *mapCheck
	message  *fastRules // a message field's own rules (also for list items)
	tsGTE    *timestamppb.Timestamp
}

// valueCheck is a scalar's rules: strings, unsigned and signed integers, enums.
type valueCheck struct {
	maxBytes   *uint64
	allowed    *runeClass
	u32GTE     *uint32
	u32LTE     *uint32
	i64GTE     *int64
	definedIn  protoreflect.EnumValueDescriptors // defined_only
	notIn      []int32
	isEnum     bool
	hasAnyRule bool
}

type listCheck struct {
	maxItems *uint64
	items    *valueCheck
	message  *fastRules
}

type mapCheck struct {
	maxPairs *uint64
	keys     *valueCheck
	values   *valueCheck
}

// compileFast compiles desc's rules, or reports that some rule is not of a kind the fast
// path knows.
func compileFast(desc protoreflect.MessageDescriptor) (*fastRules, bool) {
	mr, err := protovalidate.ResolveMessageRules(desc)
	if err != nil || !onlyKnown(mr, nil) {
		return nil, false
	}
	if desc.Oneofs().Len() > 0 {
		return nil, false
	}
	out := &fastRules{}
	for i := 0; i < desc.Fields().Len(); i++ {
		fd := desc.Fields().Get(i)
		fr, err := protovalidate.ResolveFieldRules(fd)
		if err != nil {
			return nil, false
		}
		f, ok := compileField(fd, fr)
		if !ok {
			return nil, false
		}
		if f != nil {
			out.fields = append(out.fields, *f)
		}
	}
	return out, true
}

// compileField returns nil for a field without rules.
func compileField(fd protoreflect.FieldDescriptor, fr *validate.FieldRules) (*fastField, bool) {
	if !onlyKnown(fr, []string{"required", "string", "uint32", "int64", "enum", "timestamp", "repeated", "map"}) {
		return nil, false
	}
	f := &fastField{fd: fd, required: fr.GetRequired()}
	switch {
	case fd.IsMap():
		if fr.HasMap() {
			m, ok := compileMap(fd, fr.GetMap())
			if !ok {
				return nil, false
			}
			f.mapped = m
		} else if fr.HasType() {
			return nil, false
		}
		if fd.MapValue().Kind() == protoreflect.MessageKind {
			return nil, false // no such map in the contract
		}
	case fd.IsList():
		l := &listCheck{}
		if fr.HasRepeated() {
			rr := fr.GetRepeated()
			if !onlyKnown(rr, []string{"max_items", "items"}) {
				return nil, false
			}
			if rr.HasMaxItems() {
				l.maxItems = new(rr.GetMaxItems())
			}
			if rr.HasItems() {
				v, ok := compileValue(fd, rr.GetItems(), true)
				if !ok {
					return nil, false
				}
				l.items = v
			}
		} else if fr.HasType() {
			return nil, false
		}
		if fd.Kind() == protoreflect.MessageKind {
			m, ok := compileFast(fd.Message())
			if !ok {
				return nil, false
			}
			if len(m.fields) > 0 {
				l.message = m
			}
		}
		if l.maxItems != nil || l.items != nil || l.message != nil {
			f.repeated = l
		}
	case fd.Kind() == protoreflect.MessageKind:
		if fr.HasTimestamp() {
			tr := fr.GetTimestamp()
			if fd.Message().FullName() != "google.protobuf.Timestamp" || !onlyKnown(tr, []string{"gte"}) {
				return nil, false
			}
			if tr.HasGte() {
				f.tsGTE = tr.GetGte()
			}
		} else if fr.HasType() {
			return nil, false
		}
		m, ok := compileFast(fd.Message())
		if !ok {
			return nil, false
		}
		if len(m.fields) > 0 {
			f.message = m
		}
	default:
		if fd.HasPresence() && fr.HasType() {
			return nil, false // rules skipped while unset: no such field in the contract
		}
		v, ok := compileValue(fd, fr, false)
		if !ok {
			return nil, false
		}
		if v.hasAnyRule {
			f.value = v
		}
	}
	if !f.required && f.value == nil && f.repeated == nil && f.mapped == nil && f.message == nil && f.tsGTE == nil {
		return nil, true
	}
	return f, true
}

func compileMap(fd protoreflect.FieldDescriptor, mr *validate.MapRules) (*mapCheck, bool) {
	if !onlyKnown(mr, []string{"max_pairs", "keys", "values"}) {
		return nil, false
	}
	m := &mapCheck{}
	if mr.HasMaxPairs() {
		m.maxPairs = new(mr.GetMaxPairs())
	}
	if mr.HasKeys() {
		v, ok := compileValue(fd.MapKey(), mr.GetKeys(), true)
		if !ok {
			return nil, false
		}
		m.keys = v
	}
	if mr.HasValues() {
		v, ok := compileValue(fd.MapValue(), mr.GetValues(), true)
		if !ok {
			return nil, false
		}
		m.values = v
	}
	return m, true
}

// compileValue compiles the rules of a scalar: a field, or an element (a list item, a map
// key or value).
func compileValue(fd protoreflect.FieldDescriptor, fr *validate.FieldRules, element bool) (*valueCheck, bool) {
	known := []string{"string", "uint32", "int64", "enum"}
	if !element {
		known = append(known, "required") // the field checks it
	}
	if !onlyKnown(fr, known) {
		return nil, false
	}
	v := &valueCheck{}
	switch {
	case fr.HasString():
		sr := fr.GetString()
		if fd.Kind() != protoreflect.StringKind || !onlyKnown(sr, []string{"max_bytes", "pattern"}) {
			return nil, false
		}
		if sr.HasMaxBytes() {
			v.maxBytes = new(sr.GetMaxBytes())
		}
		if sr.HasPattern() {
			c, ok := compileRuneClass(sr.GetPattern())
			if !ok {
				return nil, false
			}
			v.allowed = c
		}
	case fr.HasUint32():
		ur := fr.GetUint32()
		if fd.Kind() != protoreflect.Uint32Kind || !onlyKnown(ur, []string{"gte", "lte"}) {
			return nil, false
		}
		if ur.HasGte() {
			v.u32GTE = new(ur.GetGte())
		}
		if ur.HasLte() {
			v.u32LTE = new(ur.GetLte())
		}
	case fr.HasInt64():
		ir := fr.GetInt64()
		if fd.Kind() != protoreflect.Int64Kind || !onlyKnown(ir, []string{"gte"}) {
			return nil, false
		}
		if ir.HasGte() {
			v.i64GTE = new(ir.GetGte())
		}
	case fr.HasEnum():
		er := fr.GetEnum()
		if fd.Kind() != protoreflect.EnumKind || !onlyKnown(er, []string{"defined_only", "not_in"}) {
			return nil, false
		}
		v.isEnum = true
		if er.GetDefinedOnly() {
			v.definedIn = fd.Enum().Values()
		}
		v.notIn = er.GetNotIn()
	case fr.HasType():
		return nil, false
	}
	v.hasAnyRule = v.maxBytes != nil || v.allowed != nil || v.u32GTE != nil || v.u32LTE != nil ||
		v.i64GTE != nil || v.definedIn != nil || len(v.notIn) > 0
	return v, true
}

// onlyKnown reports whether m sets no field but the named ones, and no unknown field (a
// predefined rule is an extension, which reads as unknown here).
func onlyKnown(m proto.Message, names []string) bool {
	r := m.ProtoReflect()
	if len(r.GetUnknown()) > 0 {
		return false
	}
	ok := true
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if fd.IsExtension() || !slices.Contains(names, string(fd.Name())) {
			ok = false
		}
		return ok
	})
	return ok
}

// runeClass is the set of runes a pattern of the form ^[...]*$ allows.
type runeClass struct {
	ascii  [utf8.RuneSelf]bool
	ranges []rune // lo, hi pairs, sorted
}

// compileRuneClass accepts only an anchored run of one character class, the one shape of
// pattern the contract uses; the class's ranges are what regexp/syntax parsed, so the
// check agrees with the regexp protovalidate compiles (invalid UTF-8 reads as U+FFFD in
// both).
func compileRuneClass(pattern string) (*runeClass, bool) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, false
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) != 3 || re.Sub[0].Op != syntax.OpBeginText ||
		re.Sub[1].Op != syntax.OpStar || re.Sub[2].Op != syntax.OpEndText {
		return nil, false
	}
	class := re.Sub[1].Sub[0]
	if class.Op != syntax.OpCharClass {
		return nil, false
	}
	c := &runeClass{ranges: class.Rune}
	for r := rune(0); r < utf8.RuneSelf; r++ {
		c.ascii[r] = c.inRanges(r)
	}
	return c, true
}

func (c *runeClass) inRanges(r rune) bool {
	// ranges holds sorted, disjoint [lo, hi] pairs.
	i, _ := slices.BinarySearch(c.ranges, r)
	if i < len(c.ranges) && c.ranges[i] == r {
		return true
	}
	return i%2 == 1
}

func (c *runeClass) allows(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			for _, r := range s[i:] {
				if !c.inRanges(r) {
					return false
				}
			}
			return true
		}
		if !c.ascii[s[i]] {
			return false
		}
	}
	return true
}

// accepts reports whether m passes every rule.
func (fr *fastRules) accepts(m protoreflect.Message) bool {
	for i := range fr.fields {
		f := &fr.fields[i]
		switch {
		case f.fd.IsMap():
			mp := m.Get(f.fd).Map()
			if f.required && mp.Len() == 0 {
				return false
			}
			if f.mapped != nil && !f.mapped.accepts(mp) {
				return false
			}
		case f.fd.IsList():
			l := m.Get(f.fd).List()
			if f.required && l.Len() == 0 {
				return false
			}
			if f.repeated != nil && !f.repeated.accepts(l) {
				return false
			}
		case f.fd.Kind() == protoreflect.MessageKind:
			if !m.Has(f.fd) {
				if f.required {
					return false
				}
				continue
			}
			sub := m.Get(f.fd).Message()
			if f.tsGTE != nil {
				ts := sub.Interface().(*timestamppb.Timestamp)
				if ts.AsTime().Before(f.tsGTE.AsTime()) {
					return false
				}
			}
			if f.message != nil && !f.message.accepts(sub) {
				return false
			}
		default:
			v := m.Get(f.fd)
			if f.required && !m.Has(f.fd) {
				return false
			}
			if f.value != nil && !f.value.accepts(v) {
				return false
			}
		}
	}
	return true
}

func (l *listCheck) accepts(list protoreflect.List) bool {
	if l.maxItems != nil && uint64(list.Len()) > *l.maxItems {
		return false
	}
	for i := 0; i < list.Len(); i++ {
		if l.items != nil && !l.items.accepts(list.Get(i)) {
			return false
		}
		if l.message != nil && !l.message.accepts(list.Get(i).Message()) {
			return false
		}
	}
	return true
}

func (mc *mapCheck) accepts(m protoreflect.Map) bool {
	if mc.maxPairs != nil && uint64(m.Len()) > *mc.maxPairs {
		return false
	}
	ok := true
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		if mc.keys != nil && !mc.keys.accepts(k.Value()) || mc.values != nil && !mc.values.accepts(v) {
			ok = false
		}
		return ok
	})
	return ok
}

func (c *valueCheck) accepts(v protoreflect.Value) bool {
	switch {
	case c.isEnum:
		n := v.Enum()
		if c.definedIn != nil && c.definedIn.ByNumber(n) == nil {
			return false
		}
		return !slices.Contains(c.notIn, int32(n))
	case c.u32GTE != nil || c.u32LTE != nil:
		n := uint32(v.Uint())
		return (c.u32GTE == nil || n >= *c.u32GTE) && (c.u32LTE == nil || n <= *c.u32LTE)
	case c.i64GTE != nil:
		return v.Int() >= *c.i64GTE
	case c.maxBytes != nil || c.allowed != nil:
		s := v.String()
		return (c.maxBytes == nil || uint64(len(s)) <= *c.maxBytes) && (c.allowed == nil || c.allowed.allows(s))
	}
	return true
}
