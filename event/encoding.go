package event

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Encoding is the wire format of an event payload, chosen by the Content-Type header.
type Encoding int

const (
	// EncodingProto is protobuf binary; also assumed when the header is absent.
	EncodingProto Encoding = iota
	// EncodingJSON is protojson (field names in lowerCamel or as in the .proto).
	EncodingJSON
)

// ContentTypeHeader is the message header that names the payload encoding.
const ContentTypeHeader = "Content-Type"

const (
	ContentTypeProto = "application/protobuf"
	ContentTypeJSON  = "application/json"
)

// ParseContentType maps a Content-Type header value to an Encoding. Parameters such as
// "; charset=utf-8" are ignored; an empty value means protobuf.
func ParseContentType(v string) (Encoding, error) {
	mediaType, _, _ := strings.Cut(v, ";")
	switch strings.ToLower(strings.TrimSpace(mediaType)) {
	case "", ContentTypeProto, "application/x-protobuf", "application/vnd.google.protobuf":
		return EncodingProto, nil
	case ContentTypeJSON:
		return EncodingJSON, nil
	}
	return 0, fmt.Errorf("unsupported %s %q (want %s or %s)", ContentTypeHeader, v, ContentTypeProto, ContentTypeJSON)
}

// ContentType is the header value announcing this encoding.
func (e Encoding) ContentType() string {
	if e == EncodingJSON {
		return ContentTypeJSON
	}
	return ContentTypeProto
}

// Marshal encodes an event message in this encoding.
func (e Encoding) Marshal(m proto.Message) ([]byte, error) {
	if e == EncodingJSON {
		return protojson.Marshal(m)
	}
	return proto.Marshal(m)
}

// Unmarshal decodes a payload. Unknown JSON fields are dropped rather than rejected so that
// a gateway on a newer schema keeps flowing through an older ingester; protobuf binary
// behaves the same way by design.
func (e Encoding) Unmarshal(data []byte, m proto.Message) error {
	if e == EncodingJSON {
		return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, m)
	}
	return proto.Unmarshal(data, m)
}
