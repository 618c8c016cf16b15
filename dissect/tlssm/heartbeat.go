package tlssm

import (
	"fmt"

	"github.com/hakaproxy/haka-proxy/dissect"
)

// The four layers of Heartbleed detection (see the package doc), run on
// every heartbeat record before it is forwarded.

// maxOutstandingHeartbeats bounds the requests of one direction waiting
// for their response. RFC 6520 5 allows one in flight; a few more cover a
// peer that does not wait. Past them the oldest is forgotten, and a leak
// in its response could hide behind a longer request: the request that
// overflows is named (too_many_heartbeat_requests) before it is
// forwarded, and the stock rules end the connection there.
const maxOutstandingHeartbeats = 4

// hbRequest is a heartbeat request waiting for its response.
type hbRequest struct {
	recordLength int
	encrypted    bool
}

// pushRequest queues r and reports whether the oldest request had to be
// forgotten for it.
func (h *half) pushRequest(r hbRequest) (forgot bool) {
	if h.nhb == len(h.hb) {
		copy(h.hb[:], h.hb[1:])
		h.nhb--
		forgot = true
	}
	h.hb[h.nhb] = r
	h.nhb++
	return forgot
}

func (h *half) popRequest() (hbRequest, bool) {
	if h.nhb == 0 {
		return hbRequest{}, false
	}
	r := h.hb[0]
	copy(h.hb[:], h.hb[1:h.nhb])
	h.nhb--
	return r, true
}

func (s *Session) onHeartbeat(in *instance, e smEvent) {
	d := dissect.Direction(e.Dir)
	u := e.Unit.Unit
	h, other := &s.dirs[d], &s.dirs[d^1]
	hb := Heartbeat{RecordLength: u.Header.Length, Encrypted: u.Encrypted}
	request, overflow := false, false
	if !u.Encrypted {
		// Layer 1: the record layer decoded it and flagged an overflow.
		hb.Type, hb.PayloadLength, hb.Overflow = u.Heartbeat.Type, u.Heartbeat.PayloadLength, u.Heartbeat.Overflow
		switch hb.Type {
		case dissect.HeartbeatRequest:
			request = true
			overflow = h.pushRequest(hbRequest{recordLength: hb.RecordLength})
		case dissect.HeartbeatResponse:
			// A response echoes the request's payload: one that declares
			// more than the request could hold carries memory.
			if req, ok := other.popRequest(); ok && !req.encrypted {
				hb.Leak = hb.PayloadLength > req.recordLength-minHeartbeat
			}
		}
	} else if req, ok := other.popRequest(); ok {
		// Layer 3: the answer to the other side's request. Padding aside,
		// it is as long as the request: longer, it holds bytes the request
		// never had.
		if req.encrypted {
			hb.Leak = hb.RecordLength > req.recordLength
		}
		h.leaking = hb.Leak
	} else if h.leaking {
		// The further records of a response too large for one.
		hb.Leak = true
	} else {
		request = true
		overflow = h.pushRequest(hbRequest{recordLength: hb.RecordLength, encrypted: true})
	}
	if ev := s.event(EvHeartbeat, d, u.Start); ev != nil {
		ev.Heartbeat = hb
		s.raise(ev)
	}
	if s.ux != nil {
		s.ux.hb = hb
	}

	what := "heartbeat"
	if !hb.Encrypted {
		what += " " + hb.TypeName()
	}
	anomaly := func(name, detail string) {
		s.anomaly(dissect.Anomaly{Name: name, Direction: d, Detail: detail}, u.Start)
	}
	// Layer 2.
	if !s.established {
		anomaly(AnomalyHeartbeatDuringHandshake, fmt.Sprintf("%s from the %s in state %s", what, peer(d), in.State()))
	}
	if detail := s.notNegotiated(d, request); detail != "" {
		anomaly(AnomalyHeartbeatNotNegotiated, detail)
	}
	if overflow {
		anomaly(AnomalyTooManyHeartbeatRequests, fmt.Sprintf("%s request from the %s with %d before it unanswered: RFC 6520 allows one in flight, and past %d the oldest can no longer be matched with its response",
			what, peer(d), maxOutstandingHeartbeats, maxOutstandingHeartbeats))
	}
	if !request || !hb.Encrypted {
		return
	}
	// Layer 4.
	if least, ok := minHeartbeatRecord(s.prot); ok && hb.RecordLength < least {
		anomaly(AnomalyHeartbeatRequestTooShort, fmt.Sprintf("encrypted heartbeat of %d bytes from the %s, the smallest %s can carry under cipher suite 0x%04x is %d",
			hb.RecordLength, peer(d), dissect.VersionName(s.prot.version), s.prot.suite, least))
	}
	if !h.appData {
		anomaly(AnomalyHeartbeatBeforeApplicationData, fmt.Sprintf("encrypted heartbeat of %d bytes from the %s before any application data", hb.RecordLength, peer(d)))
	}
}

// notNegotiated says what is wrong with a heartbeat from d, "" when
// nothing: both hellos must carry the extension (RFC 6520 2), a request
// needs the receiver's peer_allowed_to_send, and TLS 1.3 has no heartbeat
// record at all.
func (s *Session) notNegotiated(d dissect.Direction, request bool) string {
	switch {
	case s.tls13:
		return fmt.Sprintf("heartbeat record from the %s in TLS 1.3", peer(d))
	case !s.serverHello:
		return fmt.Sprintf("heartbeat from the %s before the ServerHello", peer(d))
	case s.hbClient == 0 || s.hbServer == 0:
		return fmt.Sprintf("heartbeat from the %s: the extension was not in both hellos", peer(d))
	}
	recv := s.hbServer
	if d == dissect.Down {
		recv = s.hbClient
	}
	if request && recv == dissect.HeartbeatPeerNotAllowedToSend {
		return fmt.Sprintf("heartbeat request from the %s, whose peer said peer_not_allowed_to_send", peer(d))
	}
	return ""
}
