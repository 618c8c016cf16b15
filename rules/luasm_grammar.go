package rules

import (
	"fmt"
	"strings"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/sm"
)

// The grammar elements of tls.grammar: Go predicates over the units of
// the record layer (tlssm.Unit: what dissect.Conn framed and the TLS
// machine accepted and parsed), whose results are the Objects the rules
// see for the same values. Nothing of the grammar is written in Lua.
//
// An element takes a unit when the unit is what it names:
//
//   - a message element (client_hello, server_hello, certificate,
//     server_key_exchange, ...): a cleartext handshake message of that
//     type, one unit per message whatever the records carrying it (an
//     SSLv2-format CLIENT-HELLO is a client_hello);
//   - handshake: any cleartext handshake message;
//   - finished: an encrypted handshake record (after a ChangeCipherSpec,
//     the Finished; later, post-handshake messages);
//   - change_cipher_spec, alert, heartbeat, application_data (its header),
//     sslv2: a record of that kind, cleartext or encrypted;
//   - encrypted: a record sent after its direction switched to encryption,
//     alerts and heartbeats excepted;
//   - record: any unit.
//
// Elements combine with +: `tls.grammar.certificate + tls.grammar.handshake`
// takes what either takes, the first that takes the unit giving the
// result.

// grammarPart is an element of tls.grammar.
type grammarPart struct {
	name  string
	match func(u *tlssm.Unit) bool
	// result makes the up or down parameter.
	result func(c *luaConn, u *tlssm.Unit) lua.LValue
	// message: it takes handshake messages only.
	message bool
}

// grammarElement is the value of tls.grammar.NAME, or a sum of them.
type grammarElement struct {
	name  string
	parts []*grammarPart
	sm    *luaSMElement
}

func newGrammarElement(name string, parts []*grammarPart) *grammarElement {
	el := &grammarElement{name: name, parts: parts}
	el.sm = &luaSMElement{Name: name, Parse: el.parse}
	return el
}

// smElement returns el as a grammar element of package sm, nil for none.
func (el *grammarElement) smElement() *luaSMElement {
	if el == nil {
		return nil
	}
	return el.sm
}

func (el *grammarElement) matches(u *tlssm.Unit) bool {
	for _, p := range el.parts {
		if p.match(u) {
			return true
		}
	}
	return false
}

// parse is the element's sm.Element.Parse: the first part that takes the
// unit makes the result; a unit none takes is a parse error.
func (el *grammarElement) parse(c *luaConn, _ sm.Direction, u *tlssm.Unit) (luaParam, error) {
	for _, p := range el.parts {
		if p.match(u) {
			return luaParam{part: p}, nil
		}
	}
	return luaParam{}, &UnitError{Element: el.name, Got: describeUnit(u), Dir: u.Dir}
}

// guard is `when = element`: the transition runs on an up or down whose
// unit the element takes.
func (el *grammarElement) guard(_ *luaInstance, ev luaEvent) bool {
	return (ev.ID == sm.EvUp || ev.ID == sm.EvDown) && ev.Unit != nil && el.matches(ev.Unit)
}

// UnitError is the parse error of a grammar element given a unit it does
// not take.
type UnitError struct {
	Element string
	Got     string
	Dir     dissect.Direction
}

func (e *UnitError) Error() string {
	return fmt.Sprintf("%s: got %s from the %s", e.Element, e.Got, peerName(e.Dir))
}

func peerName(d dissect.Direction) string {
	if d == dissect.Down {
		return "server"
	}
	return "client"
}

// describeUnit names a unit in errors: "server_hello_done", "heartbeat
// record", "encrypted handshake record".
func describeUnit(u *tlssm.Unit) string {
	switch u.Kind {
	case tlssm.KindMessage, tlssm.KindSSLv2Hello:
		return u.Type.String()
	case tlssm.KindOpaque:
		return "encrypted " + u.Record.Type.String() + " record"
	case tlssm.KindEncryptedAlert:
		return "encrypted alert record"
	case tlssm.KindAppData:
		return "application_data record"
	}
	return u.Kind.String() + " record"
}

