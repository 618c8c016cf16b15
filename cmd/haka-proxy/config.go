package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// applyConfigFile sets the flags from the YAML file at path: each key is
// a flag's name, each value its value (a list for a list flag). A flag
// given on the command line keeps its value. An unknown key is an error
// naming it, so that a typo does not silently leave a default in force.
// A flag set from the file counts as given (pflag's Changed), like one on
// the command line, for the defaults that depend on whether it was.
func applyConfigFile(flags *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config file %s: line %d: want a mapping of flag names to values", path, root.Line)
	}
	seen := make(map[string]bool)
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		fail := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("config file %s: line %d: %s", path, k.Line, fmt.Sprintf(format, a...)))
		}
		f := flags.Lookup(key)
		if f == nil || key == "config" || f.Hidden {
			fail("unknown key %q", key)
			continue
		}
		if seen[key] {
			fail("%q is set twice", key)
			continue
		}
		seen[key] = true
		val, err := nodeValue(v)
		if err != nil {
			fail("%s: %v", key, err)
			continue
		}
		if f.Changed {
			continue // the command line wins
		}
		if err := f.Value.Set(val); err != nil {
			fail("%s: %v", key, err)
			continue
		}
		f.Changed = true
	}
	return errors.Join(errs...)
}

// nodeValue renders a YAML value as a flag's text: a scalar as is, a
// list of scalars joined with commas.
func nodeValue(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Value, nil
	case yaml.SequenceNode:
		parts := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return "", errors.New("want a list of values")
			}
			parts = append(parts, c.Value)
		}
		return strings.Join(parts, ","), nil
	}
	return "", errors.New("want a value or a list of values")
}

// byteSize is a flag holding a number of bytes, written plainly or with
// a binary unit: 524288, 512KiB, 1MiB.
type byteSize int

func (b *byteSize) String() string { return strconv.Itoa(int(*b)) }
func (b *byteSize) Type() string   { return "bytes" }

func (b *byteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > (1<<31-1)/mult {
		return fmt.Errorf("%q is not a size in bytes (e.g. 524288, 512KiB, 1MiB)", s)
	}
	*b = byteSize(n * mult)
	return nil
}
