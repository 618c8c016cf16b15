package rules

import (
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
)

// The library functions the sandbox replaces behave as in Lua 5.1 (the
// expected values are what lua5.1 prints).
func TestReplacedLibraryFunctions(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`("hello world"):gsub("o", "0")`, "hell0 w0rld 2"},
		{`("hello world"):gsub("o", "0", 1)`, "hell0 world 1"},
		{`("hello"):gsub("", "-")`, "-h-e-l-l-o- 6"},
		{`("abc"):gsub("%w*", "-")`, "-- 2"},
		{`("hello world"):gsub("(%w+)", "<%1>")`, "<hello> <world> 2"},
		{`("hello world"):gsub("%w+", "%0 %0", 1)`, "hello hello world 1"},
		{`("abc"):gsub("%w", "%%")`, "%%% 3"},
		{`("abc"):gsub("%w", "%x")`, "xxx 3"},
		{`("hello world"):gsub("(%w+) (%w+)", "%2 %1")`, "world hello 1"},
		{`("$name is $age"):gsub("%$(%w+)", {name="bob", age=3})`, "bob is 3 2"},
		{`("$name is $x"):gsub("%$(%w+)", {name="bob"})`, "bob is $x 2"},
		{`("abc"):gsub(".", function(c) return c:upper() .. "." end)`, "A.B.C. 3"},
		{`("abc"):gsub(".", function(c) if c == "b" then return false end return "X" end)`, "XbX 3"},
		{`("abc"):gsub("()", "%1")`, "1a2b3c4 4"},
		{`("abc"):gsub("^a", "X")`, "Xbc 1"},
		{`("aaa"):gsub("^a", "X")`, "Xaa 1"},
		{`("abc"):gsub("b", 5)`, "a5c 1"},
		{`("abc"):gsub("x*", "-")`, "-a-b-c- 4"},
		{`("a.b"):gsub("%.", "%%")`, "a%b 1"},
		{`("abc"):gsub(".", "x", 0)`, "abc 0"},
		{`(("ab"):rep(300)):gsub("a", "c")`, strings.Repeat("cb", 300) + " 300"}, // across chunks
		{`(("ab"):rep(300)):gsub("a", "c", 257)`, strings.Repeat("cb", 257) + strings.Repeat("ab", 43) + " 257"},
		{`pcall(string.gsub, "abc", "(a)", "%2")`, "false <string>:1: string.gsub: invalid capture index %2"},
		{`string.format("%5.2f|%-5d|%05d|%x|%X|%o|%e|%g|%c|%s|%%", 3.14159, 42, 7, 255, 255, 8, 12345.678, 0.0001, 65, "hi")`,
			" 3.14|42   |00007|ff|FF|10|1.234568e+04|0.0001|A|hi|%"},
		{`pcall(string.format, "%100d", 1)`, `false <string>:1: string.format: invalid format "%100" (width or precision too long)`},
		{`pcall(string.format, "%1.100f", 1)`, `false <string>:1: string.format: invalid format "%1.100" (width or precision too long)`},
		{`pcall(string.format, "%", 1)`, `false <string>:1: string.format: invalid conversion "%"`},
		{`table.concat({1, 2, "x"}, ", ")`, "1, 2, x"},
		{`table.concat({1, 2, 3}, "-", 2)`, "2-3"},
		{`table.concat({1, 2, 3}, "-", 2, 3)`, "2-3"},
		{`table.concat({}, "-")`, ""},
		{`table.concat({1, 2, 3}, "-", 3, 2)`, ""},
		{`pcall(table.concat, {1, {}, 3})`, "false <string>:1: table.concat: invalid value (a table) at index 2"},
		{`string.rep("ab", 3), string.rep("x", 0), string.rep("x", -1)`, "ababab  "},
	} {
		L := lua.NewState(lua.Options{SkipOpenLibs: true})
		openSandbox(L)
		fn, err := L.LoadString("return " + tc.expr)
		if err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		L.Push(fn)
		if err := L.PCall(0, lua.MultRet, nil); err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var out []string
		for i := 1; i <= L.GetTop(); i++ {
			out = append(out, L.Get(i).String())
		}
		if got := strings.Join(out, " "); got != tc.want {
			t.Errorf("%s\n got %q\nwant %q", tc.expr, got, tc.want)
		}
		L.Close()
	}
}