// The parts, by name. Message elements exist for every handshake message
// that can come in cleartext.
var grammarParts = func() map[string]*grammarPart {
	parts := make(map[string]*grammarPart)
	rec := func(c *luaConn, u *tlssm.Unit) lua.LValue { return unitObjects[tlssm.EvRecord].Value(c.st.L, c.h) }
	msg := func(c *luaConn, u *tlssm.Unit) lua.LValue { return unitObjects[tlssm.EvHandshake].Value(c.st.L, c.h) }
	add := func(name string, match func(u *tlssm.Unit) bool, result func(c *luaConn, u *tlssm.Unit) lua.LValue) {
		parts[name] = &grammarPart{name: name, match: match, result: result}
	}

	isMsg := func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindMessage || u.Kind == tlssm.KindSSLv2Hello }
	for _, t := range []dissect.HandshakeType{
		dissect.MsgHelloRequest, dissect.MsgNewSessionTicket, dissect.MsgHelloRetryRequest,
		dissect.MsgServerKeyExchange, dissect.MsgCertificateRequest, dissect.MsgServerHelloDone,
		dissect.MsgCertificateVerify, dissect.MsgClientKeyExchange, dissect.MsgCertificateURL,
		dissect.MsgCertificateStatus, dissect.MsgSupplementalData,
	} {
		add(t.String(), func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindMessage && u.Type == t }, msg)
		parts[t.String()].message = true
	}
	add("client_hello", func(u *tlssm.Unit) bool { return isMsg(u) && u.Type == dissect.MsgClientHello },
		func(c *luaConn, u *tlssm.Unit) lua.LValue {
			if u.ClientHello == nil {
				return msg(c, u)
			}
			return unitObjects[tlssm.EvClientHello].Value(c.st.L, c.h)
		})
	add("server_hello", func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindMessage && u.Type == dissect.MsgServerHello },
		func(c *luaConn, u *tlssm.Unit) lua.LValue {
			if u.ServerHello == nil {
				return msg(c, u)
			}
			return unitObjects[tlssm.EvServerHello].Value(c.st.L, c.h)
		})
	add("certificate", func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindMessage && u.Type == dissect.MsgCertificate },
		func(c *luaConn, u *tlssm.Unit) lua.LValue { return unitObjects[tlssm.EvCertificate].Value(c.st.L, c.h) })
	add("handshake", isMsg, msg)
	add("finished", func(u *tlssm.Unit) bool {
		return u.Kind == tlssm.KindOpaque && u.Record.Type == dissect.TypeHandshake
	}, rec)
	add("change_cipher_spec", func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindCCS },
		func(c *luaConn, u *tlssm.Unit) lua.LValue { return tlsDirection(u.Dir) })
	add("alert", isAlert, func(c *luaConn, u *tlssm.Unit) lua.LValue {
		return unitObjects[tlssm.EvAlert].Value(c.st.L, c.h)
	})
	add("heartbeat", isHeartbeat, func(c *luaConn, u *tlssm.Unit) lua.LValue {
		return unitObjects[tlssm.EvHeartbeat].Value(c.st.L, c.h)
	})
	add("application_data", func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindAppData }, rec)
	add("sslv2", func(u *tlssm.Unit) bool { return u.Kind == tlssm.KindSSLv2 || u.Kind == tlssm.KindSSLv2Hello }, rec)
	add("encrypted", func(u *tlssm.Unit) bool {
		return u.Raw != nil && u.Raw.Encrypted && !isAlert(u) && !isHeartbeat(u)
	}, rec)
	add("record", func(*tlssm.Unit) bool { return true }, rec)
	for _, name := range []string{"client_hello", "server_hello", "certificate", "handshake"} {
		parts[name].message = true
	}
	return parts
}()

func isAlert(u *tlssm.Unit) bool {
	return u.Kind == tlssm.KindAlert || u.Kind == tlssm.KindEncryptedAlert
}

func isHeartbeat(u *tlssm.Unit) bool { return u.Kind == tlssm.KindHeartbeat }

// grammarElements are the elements of tls.grammar, one per part; shared
// by every state (they are immutable).
var grammarElements = func() map[string]*grammarElement {
	els := make(map[string]*grammarElement, len(grammarParts))
	for name, p := range grammarParts {
		els[name] = newGrammarElement("tls.grammar."+name, []*grammarPart{p})
	}
	return els
}()

