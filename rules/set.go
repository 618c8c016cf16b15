package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

// maxRuleFileBytes caps one rule file or module: a rule file is a few
// kilobytes, and a file of megabytes in the rules directory is a mistake
// (a capture, a log) that must not be parsed into every state.
const maxRuleFileBytes = 1 << 20

// LoadError is a mistake in a rule set, at a file and line (Line is 0 when
// the mistake is about the whole file).
type LoadError struct {
	File string
	Line int
	Msg  string
}

func (e LoadError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return e.File + ": " + e.Msg
}

// LoadErrors are all the mistakes found in a rule set, in file order.
type LoadErrors []LoadError

func (e LoadErrors) Error() string {
	lines := make([]string, len(e))
	for i, le := range e {
		lines[i] = le.Error()
	}
	return strings.Join(lines, "\n")
}

// rule is a declared rule, shared by all the states of its set.
type rule struct {
	// loc is "file.lua:LINE" of the haka.rule call: the "rule" of alerts
	// and decisions.
	loc  string
	file string
	line int
	ev   Event
}

// ruleSet is a loaded rule set: the compiled files, the rules and the
// interpreter states that run them.
type ruleSet struct {
	opts    *Options
	fsys    fs.FS
	release func() // releases fsys once the set is closed
	name    string
	reg     *registry
	files   []string
	// warnings are mistakes that do not stop the set from loading (see
	// lint): New and Reload log them, Check reports them.
	warnings LoadErrors
	rules    []*rule
	hooks    [][]*rule // by Event, in evaluation order
	states   []*state
	created  *atomic.Int64 // the engine's count of states created
	// closed, when set, is called once the states are closed (the
	// engine's Stats).
	closed func()

	// refs counts the flows pinned to the set, plus one while it is the
	// engine's current set. The states close when it drops to zero.
	refs atomic.Int64

	modMu   sync.Mutex
	modules map[string]module
}

type module struct {
	proto *lua.FunctionProto
	err   error
}

// tryAcquire pins a flow to s unless s was released for good.
func (s *ruleSet) tryAcquire() bool {
	for {
		n := s.refs.Load()
		if n == 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *ruleSet) unpin() {
	if s.refs.Add(-1) == 0 {
		s.close()
	}
}

func (s *ruleSet) close() {
	for _, st := range s.states {
		st.mu.Lock()
		st.close()
		st.mu.Unlock()
	}
	s.release()
	if s.closed != nil {
		s.closed()
	}
}

// loadSet compiles the *.lua files opts names, in name order, and runs
// them in n fresh states. Every mistake it can find is reported, not only
// the first: files that compile are run even when others do not, and when
// checking, the set's code is linted even when it does not load.
func loadSet(opts *Options, n int, created *atomic.Int64, checking bool) (_ *ruleSet, err error) {
	reg, err := newRegistry(opts.Dissectors)
	if err != nil {
		return nil, err
	}
	fsys, release, err := opts.open()
	if err != nil {
		return nil, err
	}
	name := opts.sourceName()
	s := &ruleSet{opts: opts, fsys: fsys, release: release, name: name, reg: reg, created: created, modules: make(map[string]module)}
	defer func() {
		if err != nil && s.states == nil {
			release()
		}
	}()
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("reading rules from %s: %w", name, err)
	}
	s.files = ruleFiles(entries)
	if len(s.files) == 0 {
		return nil, fmt.Errorf("%s: no *.lua rule files", name)
	}
	var errs LoadErrors
	protos := make([]*lua.FunctionProto, len(s.files))
	for i, f := range s.files {
		p, err := compile(fsys, f)
		var le LoadError
		if errors.As(err, &le) {
			errs = append(errs, le)
		} else if err != nil {
			return nil, err
		}
		protos[i] = p
	}

	first, ferrs := s.runFiles(protos, false)
	errs = tidy(append(errs, ferrs...), s.files)
	if len(errs) > 0 {
		if first != nil {
			if checking {
				var compiled []*lua.FunctionProto
				for _, p := range protos {
					if p != nil {
						compiled = append(compiled, p)
					}
				}
				errs = tidy(append(errs, lint(first, compiled)...), s.files)
			}
			first.close()
		}
		return nil, errs
	}
	s.states = append(s.states, first)
	s.warnings = tidy(append(lint(first, protos), first.lsm.warnings...), s.files)
	s.rules = make([]*rule, len(first.declared))
	s.hooks = make([][]*rule, len(reg.events))
	for i, d := range first.declared {
		r := &rule{loc: fmt.Sprintf("%s:%d", d.file, d.line), file: d.file, line: d.line, ev: d.ev}
		s.rules[i] = r
		s.hooks[d.ev] = append(s.hooks[d.ev], r)
	}
	first.bind()
	for len(s.states) < n {
		st, errs := s.runFiles(protos, true)
		if err := s.sameRules(st, errs); err != nil {
			if st != nil {
				st.close()
			}
			s.close()
			return nil, err
		}
		st.bind()
		s.states = append(s.states, st)
	}
	s.refs.Store(1)
	return s, nil
}

