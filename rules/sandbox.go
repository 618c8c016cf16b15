package rules

import (
	"strconv"
	"strings"
	"unsafe"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/pm"
)

// Limits of the interpreter states. gopher-lua has no memory limit and
// cannot interrupt a Go function of its libraries, so everything that could
// allocate without bound in one call is capped here; what a loop of Lua
// instructions can allocate is bounded by the deadline.
const (
	// callStackSize bounds Lua call depth (and with it the Go recursion of
	// pcall and metamethods, which nest Go frames). Rules call a handful
	// of helpers deep; 200 frames is far beyond need.
	callStackSize = 200
	// registrySize is the initial value stack of a state (16 bytes a
	// slot, 256 KiB); registryMaxSize caps its growth at 1 MiB, enough
	// for the deepest call stack with every frame using its 250
	// registers. gopher-lua copies the whole stack each time it grows,
	// so it grows in large steps: in small ones, a call that pushes
	// values up to the cap (unpack(t, 1, 1e8)) would copy it hundreds of
	// times.
	registrySize     = 1 << 14
	registryMaxSize  = 1 << 16
	registryGrowStep = 1 << 14
	// maxStringBytes caps the result of one call of string.rep, gsub,
	// format and table.concat: 64 times the largest TLS record, far more
	// than a rule ever builds, and small enough that a bomb such as
	// string.rep("x", 1e10) fails instead of exhausting the process.
	maxStringBytes = 1 << 20
	// maxFormatDigits is Lua 5.1's limit on a string.format width or
	// precision; a larger one ("%999999999d") would allocate without
	// bound in Go's fmt.
	maxFormatDigits = 2
	// maxArrayIndex is where gopher-lua stops growing a table's array part
	// (lua.MaxArrayIndex; see init): `t[n] = v` fills the array up to n
	// with nils in one instruction, so at the library's default of 2^26 a
	// single assignment allocates 1 GiB. Keys above it go to the hash
	// part, so only sequences longer than a million elements lose `#`.
	maxArrayIndex = 1 << 20
	// gsubChunk is how many matches string.gsub asks the pattern matcher
	// for at a time.
	gsubChunk = 256
)

func init() {
	// gopher-lua keeps this limit in a package variable: it is set once,
	// before any state of the process exists, and never changes again.
	lua.MaxArrayIndex = maxArrayIndex
}

// removedGlobals are the base library functions a rule must not have:
// loading chunks from files or strings (including precompiled ones),
// environment tricks that would let a rule break its state for every
// other rule, process-wide side effects (a full GC, stdout) and
// gopher-lua's debugging aids. print and require are replaced.
var removedGlobals = []string{
	"dofile", "loadfile", "load", "loadstring", "module",
	"getfenv", "setfenv", "collectgarbage", "newproxy", "_printregs",
	"_GOPHER_LUA_VERSION",
}

// openSandbox opens only base, table, string and math in L and caps or
// removes what would escape the sandbox.
func openSandbox(L *lua.LState) {
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	g := L.G.Global
	for _, name := range removedGlobals {
		g.RawSetString(name, lua.LNil)
	}
	str := g.RawGetString("string").(*lua.LTable)
	str.RawSetString("dump", lua.LNil) // bytecode out is as unwanted as bytecode in
	format := str.RawGetString("format").(*lua.LFunction).GFunction
	str.RawSetString("rep", L.NewFunction(strRep))
	str.RawSetString("gsub", L.NewFunction(strGsub))
	str.RawSetString("format", L.NewFunction(func(L *lua.LState) int {
		checkFormat(L, L.CheckString(1))
		return format(L)
	}))
	g.RawGetString("table").(*lua.LTable).RawSetString("concat", L.NewFunction(tableConcat))
	// pairs(object) iterates over every field of an Object.
	pairs := g.RawGetString("pairs")
	g.RawSetString("pairs", L.NewFunction(func(L *lua.LState) int {
		if ud, ok := L.Get(1).(*lua.LUserData); ok {
			if m, ok := ud.Value.(materializer); ok {
				L.Replace(1, m.table(L))
			}
		}
		L.Insert(pairs, 1)
		L.Call(L.GetTop()-1, 3)
		return 3
	}))
	// math.randomseed would reseed the process-wide generator.
	g.RawGetString("math").(*lua.LTable).RawSetString("randomseed", lua.LNil)
}