// grammarTable makes tls.grammar in st.
func (st *state) grammarTable() *lua.LTable {
	L := st.L
	meta := L.NewTable()
	meta.RawSetString("__add", L.NewFunction(func(L *lua.LState) int {
		a, b := checkElement(L, 1), checkElement(L, 2)
		parts := append([]*grammarPart(nil), a.parts...)
		for _, p := range b.parts {
			for _, q := range a.parts {
				if q != p && subsumes(q, p) {
					L.RaiseError("tls.grammar.%s after tls.grammar.%s never takes a unit: the first element that takes a unit gives the result; put tls.grammar.%s first", p.name, q.name, p.name)
				}
			}
			dup := false
			for _, q := range parts {
				dup = dup || q == p
			}
			if !dup {
				parts = append(parts, p)
			}
		}
		names := make([]string, len(parts))
		for i, p := range parts {
			names[i] = "tls.grammar." + p.name
		}
		ud := L.NewUserData()
		ud.Value = newGrammarElement(strings.Join(names, " + "), parts)
		ud.Metatable = st.lsm.elementMeta
		L.Push(ud)
		return 1
	}))
	meta.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString(checkElement(L, 1).name))
		return 1
	}))
	meta.RawSetString("__index", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("grammar element %s has no field %s", checkElement(L, 1).name, L.ToString(2))
		return 0
	}))
	meta.RawSetString("__metatable", lua.LString("grammar element"))
	st.lsm.elementMeta = meta
	t := L.CreateTable(0, len(grammarElements))
	for name, el := range grammarElements {
		ud := L.NewUserData()
		ud.Value = el
		ud.Metatable = meta
		t.RawSetString(name, ud)
	}
	st.strict(t, "tls.grammar")
	return t
}

func checkElement(L *lua.LState, i int) *grammarElement {
	if ud, ok := L.Get(i).(*lua.LUserData); ok {
		if el, ok := ud.Value.(*grammarElement); ok {
			return el
		}
	}
	L.RaiseError("+ combines grammar elements (tls.grammar.NAME), not %s", describeValue(L, L.Get(i)))
	return nil
}

// unitObjects are the results of the elements: the objects of the events
// with the same fields (tlsFields), read from the unit being judged.
var unitObjects = func() (objs [tlssm.NumEvents]*Object[luaHandler]) {
	for _, id := range []tlssm.EventID{tlssm.EvClientHello, tlssm.EvServerHello, tlssm.EvCertificate,
		tlssm.EvHandshake, tlssm.EvAlert, tlssm.EvHeartbeat, tlssm.EvRecord} {
		fields := make(map[string]func(*lua.LState, *luaHandler) lua.LValue, len(tlsFields[id]))
		for name, fn := range tlsFields[id] {
			fields[name] = func(L *lua.LState, h *luaHandler) lua.LValue {
				return fn(L, h.current(L, id, name))
			}
		}
		objs[id] = NewObject(tlssm.Events[id].Param, fields)
	}
	return objs
}()

// unitCarries returns the events whose fields u has, as bits by EventID.
func unitCarries(u *tlssm.Unit) uint32 {
	has := uint32(1) << tlssm.EvRecord
	switch u.Kind {
	case tlssm.KindMessage, tlssm.KindSSLv2Hello:
		has |= 1 << tlssm.EvHandshake
		if u.ClientHello != nil {
			has |= 1 << tlssm.EvClientHello
		}
		if u.ServerHello != nil {
			has |= 1 << tlssm.EvServerHello
		}
		if u.Type == dissect.MsgCertificate {
			has |= 1 << tlssm.EvCertificate
		}
	case tlssm.KindAlert, tlssm.KindEncryptedAlert:
		has |= 1 << tlssm.EvAlert
	case tlssm.KindHeartbeat:
		has |= 1 << tlssm.EvHeartbeat
	}
	return has
}

// subsumes reports whether the catch-all q takes every unit p takes, so
// that p after q in a sum would never give its result.
func subsumes(q, p *grammarPart) bool {
	switch q.name {
	case "record":
		return true
	case "handshake":
		return p.message
	}
	return false
}
