package rules

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// versioned is a rule set that says which version it is, and fails if a
// flow that started on one version is evaluated by another.
func versioned(v int) string {
	return fmt.Sprintf(`
local version = %d
haka.rule{ on = tls.events.record, eval = function(flow, p)
  flow.data.version = flow.data.version or version
  if flow.data.version ~= version then
    error("flow " .. flow.id .. " moved from set " .. flow.data.version .. " to " .. version)
  end
  p.version = version
end }
`, v)
}

func writeRules(t testing.TB, dir, src string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "v.lua"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

func version(t testing.TB, f *Flow) int {
	t.Helper()
	var p *lua.LTable
	d := f.Eval(ev(t, "record"), func(L *lua.LState) lua.LValue { p = L.NewTable(); return p })
	if d.Verdict != inspect.Pass {
		t.Errorf("flow %d: %+v", f.id, d)
		return -1
	}
	n, _ := p.RawGetString("version").(lua.LNumber)
	return int(n)
}

// A flow keeps the set it started with across a reload; the old set's
// states close when its last flow does; a broken set is refused and the
// running one stays.
func TestReloadPinsFlows(t *testing.T) {
	dir := t.TempDir()
	writeRules(t, dir, versioned(1))
	h := newHarness(t, nil, Options{Dir: dir, PoolSize: 2})
	old := h.NewFlow(meta(1), nil)
	if v := version(t, old); v != 1 {
		t.Fatalf("version %d", v)
	}
	set1 := h.cur.Load()

	writeRules(t, dir, versioned(2))
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	young := h.NewFlow(meta(1), nil)
	if v1, v2 := version(t, old), version(t, young); v1 != 1 || v2 != 2 {
		t.Errorf("after reload: old flow on %d, new flow on %d", v1, v2)
	}
	for _, st := range set1.states {
		if st.L.IsClosed() {
			t.Fatal("a state of the old set closed while a flow used it")
		}
	}
	old.Close()
	for _, st := range set1.states {
		if !st.L.IsClosed() {
			t.Error("the old set's states outlived its last flow")
		}
	}

	writeRules(t, dir, "haka.rule{ on = tls.events.record, eval = function(flow, p) end\n")
	err := h.Reload()
	var errs LoadErrors
	if !errors.As(err, &errs) || !strings.HasPrefix(err.Error(), "v.lua:2: ") {
		t.Fatalf("broken set: %v", err)
	}
	if v := version(t, young); v != 2 {
		t.Errorf("the running set changed after a refused reload: %d", v)
	}
	later := h.NewFlow(meta(3), nil)
	if v := version(t, later); v != 2 {
		t.Errorf("a new flow after a refused reload got %d", v)
	}
	later.Close()
	young.Close()
	if got := messages(h.logs, 0); !strings.Contains(strings.Join(got, "\n"), "rules reload refused; the running rules stay") {
		t.Errorf("refused reload not logged: %q", got)
	}
}

// Reloads, good and broken, while many goroutines evaluate events on many
// flows: no flow is lost, every flow stays on its set, and every replaced
// set is closed once its flows are.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	writeRules(t, dir, versioned(1))
	// The workers spin without ever blocking, so the scheduler preempts
	// them in the middle of evaluations: a deadline would measure that,
	// not the rules.
	h := newHarness(t, nil, Options{Dir: dir, PoolSize: 3, Deadline: time.Minute})
	const workers, flowsPerWorker, eventsPerFlow = 8, 150, 5
	var (
		nextID   atomic.Uint64
		finished atomic.Int64
		wg       sync.WaitGroup
		stop     = make(chan struct{})
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Keep a few flows open at once, so that reloads happen in the
			// middle of flows.
			var open []*Flow
			for i := 0; i < flowsPerWorker; i++ {
				f := h.NewFlow(meta(nextID.Add(1)), nil)
				open = append(open, f)
				for _, g := range open {
					version(t, g)
				}
				if len(open) == eventsPerFlow {
					open[0].Close()
					open = open[1:]
					finished.Add(1)
				}
			}
			for _, f := range open {
				f.Close()
				finished.Add(1)
			}
		}()
	}
	var sets []*ruleSet
	reloads, refused := 0, 0
	go func() {
		wg.Wait()
		close(stop)
	}()
reload:
	for v := 2; ; v++ {
		select {
		case <-stop:
			break reload
		default:
		}
		sets = append(sets, h.cur.Load())
		if v%3 == 0 {
			writeRules(t, dir, "haka.rule{ on = tls.events.record, evla = 1 }")
			if err := h.Reload(); err == nil {
				t.Fatal("a broken set was accepted")
			}
			refused++
			continue
		}
		writeRules(t, dir, versioned(v))
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
		reloads++
	}
	if got := finished.Load(); got != workers*flowsPerWorker {
		t.Errorf("%d flows finished, want %d", got, workers*flowsPerWorker)
	}
	if reloads < 2 || refused < 1 {
		t.Errorf("only %d reloads and %d refused during the load", reloads, refused)
	}
	cur := h.cur.Load()
	for _, s := range sets {
		if s == cur {
			continue
		}
		for _, st := range s.states {
			if !st.L.IsClosed() {
				t.Fatal("a replaced set was not closed after its flows")
			}
		}
	}
	t.Logf("%d reloads, %d refused, %d flows", reloads, refused, finished.Load())
}

// Many goroutines on many flows sharing a few states: each flow's data is
// its own (run with -race).
func TestConcurrentFlows(t *testing.T) {
	h := newHarness(t, map[string]string{"c.lua": `
haka.rule{ on = tls.events.record, eval = function(flow, p)
  flow.data.n = (flow.data.n or 0) + 1
  flow.data.sum = (flow.data.sum or 0) + p.x
  p.n, p.sum = flow.data.n, flow.data.sum
  if p.x == 13 then haka.alert{ description = "thirteen " .. flow.id, severity = "low" } end
end }
`}, Options{PoolSize: 2, Deadline: time.Minute}) // as in TestReloadUnderLoad
	const goroutines, flows, events = 6, 200, 8
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range flows {
				id := uint64(g*flows + i)
				f := h.NewFlow(meta(id), nil)
				sum := 0
				for e := 1; e <= events; e++ {
					x := int(id)%7 + e
					sum += x
					var p *lua.LTable
					f.Eval(ev(t, "record"), func(L *lua.LState) lua.LValue {
						p = toLua(L, map[string]any{"x": x}).(*lua.LTable)
						return p
					})
					if p.RawGetString("n") != lua.LNumber(e) || p.RawGetString("sum") != lua.LNumber(sum) {
						t.Errorf("flow %d event %d: n=%v sum=%v, want %d %d", id, e, p.RawGetString("n"), p.RawGetString("sum"), e, sum)
						return
					}
				}
				f.Close()
			}
		}()
	}
	wg.Wait()
	// x = id%7 + e is 13 for ids with id%7 == 5 (e = 8) and == 6 (e = 7).
	want := 0
	for id := 0; id < goroutines*flows; id++ {
		if id%7 >= 5 {
			want++
		}
	}
	if got := len(h.alerts.lines(t)); got != want {
		t.Errorf("%d alerts, want %d", got, want)
	}
}