func tooLong(L *lua.LState, fn string, n int) {
	L.RaiseError("%s: result of %d bytes exceeds the %d-byte limit of the rule sandbox", fn, n, maxStringBytes)
}

// strRep is string.rep with the result capped.
func strRep(L *lua.LState) int {
	s := L.CheckString(1)
	n := L.CheckInt(2)
	if n <= 0 || s == "" {
		L.Push(lua.LString(""))
		return 1
	}
	if n > maxStringBytes/len(s) {
		// len(s)*n may overflow: report the bound, not the product.
		tooLong(L, "string.rep", maxStringBytes+1)
	}
	L.Push(lua.LString(strings.Repeat(s, n)))
	return 1
}

// checkFormat enforces Lua 5.1's grammar of string.format directives,
// %[-+ #0]*[0-9]{0,2}(.[0-9]{0,2})?[cdiouxXeEfgGqs], on the format string
// before gopher-lua hands it to Go's fmt: a larger width would allocate
// without bound, and Go's own verbs (%v, %T, %[1]d, %*d) have no business
// in a Lua format.
func checkFormat(L *lua.LState, f string) {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		start := i
		i++
		if i < len(f) && f[i] == '%' {
			continue
		}
		for i < len(f) && strings.IndexByte("-+ #0", f[i]) >= 0 {
			i++
		}
		digits := func() {
			n := 0
			for i < len(f) && '0' <= f[i] && f[i] <= '9' {
				i++
				n++
			}
			if n > maxFormatDigits {
				L.RaiseError("string.format: invalid format %q (width or precision too long)", f[start:i])
			}
		}
		digits()
		if i < len(f) && f[i] == '.' {
			i++
			digits()
		}
		if i >= len(f) || strings.IndexByte("cdiouxXeEfgGqs", f[i]) < 0 {
			end := min(i+1, len(f))
			L.RaiseError("string.format: invalid conversion %q", f[start:end])
		}
	}
}

// tableConcat is table.concat with the result capped. gopher-lua's version
// also pushes every element on the value stack, which fails on tables
// longer than the registry.
func tableConcat(L *lua.LState) int {
	t := L.CheckTable(1)
	sep := L.OptString(2, "")
	i := L.OptInt(3, 1)
	j := L.OptInt(4, t.Len())
	var b strings.Builder
	for k := i; k <= j; k++ {
		var s string
		switch v := t.RawGetInt(k).(type) {
		case lua.LString:
			s = string(v)
		case lua.LNumber:
			s = v.String()
		default:
			L.RaiseError("table.concat: invalid value (a %s) at index %d", v.Type(), k)
		}
		n := b.Len() + len(s)
		if k > i {
			n += len(sep)
		}
		if n > maxStringBytes {
			tooLong(L, "table.concat", n)
		}
		if k > i {
			b.WriteString(sep)
		}
		b.WriteString(s)
	}
	L.Push(lua.LString(b.String()))
	return 1
}

