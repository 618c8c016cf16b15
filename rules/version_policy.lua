-- version_policy.lua: refuses connections that negotiate a broken protocol
-- version and logs those that negotiate a deprecated one.
--
-- SSL 2.0 and SSL 3.0 are refused (RFC 6176, RFC 7568): an alert and the
-- connection ends. TLS 1.0 and 1.1 (RFC 8996) are logged with flow:log.
--
-- The version judged is the negotiated one, from the ServerHello, which is
-- held until this rule has seen it: a client that offers SSL 3.0 among
-- others but gets TLS 1.2 is fine, and an SSLv2-format ClientHello that
-- offers TLS 1.0 or later is not SSLv2 (old clients sent those for
-- compatibility). The one case judged at the ClientHello is an SSLv2
-- hello that offers nothing newer than SSL 2.0, which no server may
-- answer with anything else.
--
-- Tuning (the config table below): `refuse` and `log` map version names
-- ("SSL2.0", "SSL3.0", "TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3") to true;
-- move a version between them, or remove it to let it through silently.

local config = {
  refuse = { ["SSL2.0"] = true, ["SSL3.0"] = true },
  log = { ["TLS1.0"] = true, ["TLS1.1"] = true },
  action = "drop", -- or "reset"
  severity = "medium",
}

local function refuse(flow, version, how)
  local description = "refused protocol version " .. version .. " (" .. how .. ")"
  haka.alert{
    description = description,
    severity = config.severity,
    confidence = "high",
    method = { description = "version policy", ref = "RFC 6176, RFC 7568" },
  }
  if config.action == "reset" then
    flow:reset(description)
  else
    flow:drop(description)
  end
end

haka.rule {
  on = tls.events.client_hello,
  eval = function(flow, hello)
    if hello.sslv2 and hello.version == "SSL2.0" and config.refuse["SSL2.0"] then
      refuse(flow, "SSL2.0", "SSLv2-only ClientHello")
    end
  end,
}

haka.rule {
  on = tls.events.server_hello,
  eval = function(flow, hello)
    local version = hello.version
    if version == nil or hello.retry then
      return
    end
    if config.refuse[version] then
      refuse(flow, version, "negotiated")
    elseif config.log[version] then
      flow:log("deprecated protocol version " .. version .. " negotiated")
    end
  end,
}
