// Package examples holds levee's example configuration. Its rule files are
// also compiled into the binary: they are what `levee serve` enforces when
// it is started with no --config, so one command runs a useful levee.
package examples

import "embed"

// Rules holds rules/*.yaml, envoyproxy/ratelimit-format rule files.
//
//go:embed rules/*.yaml
var Rules embed.FS
