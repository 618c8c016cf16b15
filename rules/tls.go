package rules

import (
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/dissect/tlssm"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// TLSHandler runs the rules of one connection on the events of its TLS
// machine: it implements tlssm.Handler over a Flow, and makes each event's
// parameter an Object with the fields of the contract (tlssm.Events), so
// that an event costs the fields its rules read and nothing more.
//
//	f, err := tlssm.NewFactory(tlssm.Options{NewHandler: engine.NewTLSHandler})
//
// A parameter is valid during its event only: the Event it reads, and the
// handshake messages behind it, belong to the Session and to the proxy's
// buffer. Fields read during the event stay readable. A rule that keeps a
// parameter (in flow.data or a global) and reads a field it had not read
// before gets an error telling it to copy what it keeps — once the event
// is over, and from another connection's evaluation — except during a
// later event of the same kind on the same connection (the second
// ClientHello after a HelloRetryRequest), where it reads that event's
// value: a parameter carries no identity of its own, which would cost an
// allocation per event.
type TLSHandler struct {
	flow *Flow
	// ev is the event being evaluated, nil between events. It is read
	// from Lua only while this connection is evaluated (see current), so
	// under the Session's lock, like every write of it.
	ev    *tlssm.Event
	build func(*lua.LState) lua.LValue
}

// NewTLSHandler returns the tlssm.Handler of the connection f.
func NewTLSHandler(f *Flow) *TLSHandler {
	h := &TLSHandler{flow: f}
	// One method value per connection, not one closure per event.
	h.build = h.param
	return h
}

// NewTLSHandler has the signature of tlssm.Options.NewHandler: it pins a
// new Flow of the connection to the running rule set, with the Session as
// its FlowInfo (flow.sni, flow.state, ...).
func (e *Engine) NewTLSHandler(f *inspect.Flow, s *tlssm.Session) tlssm.Handler {
	var info FlowInfo
	if s != nil {
		info = s
	}
	h := NewTLSHandler(e.NewFlow(f, info))
	if h.flow.st != nil && len(h.flow.st.lsm.dissectors) > 0 {
		// The state machines written in Lua that apply to the connection
		// see its units too.
		if lh := newLuaHandler(h, f); lh != nil {
			return lh
		}
	}
	return h
}

// Flow returns the rules' view of the connection.
func (h *TLSHandler) Flow() *Flow { return h.flow }

// Hooked implements tlssm.Handler.
func (h *TLSHandler) Hooked(id tlssm.EventID) bool { return h.flow.Hooked(TLS(id)) }

// Event implements tlssm.Handler: the rules that hook ev run, in order,
// and the flow's decision so far is returned.
func (h *TLSHandler) Event(ev *tlssm.Event) inspect.Decision {
	if ev == nil || ev.ID >= tlssm.NumEvents {
		return h.flow.Decision()
	}
	var build func(*lua.LState) lua.LValue
	if ev.ID == tlssm.EvChangeCipherSpec || tlsObjects[ev.ID] != nil {
		build = h.build
	}
	h.ev = ev
	h.flow.SetTime(ev.Time)
	d := h.flow.Eval(TLS(ev.ID), build)
	h.ev = nil
	return d
}

// Close implements tlssm.Handler: the flow lets go of its rule set.
func (h *TLSHandler) Close() { h.flow.Close() }

// param makes the parameter of the event being evaluated.
func (h *TLSHandler) param(L *lua.LState) lua.LValue {
	if h.ev.ID == tlssm.EvChangeCipherSpec {
		// The contract's one bare parameter: the direction string.
		return tlsDirection(h.ev.Dir)
	}
	return tlsObjects[h.ev.ID].Value(L, h)
}

// current returns the event a field of a parameter of event id is read
// from, or raises a Lua error when that event is over. The connection
// being evaluated is checked first: a parameter kept in a global can be
// read while another connection is evaluated on the same state, whose
// goroutine must not touch this handler.
func (h *TLSHandler) current(L *lua.LState, id tlssm.EventID, field string) *tlssm.Event {
	spec := &tlssm.Events[id]
	if st := h.flow.st; st == nil || st.cur != h.flow {
		L.RaiseError("%s.%s: this %s belongs to another connection's %s event; copy the values you keep into flow.data",
			spec.Param, field, spec.Param, spec.Name)
	}
	if h.ev == nil || h.ev.ID != id {
		L.RaiseError("%s.%s: its %s event is over; copy the values you keep into flow.data while it runs",
			spec.Param, field, spec.Name)
	}
	return h.ev
}

// tlsField makes one field of an event's parameter from the event.
type tlsField func(L *lua.LState, ev *tlssm.Event) lua.LValue

// tlsObject describes the parameter of event id as an Object whose fields
// read the handler's current event.
func tlsObject(id tlssm.EventID, fields map[string]tlsField) *Object[TLSHandler] {
	m := make(map[string]func(*lua.LState, *TLSHandler) lua.LValue, len(fields))
	for name, fn := range fields {
		m[name] = func(L *lua.LState, h *TLSHandler) lua.LValue {
			return fn(L, h.current(L, id, name))
		}
	}
	return NewObject(tlssm.Events[id].Param, m)
}

// tlsObjects are the parameters of the events, by tlssm.EventID; nil for
// the events without one (new_connection, established) and for
// change_cipher_spec, whose parameter is a string.
var tlsObjects = func() (objs [tlssm.NumEvents]*Object[TLSHandler]) {
	for id, fields := range tlsFields {
		if fields != nil {
			objs[id] = tlsObject(tlssm.EventID(id), fields)
		}
	}
	return objs
}()

// tlsFields make the fields of the events' parameters from an event, by
// tlssm.EventID: the events' parameters (tlsObjects) and the results of
// the grammar elements of the Lua state machines (unitObjects) are made
// of them.
var tlsFields = [tlssm.NumEvents]map[string]tlsField{
	tlssm.EvClientHello: {
		"version": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return lua.LString(dissect.VersionName(ev.ClientHello.LegacyVersion))
		},
		"versions": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			vs := ev.ClientHello.SupportedVersions
			t := L.CreateTable(len(vs), 0)
			for _, v := range vs {
				t.Append(lua.LString(dissect.VersionName(v)))
			}
			return t
		},
		"sni": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.ClientHello.ServerName) },
		"alpn": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			protos := ev.ClientHello.ALPN
			t := L.CreateTable(len(protos), 0)
			for _, p := range protos {
				t.Append(lua.LString(p))
			}
			return t
		},
		"ciphers":    func(L *lua.LState, ev *tlssm.Event) lua.LValue { return tlsNumbers(L, ev.ClientHello.CipherSuites) },
		"extensions": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return tlsExtensions(L, ev.ClientHello.Extensions) },
		"groups":     func(L *lua.LState, ev *tlssm.Event) lua.LValue { return tlsNumbers(L, ev.ClientHello.SupportedGroups) },
		"sigalgs": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return tlsNumbers(L, ev.ClientHello.SignatureAlgorithms)
		},
		"heartbeat": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.ClientHello.Heartbeat) },
		"ech":       func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.ClientHello.ECH) },
		"sslv2":     func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.ClientHello.SSLv2) },
		"ja3":       func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.JA3) },
		"ja3_hash":  func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.JA3Hash) },
		"ja4":       func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.JA4) },
		"length":    func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.Message.Length) },
	},
	tlssm.EvServerHello: {
		"version": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return lua.LString(dissect.VersionName(ev.ServerHello.Version()))
		},
		"cipher":     func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.ServerHello.CipherSuite) },
		"extensions": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return tlsExtensions(L, ev.ServerHello.Extensions) },
		"retry":      func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.ServerHello.HelloRetryRequest) },
		"ja3s":       func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.JA3S) },
		"ja3s_hash":  func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.JA3SHash) },
	},
	tlssm.EvCertificate: {
		// The chain is parsed with crypto/x509 here, when a rule first
		// reads it, and not at all otherwise.
		"chain": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return tlsChain(L, ev.Chain()) },
	},
	tlssm.EvHandshake: {
		"type":      func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LString(ev.Message.Type.String()) },
		"length":    func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.Message.Length) },
		"direction": tlsEventDirection,
	},
	tlssm.EvAlert: {
		"level": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			if ev.Alert.Encrypted {
				return nil
			}
			return lua.LString(ev.Alert.LevelName())
		},
		"description": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			if ev.Alert.Encrypted {
				return nil
			}
			return lua.LString(ev.Alert.DescriptionName())
		},
		"encrypted": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.Alert.Encrypted) },
		"direction": tlsEventDirection,
	},
	tlssm.EvHeartbeat: {
		"direction":     tlsEventDirection,
		"record_length": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.Heartbeat.RecordLength) },
		"encrypted":     func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.Heartbeat.Encrypted) },
		"type": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return optString(ev.Heartbeat.TypeName()) // "" when encrypted
		},
		"payload_length": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			if ev.Heartbeat.Encrypted {
				return nil
			}
			return lua.LNumber(ev.Heartbeat.PayloadLength)
		},
		"overflow": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.Heartbeat.Overflow) },
		"leak":     func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.Heartbeat.Leak) },
	},
	tlssm.EvRecord: {
		"type": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LString(ev.Record.TypeName()) },
		"version": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return lua.LString(dissect.VersionName(ev.Record.Version))
		},
		"length":    func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.Record.Length) },
		"direction": tlsEventDirection,
		// Beyond the contract: whether the record came after its
		// direction switched to encryption.
		"encrypted": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LBool(ev.Record.Encrypted) },
	},
	tlssm.EvAnomaly: {
		"name":      func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LString(ev.Anomaly.Name) },
		"direction": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return tlsDirection(ev.Anomaly.Direction) },
		"detail":    func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.Anomaly.Detail) },
	},
	tlssm.EvParseError: {
		"message": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			if ev.Err == nil {
				return lua.LString("parse error")
			}
			return lua.LString(strings.TrimPrefix(ev.Err.Error(), "dissect: "))
		},
		"direction": tlsEventDirection,
	},
	tlssm.EvEndConnection: {
		"bytes_up":   func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.Summary.BytesUp) },
		"bytes_down": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return lua.LNumber(ev.Summary.BytesDown) },
		"duration": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return lua.LNumber(ev.Summary.Duration.Seconds())
		},
		"verdict": func(L *lua.LState, ev *tlssm.Event) lua.LValue {
			return lua.LString(ev.Summary.Decision.Verdict.String())
		},
		// Beyond the contract: why and by which rule, as in the
		// connection line; nil for a connection that ended by itself.
		"reason": func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.Summary.Decision.Reason) },
		"rule":   func(L *lua.LState, ev *tlssm.Event) lua.LValue { return optString(ev.Summary.Decision.Rule) },
	},
}

