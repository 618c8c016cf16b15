package rules

import (
	"fmt"
	"slices"

	lua "github.com/yuin/gopher-lua"
)

// Object shows a Go type to rules as a read-only object whose fields are
// made when a rule first reads them. It is the cheap way to build an event
// parameter: a ClientHello made into a Lua table costs some 240
// allocations (gopher-lua gives every table with string keys two maps and
// a slice), most of them for fields no rule reads; as an Object it costs
// three, plus the fields read (see BenchmarkClientHello).
//
// Rules use an object like a table: hello.sni, #hello.ciphers,
// pairs(hello) (which makes every field). Reading a field the object does
// not have is an error naming it, so a typo in a rule (hb.overfow) fails
// where it is written instead of reading as nil forever; a field the
// object has but that has no value (payload_length of an encrypted
// heartbeat) reads as nil. Assigning to a field is an error.
//
// An Object is immutable once made and may be shared by all engines and
// goroutines; make one per parameter type at package level.
type Object[T any] struct {
	name   string
	regKey string
	fields map[string]func(*lua.LState, *T) lua.LValue
	names  []string
}

// NewObject describes an object type: name is what rules and error
// messages call it ("hello"), fields make each field's value from the Go
// value.
func NewObject[T any](name string, fields map[string]func(L *lua.LState, v *T) lua.LValue) *Object[T] {
	o := &Object[T]{name: name, fields: fields}
	// Two object types may share a name (the hello of client_hello and of
	// server_hello): the registry key is the object type's own.
	o.regKey = fmt.Sprintf("haka-proxy.object.%s.%p", name, o)
	for k := range fields {
		o.names = append(o.names, k)
	}
	slices.Sort(o.names)
	return o
}

// Value returns v as an object in L. Call it from an Eval build function;
// v must not change until Eval returns (rules read it lazily).
func (o *Object[T]) Value(L *lua.LState, v *T) lua.LValue {
	ud := L.NewUserData()
	ov := &objectValue[T]{o: o, v: v}
	ov.made = ov.inline[:0]
	ud.Value = ov
	ud.Metatable = o.meta(L)
	return ud
}

// objectValue is one object: the Go value and the fields made so far.
// Rules read a few fields of a parameter, so the first few are kept
// inline, sparing an allocation per field.
type objectValue[T any] struct {
	o      *Object[T]
	v      *T
	inline [4]objectField
	made   []objectField
	all    *lua.LTable // every field, once pairs asked
}

type objectField struct {
	name  string
	value lua.LValue
}

// materializer is what pairs needs of an object.
type materializer interface {
	table(L *lua.LState) *lua.LTable
}

func (ov *objectValue[T]) get(L *lua.LState, name string) (lua.LValue, bool) {
	for _, f := range ov.made {
		if f.name == name {
			return f.value, true
		}
	}
	fn, ok := ov.o.fields[name]
	if !ok {
		return nil, false
	}
	v := fn(L, ov.v)
	if v == nil {
		v = lua.LNil
	}
	ov.made = append(ov.made, objectField{name, v})
	return v, true
}

func (ov *objectValue[T]) table(L *lua.LState) *lua.LTable {
	if ov.all == nil {
		t := L.CreateTable(0, len(ov.o.names))
		for _, name := range ov.o.names {
			v, _ := ov.get(L, name)
			t.RawSetString(name, v)
		}
		ov.all = t
	}
	return ov.all
}

// meta returns the object type's metatable in L, made on first use and
// kept in L's registry.
func (o *Object[T]) meta(L *lua.LState) *lua.LTable {
	if mt, ok := L.G.Registry.RawGetString(o.regKey).(*lua.LTable); ok {
		return mt
	}
	mt := L.NewTable()
	mt.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		ov := L.CheckUserData(1).Value.(*objectValue[T])
		name, _ := L.Get(2).(lua.LString)
		v, ok := ov.get(L, string(name))
		if !ok {
			L.RaiseError("%s.%s: no such field%s", o.name, L.Get(2).String(), suggestFrom(string(name), o.names))
		}
		L.Push(v)
		return 1
	}))
	mt.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("%s.%s: %s is read-only; keep your own state in flow.data", o.name, L.Get(2).String(), o.name)
		return 0
	}))
	mt.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString(o.name))
		return 1
	}))
	mt.RawSetString("__metatable", lua.LString(o.name))
	L.G.Registry.RawSetString(o.regKey, mt)
	return mt
}
