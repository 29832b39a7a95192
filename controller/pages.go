package controller

import (
	"encoding/base64"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// List calls come in pages, so a few big nodes cannot push a listing past
// a client's message limit.
const (
	DefaultPageSize = 500
	MaxPageSize     = 1000
	// maxPageBytes ends a page before it passes this much (clients take
	// 4 MiB by default).
	maxPageBytes = 2 << 20
)

// page returns the items after the one whose id the token names (the
// first ones for an empty token), at most size of them and under
// maxPageBytes, and the token of the next page ("" at the end).
func page[T any, M proto.Message](items []T, id func(T) string, conv func(T) M, size uint32, token string) ([]M, string, error) {
	if size == 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)
	start := 0
	if token != "" {
		b, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return nil, "", status.Error(codes.InvalidArgument, "malformed page token")
		}
		start = -1
		for i, it := range items {
			if id(it) == string(b) {
				start = i + 1
				break
			}
		}
		if start < 0 {
			return nil, "", status.Error(codes.InvalidArgument, "the page token names an item that is gone: list again from the start")
		}
	}
	var out []M
	bytes := 0
	for i := start; i < len(items); i++ {
		m := conv(items[i])
		n := proto.Size(m)
		if len(out) > 0 && (uint32(len(out)) >= size || bytes+n > maxPageBytes) {
			return out, base64.RawURLEncoding.EncodeToString([]byte(id(items[i-1]))), nil
		}
		out = append(out, m)
		bytes += n
	}
	return out, "", nil
}
