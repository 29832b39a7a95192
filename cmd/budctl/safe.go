package main

import (
	"strconv"
	"unicode"
)

// safe is how budctl's table views print text that nodes (or anyone but
// the controller) wrote: as is when every rune is printable, otherwise
// quoted with Go escapes, so that escape sequences, CR/LF and tabs cannot
// move the cursor, forge lines or break columns in an operator's terminal.
func safe(s string) string {
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
