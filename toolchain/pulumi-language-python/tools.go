//go:build tools

// Package toolchain pins the Pulumi Python language host as a dependency so `go build` can build it.
package toolchain

import _ "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python"
