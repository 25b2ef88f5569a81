// Package examples holds levee's example configuration. Its rule files and
// shedding policy are also compiled into the binary: they are what `levee
// serve` enforces when started with no --config or --shed-policy, so one
// command runs a useful levee.
package examples

import "embed"

// Rules holds rules/*.yaml, envoyproxy/ratelimit-format rule files.
//
//go:embed rules/*.yaml
var Rules embed.FS

// ShedPolicy is shed/policy.yaml, the example shedding policy.
//
//go:embed shed/policy.yaml
var ShedPolicy []byte