// ruleFiles are the *.lua files of a directory listing, in name order
// (fs.ReadDir sorts).
func ruleFiles(entries []fs.DirEntry) []string {
	var files []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".lua") && !e.IsDir() {
			files = append(files, e.Name())
		}
	}
	return files
}

// runFiles creates a state and runs the top-level code of every compiled
// file in it.
func (s *ruleSet) runFiles(protos []*lua.FunctionProto, quiet bool) (*state, LoadErrors) {
	st, err := newState(s, quiet)
	if err != nil {
		return nil, LoadErrors{{File: s.name, Msg: err.Error()}}
	}
	var errs LoadErrors
	st.loading = true
	for i, p := range protos {
		if p == nil {
			continue
		}
		if le, ok := st.run(s.files[i], p); !ok {
			errs = append(errs, le)
		}
	}
	st.endLoading()
	st.loading = false
	errs = append(errs, st.problems...)
	return st, tidy(errs, s.files)
}

// run executes a chunk's top-level code under the load deadline.
func (st *state) run(file string, p *lua.FunctionProto) (LoadError, bool) {
	L := st.L
	L.Push(L.NewFunctionFromProto(p))
	st.ctx.arm(loadDeadline)
	err := L.PCall(0, 0, nil)
	expired := err != nil && st.overran(err)
	st.ctx.disarm()
	switch {
	case err == nil:
		return LoadError{}, true
	case expired:
		return LoadError{File: file, Msg: fmt.Sprintf("top-level code ran for more than %v (an endless loop?)", loadDeadline)}, false
	}
	return locate(file, luaErrorMessage(err)), false
}

// bind resolves the eval functions of the set's rules in st.
func (st *state) bind() {
	st.evals = make([][]*lua.LFunction, len(st.set.hooks))
	for _, d := range st.declared {
		st.evals[d.ev] = append(st.evals[d.ev], d.fn)
	}
	st.declared = nil
	st.quiet = false
}

// sameRules checks that a further state declared exactly the rules of the
// first: top-level code that depends on something else than the files
// (there is little it could depend on in the sandbox, but math.random is
// one) would make a flow's rules depend on its state.
func (s *ruleSet) sameRules(st *state, errs LoadErrors) error {
	if len(errs) > 0 {
		return errs
	}
	same := len(st.declared) == len(s.rules)
	for i := 0; same && i < len(s.rules); i++ {
		d, r := st.declared[i], s.rules[i]
		same = d.file == r.file && d.line == r.line && d.ev == r.ev
	}
	if !same {
		return LoadErrors{{File: s.name, Msg: "the rule files declared different rules in two interpreter states: declarations must not depend on anything but the files"}}
	}
	if !sameDissectors(s.states[0], st) {
		return LoadErrors{{File: s.name, Msg: "the rule files defined different dissectors or state machines in two interpreter states: definitions must not depend on anything but the files"}}
	}
	return nil
}

