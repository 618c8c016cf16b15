package rules

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"

	lua "github.com/yuin/gopher-lua"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// harness is an engine with its log and alert streams captured.
type harness struct {
	*Engine
	logs   *observer.ObservedLogs
	alerts *syncBuffer
}

// syncBuffer is the alert stream; output.Writer serialises writes, the
// mutex covers reads racing with them.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the alert records written so far, decoded.
func (b *syncBuffer) lines(t testing.TB) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("alert line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// ruleFS builds a rule directory in memory.
func ruleFS(files map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for name, src := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	return fsys
}

// newHarness loads files (or the stock rules when files is nil) with opts.
func newHarness(t testing.TB, files map[string]string, opts Options) *harness {
	t.Helper()
	h, err := tryHarness(files, opts)
	if err != nil {
		t.Fatalf("loading rules: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func tryHarness(files map[string]string, opts Options) (*harness, error) {
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{logs: logs, alerts: &syncBuffer{}}
	opts.Logger = zap.New(core)
	opts.Alerts = output.NewWriter(h.alerts, output.JSON)
	if files != nil {
		opts.FS = ruleFS(files)
	}
	e, err := New(opts)
	if err != nil {
		return nil, err
	}
	h.Engine = e
	return h, nil
}

// flowInfo is the FlowInfo of the tests: fixed values, and a count of the
// calls, which must only happen when a rule reads a live field.
type flowInfo struct {
	info  inspect.Info
	state string
	calls atomic.Int64
}

func (fi *flowInfo) Info() inspect.Info { fi.calls.Add(1); return fi.info }
func (fi *flowInfo) State() string      { fi.calls.Add(1); return fi.state }

func meta(id uint64) *inspect.Flow {
	return &inspect.Flow{
		ID:  id,
		Src: netip.MustParseAddrPort("192.0.2.10:51515"),
		Dst: netip.MustParseAddrPort("198.51.100.7:443"),
	}
}

// toLua converts test data to Lua: maps to tables, slices to lists.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case lua.LValue:
		return v
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case []any:
		t := L.CreateTable(len(v), 0)
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	case []string:
		t := L.CreateTable(len(v), 0)
		for _, e := range v {
			t.Append(lua.LString(e))
		}
		return t
	case []int:
		t := L.CreateTable(len(v), 0)
		for _, e := range v {
			t.Append(lua.LNumber(e))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(v))
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	}
	panic(fmt.Sprintf("toLua: %T", v))
}

// param returns a build function for Eval.
func param(v any) func(*lua.LState) lua.LValue {
	return func(L *lua.LState) lua.LValue { return toLua(L, v) }
}

// ev names a tls event by name, failing on a typo in a test.
func ev(t testing.TB, name string) Event {
	t.Helper()
	for _, e := range tlssm.Events {
		if e.Name == name {
			return TLS(e.ID)
		}
	}
	t.Fatalf("no tls event %q", name)
	return 0
}

// messages returns the logged messages at or above level, with the
// "rule" and "error" fields, one string each, sorted.
func messages(logs *observer.ObservedLogs, level zapcore.Level) []string {
	var out []string
	for _, e := range logs.All() {
		if e.Level < level {
			continue
		}
		s := e.Message
		m := e.ContextMap()
		for _, k := range []string{"rule", "at", "error"} {
			if v, ok := m[k]; ok {
				s += fmt.Sprintf(" %s=%v", k, v)
			}
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func containsAll(t testing.TB, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s: %q does not contain %q", what, s, sub)
		}
	}
}
