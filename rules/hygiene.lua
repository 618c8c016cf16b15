-- hygiene.lua: ends connections whose TLS is malformed or breaks the
-- protocol in ways a conforming peer never does, with an alert, and logs
-- the oddities real peers do produce.
--
--   parse_error   input the grammar could not parse (the state machine
--                 fails such a connection anyway; this rule says why in
--                 an alert). A connection that never spoke TLS (SSH or
--                 HTTP on the port: the parse error's message starts
--                 with "not TLS") is named as such, not as malformed TLS.
--   anomaly       a named protocol anomaly: those listed in `drop` raise
--                 an alert and end the connection, those in `log` are
--                 logged with flow:log, any other is ignored.
--
-- Tuning (the config table below): move an anomaly name between `drop`
-- and `log`, or remove it. "handshake_message_too_large" is only logged:
-- real certificate chains can be large. "invalid_certificate" is only
-- logged: crypto/x509 refuses some certificates that clients accept.
-- Heartbeat anomalies that are Heartbleed are handled by heartbleed.lua.

local config = {
  action = "drop", -- or "reset"
  severity = "medium",
  drop = {
    -- record layer
    "invalid_record_type",
    "invalid_record_version",
    "invalid_record_length",
    "invalid_sslv2_header",
    "zero_length_handshake_fragment",
    "handshake_length_mismatch",
    "record_spans_key_change",
    "invalid_alert_length",
    "invalid_alert_level",
    "too_many_alerts_in_record",
    "invalid_change_cipher_spec",
    "invalid_heartbeat_type",
    "invalid_heartbeat_length",
    "heartbeat_padding_too_short",
    -- handshake messages
    "unexpected_message",
    "duplicate_extension",
    "several_sni_names",
    "invalid_sni_type",
    "invalid_sni_length",
    "psk_not_last",
  },
  log = {
    "handshake_message_too_large",
    "invalid_certificate",
    "truncated_record",
  },
}

local drop, log = {}, {}
for _, name in ipairs(config.drop) do drop[name] = true end
for _, name in ipairs(config.log) do log[name] = true end

local function stop(flow, reason)
  if config.action == "reset" then
    flow:reset(reason)
  else
    flow:drop(reason)
  end
end

haka.rule {
  on = tls.events.parse_error,
  eval = function(flow, err)
    local message = tostring(err.message)
    local description
    if string.sub(message, 1, 9) == "not TLS: " then
      description = "not TLS (" .. tostring(err.direction) .. "): " .. string.sub(message, 10)
    else
      description = "malformed TLS (" .. tostring(err.direction) .. "): " .. message
    end
    haka.alert{ description = description, severity = config.severity, confidence = "high" }
    stop(flow, description)
  end,
}

haka.rule {
  on = tls.events.anomaly,
  eval = function(flow, a)
    local what = a.name .. " (" .. tostring(a.direction) .. ")"
    if a.detail and a.detail ~= "" then
      what = what .. ": " .. a.detail
    end
    if drop[a.name] then
      haka.alert{
        description = "TLS protocol anomaly: " .. what,
        severity = config.severity,
        confidence = "high",
        method = { description = "anomaly " .. a.name },
      }
      stop(flow, "anomaly " .. a.name)
    elseif log[a.name] then
      flow:log("TLS protocol anomaly: " .. what)
    end
  end,
}
