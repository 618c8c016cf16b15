package rules

import (
	"errors"
	"go.uber.org/zap/zapcore"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Mistakes in rule files are load errors at their file and line, all of
// them at once.
func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"syntax", map[string]string{"a.lua": "haka.rule{ on = tls.events.alert,\n  eval = function(flow) if end }\n"},
			[]string{"a.lua:2: syntax error near 'end'"}},
		{"unterminated", map[string]string{"a.lua": "haka.rule{ on = tls.events.alert,\n eval = function() end\n"},
			[]string{"a.lua:3: "}},
		{"unknown event", map[string]string{"a.lua": "\nhaka.rule{ on = tls.events.heartbaet, eval = function() end }"},
			[]string{`a.lua:2: tls.events.heartbaet: no such field (did you mean "heartbeat"?)`}},
		{"unknown dissector", map[string]string{"a.lua": "haka.rule{ on = haka.dissectors.tsl.events.alert, eval = function() end }"},
			[]string{`a.lua:1: haka.dissectors.tsl: no such field (did you mean "tls"?)`}},
		{"typo in eval", map[string]string{"a.lua": "haka.rule{ on = tls.events.alert, evla = function() end }"},
			[]string{`a.lua:1: haka.rule: unknown key "evla" (did you mean "eval"?)`, "a.lua:1: haka.rule: no eval function"}},
		{"eval not a function", map[string]string{"a.lua": "haka.rule{ hook = tls.events.alert, eval = 'drop' }"},
			[]string{"a.lua:1: haka.rule: eval must be a function, not a string"}},
		{"no event", map[string]string{"a.lua": "haka.rule{ eval = function() end }"},
			[]string{"a.lua:1: haka.rule: no event"}},
		{"event as a string", map[string]string{"a.lua": "haka.rule{ on = 'heartbeat', eval = function() end }"},
			[]string{"a.lua:1: haka.rule: on must be an event such as tls.events.client_hello, not a string"}},
		{"on and hook", map[string]string{"a.lua": "haka.rule{ on = tls.events.alert, hook = tls.events.alert, eval = function() end }"},
			[]string{"a.lua:1: haka.rule: both on and hook"}},
		{"not a table", map[string]string{"a.lua": "haka.rule(tls.events.alert, function() end)"},
			[]string{"a.lua:1: haka.rule: takes one table"}},
		{"runtime error", map[string]string{"a.lua": "local x = nil\nlocal y = x.field\n"},
			[]string{"a.lua:2: attempt to index a non-table object(nil) with key 'field'"}},
		{"missing module", map[string]string{"a.lua": "local lib = require 'lib.missing'\n"},
			[]string{`a.lua:1: require "lib.missing": no lib/missing.lua in rules`}},
		{"module escaping the directory", map[string]string{"a.lua": "require '../secret'"},
			[]string{`a.lua:1: require "../secret": module names are identifiers separated by dots`}},
		{"absolute module", map[string]string{"a.lua": "require '/etc/passwd'"},
			[]string{`a.lua:1: require "/etc/passwd": module names are identifiers`}},
		{"module with a slash", map[string]string{"a.lua": "require 'lib/util'", "lib/util.lua": "return {}"},
			[]string{`a.lua:1: require "lib/util": module names are identifiers`}},
		{"rule file as a module", map[string]string{"a.lua": "require 'b'", "b.lua": ""},
			[]string{`a.lua:1: require "b": b.lua is a rule file`}},
		{"broken module", map[string]string{"a.lua": "require 'lib.util'", "lib/util.lua": "return {"},
			[]string{`a.lua:1: require "lib.util": lib/util.lua:1: `}},
		{"module raising", map[string]string{"a.lua": "require 'lib.util'", "lib/util.lua": "\nerror('boom')"},
			[]string{`a.lua:1: require "lib.util": lib/util.lua:2: boom`}},
		{"circular modules", map[string]string{"a.lua": "require 'lib.x'", "lib/x.lua": "require 'lib.y'", "lib/y.lua": "require 'lib.x'"},
			[]string{`circular require`}},
		{"several files", map[string]string{
			"b.lua": "haka.rule{ on = tls.events.alert, eval = 1 }\nhaka.rule{ on = tls.events.alert, evla = 2 }",
			"a.lua": "x = = 1",
			"c.lua": "haka.rule{ on = tls.events.alert, eval = function() end }",
		}, []string{
			"a.lua:1: ",
			"b.lua:1: haka.rule: eval must be a function, not a number",
			`b.lua:2: haka.rule: unknown key "evla"`,
			"b.lua:2: haka.rule: no eval function",
		}},
		{"no rule files", map[string]string{"README": "x"}, []string{"rules: no *.lua rule files"}},
		{"huge file", map[string]string{"a.lua": "--" + strings.Repeat("x", maxRuleFileBytes)}, []string{"a.lua: larger than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tryHarness(tc.files, Options{PoolSize: 2})
			if err == nil {
				t.Fatal("loaded")
			}
			var errs LoadErrors
			if errors.As(err, &errs) && len(errs) != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%v", len(errs), len(tc.want), err)
			}
			lines := strings.Split(err.Error(), "\n")
			for i, w := range tc.want {
				if i >= len(lines) || !strings.HasPrefix(lines[i], w) && !strings.Contains(lines[i], w) {
					t.Errorf("error %d: want %q in\n%v", i, w, err)
				}
			}
		})
	}
}

