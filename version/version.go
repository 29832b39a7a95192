// Package version holds the build's version, set with
// -ldflags "-X github.com/bud-ecosystem/budfleet/version.Version=...".
package version

// Version of this build.
var Version = "dev"