// The direction strings, made once: a field read costs no allocation.
var (
	tlsUp   lua.LValue = lua.LString(dissect.Up.String())
	tlsDown lua.LValue = lua.LString(dissect.Down.String())
)

func tlsDirection(d dissect.Direction) lua.LValue {
	if d == dissect.Down {
		return tlsDown
	}
	return tlsUp
}

func tlsEventDirection(_ *lua.LState, ev *tlssm.Event) lua.LValue { return tlsDirection(ev.Dir) }

func tlsNumbers(L *lua.LState, ns []uint16) *lua.LTable {
	t := L.CreateTable(len(ns), 0)
	for _, n := range ns {
		t.Append(lua.LNumber(n))
	}
	return t
}

// tlsExtensions makes the list of {type=, data=}, in wire order; data is
// a copy of the raw bytes.
func tlsExtensions(L *lua.LState, exts []dissect.Extension) *lua.LTable {
	t := L.CreateTable(len(exts), 0)
	for _, e := range exts {
		et := L.CreateTable(0, 2)
		et.RawSetString("type", lua.LNumber(e.Type))
		et.RawSetString("data", lua.LString(e.Data))
		t.Append(et)
	}
	return t
}

// tlsChain makes the list of certificates, leaf first. A certificate
// crypto/x509 rejected has only sha256 and, beyond the contract, error.
func tlsChain(L *lua.LState, chain []dissect.CertInfo) *lua.LTable {
	t := L.CreateTable(len(chain), 0)
	for i := range chain {
		c := &chain[i]
		ct := L.CreateTable(0, 8)
		ct.RawSetString("sha256", lua.LString(c.SHA256Hex()))
		if c.Err != nil {
			ct.RawSetString("error", lua.LString(c.Err.Error()))
			t.Append(ct)
			continue
		}
		ct.RawSetString("subject", lua.LString(c.Subject))
		ct.RawSetString("issuer", lua.LString(c.Issuer))
		ct.RawSetString("serial", lua.LString(c.Serial))
		sans := c.SANs()
		st := L.CreateTable(len(sans), 0)
		for _, s := range sans {
			st.Append(lua.LString(s))
		}
		ct.RawSetString("sans", st)
		ct.RawSetString("not_before", lua.LString(tlsTime(c.NotBefore)))
		ct.RawSetString("not_after", lua.LString(tlsTime(c.NotAfter)))
		t.Append(ct)
	}
	return t
}

// tlsTime renders a validity bound as RFC 3339 in UTC, which sorts as
// text: a rule compares not_after with a date written the same way.
func tlsTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
