-- heartbleed.lua: stops Heartbleed (CVE-2014-0160) in every form the TLS
-- state machine can see, before the offending heartbeat record is
-- forwarded: the attacker's request never reaches the server, and a
-- leaking response never reaches the attacker.
--
--   1. a cleartext heartbeat request whose payload_length + 3 + 16 is
--      larger than its record (hb.overflow);
--   2. a heartbeat during the handshake (anomaly
--      "heartbeat_during_handshake"): no peer needs one there, and it is
--      how most Heartbleed scanners probe;
--   3. an encrypted heartbeat response longer than the request outstanding
--      in the other direction (hb.leak): the server is leaking memory;
--   4. an encrypted heartbeat request shorter than the negotiated cipher
--      allows, or one before any application data (anomalies
--      "heartbeat_request_too_short", "heartbeat_before_application_data");
--   5. a flood of heartbeat requests sent without waiting for the
--      answers (anomaly "too_many_heartbeat_requests"): past four
--      unanswered, a leaking response could pass for the answer to a
--      longer request.
--
-- Each raises a high-severity alert and ends the connection.
--
-- Tuning (the config table below):
--   action          "drop" closes both sides, "reset" sends RSTs.
--   anomalies       the anomaly names treated as Heartbleed, with the
--                   alert's description; remove one to let it through.
--   all_heartbeats  true refuses every heartbeat record, even benign ones.
--                   Heartbeats have no use over TCP that a proxy must keep
--                   (RFC 6520 targets DTLS path MTU discovery), so this is
--                   safe where no application relies on them.

local config = {
  action = "drop",
  anomalies = {
    heartbeat_during_handshake = "heartbleed: heartbeat during the handshake",
    heartbeat_before_application_data = "heartbleed: encrypted heartbeat before any application data",
    heartbeat_request_too_short = "heartbleed: encrypted heartbeat request shorter than the cipher allows",
    heartbeat_overflow = "heartbleed: heartbeat payload_length larger than its record",
    too_many_heartbeat_requests = "heartbleed: more heartbeat requests unanswered than can be matched with their responses",
  },
  all_heartbeats = false,
}

local cve = "CVE-2014-0160"

local function stop(flow, description, method)
  haka.alert{
    description = description,
    severity = "high",
    confidence = "high",
    method = { description = method, ref = "RFC 6520" },
    ref = { cve },
  }
  if config.action == "reset" then
    flow:reset(description)
  else
    flow:drop(description)
  end
end

haka.rule {
  on = tls.events.heartbeat,
  eval = function(flow, hb)
    if hb.overflow then
      stop(flow, "heartbleed: heartbeat request payload_length larger than its record",
        "payload_length + 3 + 16 > record length (" .. tostring(hb.payload_length) ..
        " declared in a record of " .. tostring(hb.record_length) .. ")")
    elseif hb.leak then
      stop(flow, "heartbleed: encrypted heartbeat response longer than the request",
        "response record of " .. tostring(hb.record_length) .. " bytes")
    elseif config.all_heartbeats then
      stop(flow, "heartbeat refused by policy", "all_heartbeats")
    end
  end,
}

haka.rule {
  on = tls.events.anomaly,
  eval = function(flow, a)
    local description = config.anomalies[a.name]
    if description then
      stop(flow, description, "anomaly " .. a.name .. (a.detail and (": " .. a.detail) or ""))
    end
  end,
}