// strGsub is string.gsub built in one pass with the result capped.
// gopher-lua's version copies the whole result once per match, which is
// quadratic: ("x"):rep(1e6):gsub(".", "y") would run for minutes in Go,
// where the deadline cannot stop it.
func strGsub(L *lua.LState) int {
	src := L.CheckString(1)
	pat := L.CheckString(2)
	L.CheckTypes(3, lua.LTString, lua.LTNumber, lua.LTTable, lua.LTFunction)
	repl := L.Get(3)
	limit := -1
	if L.GetTop() >= 4 && L.Get(4) != lua.LNil {
		if limit = L.CheckInt(4); limit <= 0 {
			L.Push(lua.LString(src))
			L.Push(lua.LNumber(0))
			return 2
		}
	}
	var b strings.Builder
	last := 0
	add := func(s string) {
		if b.Len()+len(s) > maxStringBytes {
			tooLong(L, "string.gsub", b.Len()+len(s))
		}
		b.WriteString(s)
	}
	// pm only reads its input: a view of src spares copying it.
	data := unsafe.Slice(unsafe.StringData(src), len(src))
	anchored := strings.HasPrefix(pat, "^")
	n, offset := 0, 0
	for {
		// Matches are found a chunk at a time, not all at once: a pattern
		// that matches every byte of a large subject would otherwise
		// allocate a match record per byte before the first replacement
		// is checked against the cap, and the deadline is checked between
		// chunks.
		want := gsubChunk
		if limit >= 0 {
			want = min(want, limit-n)
		}
		if want == 0 {
			break
		}
		matches, err := pm.Find(pat, data, offset, want)
		if err != nil {
			L.RaiseError("string.gsub: %s", err.Error())
		}
		for _, m := range matches {
			start, end := m.Capture(0), m.Capture(1)
			add(src[last:start])
			whole := src[start:end]
			switch r := repl.(type) {
			case lua.LString:
				expandRepl(L, string(r), src, m, add)
			case lua.LNumber:
				expandRepl(L, r.String(), src, m, add)
			case *lua.LTable:
				add(replValue(L, L.GetTable(r, firstCapture(src, m)), whole))
			case *lua.LFunction:
				L.Push(r)
				L.Call(pushCaptures(L, src, m), 1)
				v := L.Get(-1)
				L.Pop(1)
				add(replValue(L, v, whole))
			}
			last = end
			// The next search starts where pm.Find would have gone on.
			offset = max(start+1, end)
		}
		n += len(matches)
		if len(matches) < want || anchored || offset > len(src) {
			break
		}
		if ctx := L.Context(); ctx != nil && ctx.Err() != nil {
			L.RaiseError("%s", ctx.Err().Error())
		}
	}
	add(src[last:])
	L.Push(lua.LString(b.String()))
	L.Push(lua.LNumber(n))
	return 2
}

// expandRepl writes a replacement string with its %0-%9 references to the
// match and its captures; "%" followed by anything else stands for that
// character, as in Lua 5.1.
func expandRepl(L *lua.LState, repl, src string, m *pm.MatchData, add func(string)) {
	for {
		i := strings.IndexByte(repl, '%')
		if i < 0 || i+1 == len(repl) {
			add(repl)
			return
		}
		add(repl[:i])
		c := repl[i+1]
		repl = repl[i+2:]
		if c < '0' || c > '9' {
			add(string(c))
			continue
		}
		idx := int(c - '0')
		switch {
		case idx == 0 || (idx == 1 && m.CaptureLength() == 2):
			add(src[m.Capture(0):m.Capture(1)])
		case 2*idx < m.CaptureLength():
			add(captureString(src, m, 2*idx))
		default:
			L.RaiseError("string.gsub: invalid capture index %%%d", idx)
		}
	}
}

func captureString(src string, m *pm.MatchData, i int) string {
	if m.IsPosCapture(i) {
		return strconv.Itoa(m.Capture(i))
	}
	return src[m.Capture(i):m.Capture(i+1)]
}

func captureValue(src string, m *pm.MatchData, i int) lua.LValue {
	if m.IsPosCapture(i) {
		return lua.LNumber(m.Capture(i))
	}
	return lua.LString(src[m.Capture(i):m.Capture(i+1)])
}

// firstCapture is the key of a table replacement: the first capture, or
// the whole match when the pattern has none.
func firstCapture(src string, m *pm.MatchData) lua.LValue {
	if m.CaptureLength() > 2 {
		return captureValue(src, m, 2)
	}
	return lua.LString(src[m.Capture(0):m.Capture(1)])
}

// pushCaptures pushes the arguments of a function replacement.
func pushCaptures(L *lua.LState, src string, m *pm.MatchData) int {
	if m.CaptureLength() == 2 {
		L.Push(lua.LString(src[m.Capture(0):m.Capture(1)]))
		return 1
	}
	n := 0
	for i := 2; i < m.CaptureLength(); i += 2 {
		L.Push(captureValue(src, m, i))
		n++
	}
	return n
}

// replValue is the text a table or function replacement stands for: false
// or nil keep the match.
func replValue(L *lua.LState, v lua.LValue, whole string) string {
	switch v := v.(type) {
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return v.String()
	case lua.LBool:
		if !bool(v) {
			return whole
		}
	case *lua.LNilType:
		return whole
	}
	L.RaiseError("string.gsub: invalid replacement value (a %s)", v.Type())
	return ""
}