// compile parses and compiles one file of fsys.
func compile(fsys fs.FS, name string) (*lua.FunctionProto, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, LoadError{File: name, Msg: err.Error()}
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, maxRuleFileBytes+1))
	if err != nil {
		return nil, LoadError{File: name, Msg: err.Error()}
	}
	if len(src) > maxRuleFileBytes {
		return nil, LoadError{File: name, Msg: fmt.Sprintf("larger than %d bytes: not a rule file", maxRuleFileBytes)}
	}
	chunk, err := parse.Parse(bytes.NewReader(src), name)
	if err != nil {
		var pe *parse.Error
		if errors.As(err, &pe) {
			le := LoadError{File: name, Line: pe.Pos.Line, Msg: pe.Message}
			if pe.Pos.Line == parse.EOF {
				le.Line = bytes.Count(src, []byte("\n")) + 1
				le.Msg += " at the end of the file"
			} else if pe.Token != "" {
				le.Msg += fmt.Sprintf(" near '%s'", pe.Token)
			}
			return nil, le
		}
		return nil, LoadError{File: name, Msg: err.Error()}
	}
	p, err := lua.Compile(chunk, name)
	if err != nil {
		var ce *lua.CompileError
		if errors.As(err, &ce) {
			return nil, LoadError{File: name, Line: ce.Line, Msg: ce.Message}
		}
		return nil, LoadError{File: name, Msg: err.Error()}
	}
	return p, nil
}

// locRE matches the "file.lua:LINE: " gopher-lua puts in front of a
// runtime error raised in Lua code.
var locRE = regexp.MustCompile(`^([^\s:]+\.lua):(\d+):\s*`)

// locate turns a runtime error of file's top-level code into a LoadError
// at the place the message names (which may be a module file).
func locate(file, msg string) LoadError {
	if m := locRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[2])
		return LoadError{File: m[1], Line: line, Msg: msg[len(m[0]):]}
	}
	return LoadError{File: file, Msg: msg}
}

// tidy orders errors by file (in load order, modules after) and line, so
// that output does not depend on when a mistake was found, and drops
// repeats (a require that failed at load is also found by lint).
func tidy(errs LoadErrors, files []string) LoadErrors {
	order := make(map[string]int, len(files))
	for i, f := range files {
		order[f] = i
	}
	rank := func(f string) int {
		if i, ok := order[f]; ok {
			return i
		}
		return len(files)
	}
	slices.SortStableFunc(errs, func(a, b LoadError) int {
		if ra, rb := rank(a.File), rank(b.File); ra != rb {
			return ra - rb
		}
		if a.File != b.File {
			return strings.Compare(a.File, b.File)
		}
		return a.Line - b.Line
	})
	seen := make(map[LoadError]bool, len(errs))
	return slices.DeleteFunc(errs, func(e LoadError) bool {
		dup := seen[e]
		seen[e] = true
		return dup
	})
}

// moduleNameRE: identifiers separated by dots, each dot a directory. No
// component can be "..", empty, or absolute, so a module is always a file
// under the rules directory.
var moduleNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// module compiles a required module once for the whole set.
func (s *ruleSet) module(name string) (*lua.FunctionProto, error) {
	if !moduleNameRE.MatchString(name) {
		return nil, errors.New("module names are identifiers separated by dots (lib.util is lib/util.lua in the rules directory)")
	}
	file := strings.ReplaceAll(name, ".", "/") + ".lua"
	if path.Dir(file) == "." {
		for _, f := range s.files {
			if f == file {
				return nil, fmt.Errorf("%s is a rule file, loaded on its own; put code shared by rule files in a module in a subdirectory", file)
			}
		}
	}
	s.modMu.Lock()
	defer s.modMu.Unlock()
	if m, ok := s.modules[name]; ok {
		return m.proto, m.err
	}
	var m module
	if _, err := fs.Stat(s.fsys, file); errors.Is(err, fs.ErrNotExist) {
		m.err = fmt.Errorf("no %s in %s", file, s.name)
	} else if err != nil {
		m.err = err // a link out of the directory: "path escapes from parent"
	} else {
		m.proto, m.err = compile(s.fsys, file)
	}
	s.modules[name] = m
	return m.proto, m.err
}
