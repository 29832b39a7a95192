package controller

import (
	"fmt"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Limits on what a node's reports may hold: every string field of a
// report, every list in it.
const (
	// MaxNodeString caps each string field of a node's report (longer
	// ones are cut).
	MaxNodeString = 256
	// MaxNodeList caps each list in a report: GPUs, MIG devices, NVLinks,
	// addresses, health reasons.
	MaxNodeList = 64
)

// errNodeText: a report held control characters; it is refused whole.
type errNodeText struct{ field, value string }

func (e errNodeText) Error() string {
	return fmt.Sprintf("field %s holds control characters: %q", e.field, truncate(e.value, 64))
}

// printable reports whether s is valid UTF-8 without control characters
// (what would move an operator's cursor, forge lines or clear a screen).
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r) {
			return false
		}
	}
	return true
}

// checkNodeText refuses a node's report (host or GPU inventory, GPU
// health) with a control character in any string, and cuts each string
// to MaxNodeString bytes and each list to MaxNodeList entries, in place.
func checkNodeText(m proto.Message) error {
	if m == nil {
		return nil
	}
	return walkText(m.ProtoReflect(), "")
}

func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func walkText(m protoreflect.Message, prefix string) error {
	var err error
	// Changes wait until Range is done (it may not see the message change).
	var later []func()
	defer func() {
		for _, f := range later {
			f()
		}
	}()
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := prefix + string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			n := min(l.Len(), MaxNodeList)
			if l.Len() > MaxNodeList {
				later = append(later, func() { l.Truncate(MaxNodeList) })
			}
			for i := 0; i < n && err == nil; i++ {
				switch fd.Kind() {
				case protoreflect.StringKind:
					s := l.Get(i).String()
					if !printable(s) {
						err = errNodeText{name, s}
					}
					if len(s) > MaxNodeString {
						i := i
						later = append(later, func() { l.Set(i, protoreflect.ValueOfString(cutUTF8(s, MaxNodeString))) })
					}
				case protoreflect.MessageKind:
					err = walkText(l.Get(i).Message(), fmt.Sprintf("%s[%d].", name, i))
				}
			}
		case fd.IsMap():
			// Reports carry no maps today; a future one is left to its
			// handler.
		case fd.Kind() == protoreflect.StringKind:
			s := v.String()
			if !printable(s) {
				err = errNodeText{name, s}
				return false
			}
			if len(s) > MaxNodeString {
				later = append(later, func() { m.Set(fd, protoreflect.ValueOfString(cutUTF8(s, MaxNodeString))) })
			}
		case fd.Kind() == protoreflect.MessageKind:
			err = walkText(v.Message(), name+".")
		}
		return err == nil
	})
	return err
}
