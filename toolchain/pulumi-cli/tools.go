//go:build tools

// Package toolchain pins the Pulumi CLI as a dependency so `go build` can build it.
package toolchain

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