// Top-level code that never ends is stopped by the load deadline.
func TestLoadDeadline(t *testing.T) {
	_, err := tryHarness(map[string]string{"a.lua": "while true do end"}, Options{PoolSize: 1})
	if err == nil || !strings.Contains(err.Error(), "a.lua: top-level code ran for more than 1s") {
		t.Fatalf("err = %v", err)
	}
}

// Modules come from the rules directory, are compiled once per set and run
// once per state; a module may declare rules.
func TestRequire(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rules := filepath.Join("rules")
	write(filepath.Join(rules, "a.lua"), `
local lib = require "lib.util"
local again = require "lib.util"
assert(lib == again, "module loaded twice")
haka.rule{ on = tls.events.alert, eval = function(flow) lib.stop(flow) end }
`)
	write(filepath.Join(rules, "b.lua"), `local lib = require "lib.util"`)
	write(filepath.Join(rules, "lib", "util.lua"), `
loads = (loads or 0) + 1
local M = {}
function M.stop(flow) flow:drop("loaded " .. loads) end
haka.rule{ on = tls.events.anomaly, eval = function(flow) M.stop(flow) end }
return M
`)
	write("secret.lua", `haka.rule{ on = tls.events.alert, eval = function(flow) flow:bypass() end }`)
	h, err := tryHarness(nil, Options{Dir: filepath.Join(dir, rules), PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got := len(h.Rules()); got != 2 {
		t.Errorf("%d rules, want 2 (a.lua and lib/util.lua): %v", got, h.Rules())
	}
	if h.cur.Load().modules["lib.util"].proto == nil || len(h.cur.Load().modules) != 1 {
		t.Errorf("module cache %v", h.cur.Load().modules)
	}
	for id := uint64(0); id < 2; id++ {
		f := h.NewFlow(meta(id), nil)
		if d := f.Eval(ev(t, "alert"), nil); d.Reason != "loaded 1" {
			t.Errorf("state %d: %+v", id, d)
		}
		f.Close()
	}

	// Nothing outside the directory is reachable.
	write(filepath.Join(rules, "c.lua"), `require "secret"`)
	if _, err := tryHarness(nil, Options{Dir: filepath.Join(dir, rules), PoolSize: 1}); err == nil ||
		!strings.Contains(err.Error(), `c.lua:1: require "secret": no secret.lua in `) {
		t.Errorf("require of a file outside the directory: %v", err)
	}
}

// The engine refuses a directory that does not exist, naming it.
func TestMissingDir(t *testing.T) {
	_, err := New(Options{Dir: "/nonexistent/rules"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/rules") {
		t.Fatalf("err = %v", err)
	}
}

// After Close, flows evaluate nothing and Reload refuses.
func TestClosedEngine(t *testing.T) {
	h := newHarness(t, map[string]string{"a.lua": "haka.rule{ on = tls.events.alert, eval = function(flow) flow:drop() end }"}, Options{PoolSize: 1})
	st := h.cur.Load().states[0]
	h.Close()
	if !st.L.IsClosed() {
		t.Error("the set's states outlived the engine with no flow pinned")
	}
	f := h.NewFlow(meta(1), nil)
	if f.Hooked(ev(t, "alert")) || f.Eval(ev(t, "alert"), nil) != (inspect.Decision{}) {
		t.Error("a flow of a closed engine evaluated rules")
	}
	f.Close()
	if err := h.Reload(); !errors.Is(err, ErrClosed) {
		t.Errorf("Reload after Close: %v", err)
	}
}

// Reads of globals nothing defines, and requires of missing modules in
// code loading did not run, are reported by Check and logged by New, at
// their file and line; a set with them still loads.
func TestUndefinedGlobals(t *testing.T) {
	files := map[string]string{
		"a.lua": `
counter = 0
haka.rule{ on = tls.events.alert, eval = function(flow, p)
  counter = counter + 1
  if p.bad then drop(flow) end
  if DEBUG then hakka.alert{ description = "x" } end
  local lib = require "lib.util"
  lib.f(tostring(p), string.len("x"), late)
  if p.rare then require("lib.missing") end
end }
function later() late = 1 end
pcall(require, "lib.broken")
`,
		"lib/util.lua":   "return { f = function() return undefined_in_module end }",
		"lib/broken.lua": "return {",
	}
	res, err := Check(Options{FS: ruleFS(files)})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`a.lua:5: undefined global "drop"`,
		`a.lua:6: undefined global "DEBUG"`,
		`a.lua:6: undefined global "hakka" (did you mean "haka"?)`,
		`a.lua:9: require "lib.missing": no lib/missing.lua in rules`,
		`lib/util.lua:1: undefined global "undefined_in_module"`,
	}
	var got []string
	for _, p := range res.Problems {
		got = append(got, p.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(res.Rules) != 0 {
		t.Errorf("rules listed despite problems: %v", res.Rules)
	}

	h := newHarness(t, files, Options{PoolSize: 1})
	if len(h.Rules()) != 1 {
		t.Fatalf("the set did not load")
	}
	var warned []string
	for _, e := range h.logs.All() {
		if e.Level == zapcore.WarnLevel {
			warned = append(warned, e.Message+" at "+e.ContextMap()["at"].(string))
		}
	}
	if len(warned) != 5 || warned[0] != `rule set: undefined global "drop" at a.lua:5` {
		t.Errorf("warnings: %q", warned)
	}
}

// Symbolic links inside the rules directory work (a Kubernetes ConfigMap
// volume is made of them); one that leads out of it is refused, for rule
// files and modules alike.
func TestSymlinks(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "rules")
	data := filepath.Join(dir, "..2026_12_03")
	for _, d := range []string{filepath.Join(data, "lib"), filepath.Join(base, "outside")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, src string) {
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(data, "a.lua"), `local lib = require "lib.util"
haka.rule{ on = tls.events.alert, eval = function(flow) lib.stop(flow) end }`)
	write(filepath.Join(data, "lib", "util.lua"), `return { stop = function(flow) flow:drop("via links") end }`)
	link("..2026_12_03", filepath.Join(dir, "..data"))
	link("..data/a.lua", filepath.Join(dir, "a.lua"))
	link("..data/lib", filepath.Join(dir, "lib"))
	h := newHarness(t, nil, Options{Dir: dir, PoolSize: 1})
	f := h.NewFlow(meta(1), nil)
	if d := f.Eval(ev(t, "alert"), nil); d.Reason != "via links" {
		t.Errorf("decision %+v", d)
	}
	f.Close()

	write(filepath.Join(base, "outside", "evil.lua"), `return {}`)
	link(filepath.Join(base, "outside"), filepath.Join(dir, "out"))
	write(filepath.Join(data, "b.lua"), `require "out.evil"`)
	link("..data/b.lua", filepath.Join(dir, "b.lua"))
	if _, err := tryHarness(nil, Options{Dir: dir, PoolSize: 1}); err == nil || !strings.Contains(err.Error(), `b.lua:1: require "out.evil": `) || !strings.Contains(err.Error(), "escapes") {
		t.Errorf("a module through a link out of the directory: %v", err)
	}
	os.Remove(filepath.Join(dir, "b.lua"))
	link(filepath.Join(base, "outside", "evil.lua"), filepath.Join(dir, "c.lua"))
	if _, err := tryHarness(nil, Options{Dir: dir, PoolSize: 1}); err == nil || !strings.Contains(err.Error(), "c.lua: ") || !strings.Contains(err.Error(), "escapes") {
		t.Errorf("a rule file linked from out of the directory: %v", err)
	}
}
