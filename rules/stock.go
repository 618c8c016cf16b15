package rules

import (
	"embed"
	"io/fs"
)

// The stock rules are the set that runs when no rule directory is given.
//
//go:embed *.lua
var stock embed.FS

// Stock returns the stock rule files (rules/*.lua of the source tree).
func Stock() fs.FS { return stock }
