package rulescmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := NewCmdRules()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A directory of broken files: every mistake is printed as FILE:LINE:
// MESSAGE, in file order, and the command fails.
func TestCheckBrokenDirectory(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"01_syntax.lua": "haka.rule{ on = tls.events.alert,\n  eval = function(flow) if end }\n",
		"02_event.lua":  "-- a typo in the event\nhaka.rule{ on = tls.events.heartbaet, eval = function() end }\n",
		"03_keys.lua": "haka.rule{ on = tls.events.alert, evla = function() end }\n" +
			"haka.rule{ hook = tls.events.alert, eval = 'drop' }\n" +
			"haka.rule{ on = tls.events.alert, eval = function() end, name = 'x' }\n",
		"04_require.lua": "local lib = require 'lib.missing'\n",
		"05_ok.lua":      "haka.rule{ on = tls.events.alert, eval = function(flow) flow:drop() end }\n",
		"06_escape.lua":  "\nrequire '../../etc/passwd'\n",
		"07_runtime.lua": "local t = nil\nlocal x = t.x\n",
		"08_typo.lua": "haka.rule{ on = tls.events.heartbeat, eval = function(flow, hb)\n" +
			"  if hb.overflow then drop(flow) end\n" +
			"  if hb.leak then require('lib.gone').stop(flow) end\nend }\n",
		"README.md": "not a rule file",
	})
	stdout, stderr, err := run(t, "check", dir)
	if err == nil {
		t.Fatal("check succeeded on a broken directory")
	}
	if err.Error() != dir+": 11 mistakes" {
		t.Errorf("error %q", err)
	}
	if stdout != "" {
		t.Errorf("stdout %q", stdout)
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	want := []string{
		p("01_syntax.lua") + ":2: syntax error near 'end'",
		p("02_event.lua") + `:2: tls.events.heartbaet: no such field (did you mean "heartbeat"?)`,
		p("03_keys.lua") + `:1: haka.rule: unknown key "evla" (did you mean "eval"?); a rule takes on (or hook) and eval`,
		p("03_keys.lua") + ":1: haka.rule: no eval function: add eval = function(flow, param) ... end",
		p("03_keys.lua") + ":2: haka.rule: eval must be a function, not a string",
		p("03_keys.lua") + `:3: haka.rule: unknown key "name"; a rule takes on (or hook) and eval`,
		p("04_require.lua") + `:1: require "lib.missing": no lib/missing.lua in ` + dir,
		p("06_escape.lua") + `:2: require "../../etc/passwd": module names are identifiers separated by dots (lib.util is lib/util.lua in the rules directory)`,
		p("07_runtime.lua") + ":2: attempt to index a non-table object(nil) with key 'x'",
		p("08_typo.lua") + `:2: undefined global "drop"`,
		p("08_typo.lua") + `:3: require "lib.gone": no lib/gone.lua in ` + dir,
	}
	// The root command prints the returned error after the mistakes.
	var got []string
	for _, l := range strings.Split(strings.TrimSuffix(stderr, "\n"), "\n") {
		if !strings.HasPrefix(l, "Error: ") {
			got = append(got, l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr, strings.Join(want, "\n"))
	}
}

func TestCheckGoodDirectory(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"a.lua":        "local lib = require 'lib.util'\nhaka.rule{ on = tls.events.alert, eval = lib.eval }\n",
		"lib/util.lua": "return { eval = function(flow) flow:drop() end }\n",
	})
	stdout, stderr, err := run(t, "check", dir)
	if err != nil || stderr != "" {
		t.Fatalf("err %v, stderr %q", err, stderr)
	}
	if stdout != dir+": 1 rules in 1 files, no mistakes\n" {
		t.Errorf("stdout %q", stdout)
	}
}

func TestCheckStockRules(t *testing.T) {
	stdout, _, err := run(t, "check")
	if err != nil || !strings.HasPrefix(stdout, "stock rules: ") || !strings.HasSuffix(stdout, "files, no mistakes\n") {
		t.Errorf("stdout %q, err %v", stdout, err)
	}
}

func TestCheckMissingDirectory(t *testing.T) {
	_, _, err := run(t, "check", "/nonexistent/rules")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/rules") {
		t.Errorf("err %v", err)
	}
}

// runF receives the options the flags and arguments made.
func TestCheckOptions(t *testing.T) {
	var got *CheckOptions
	cmd := NewCmdCheck(func(o *CheckOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"some/dir"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.Dir != "some/dir" || got.Out == nil || got.ErrOut == nil {
		t.Errorf("options %+v", got)
	}
}
