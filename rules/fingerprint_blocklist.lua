-- fingerprint_blocklist.lua: refuses clients by the fingerprint of their
-- ClientHello, before it is forwarded: JA3 (the MD5 of the JA3 string,
-- hex) and JA4 (e.g. "t13d1516h2_8daaf6152771_02713d6af862").
--
-- Each list maps a fingerprint to a description that goes into the alert:
--
--   ja3 = { ["e7d705a3286e19ea42f587b344ee6865"] = "some scanner" },
--   ja4 = { ["t13d1516h2_8daaf6152771_02713d6af862"] = "some bot" },
--
-- A match raises an alert and ends the connection. Both lists are empty by
-- default: the rule has no effect until you fill them. Fingerprints
-- identify client software, not intent: a list that names a common
-- library blocks every client built on it.

local config = {
  ja3 = {},
  ja4 = {},
  action = "drop", -- or "reset"
  severity = "medium",
}

local ja3, ja4 = {}, {}
for k, v in pairs(config.ja3) do ja3[string.lower(k)] = v end
for k, v in pairs(config.ja4) do ja4[string.lower(k)] = v end

local function refuse(flow, kind, fp, what)
  local description = "blocked " .. kind .. " fingerprint " .. fp .. " (" .. tostring(what) .. ")"
  haka.alert{ description = description, severity = config.severity, method = { description = kind .. " blocklist" } }
  if config.action == "reset" then
    flow:reset(description)
  else
    flow:drop(description)
  end
end

if next(ja3) ~= nil or next(ja4) ~= nil then
  haka.rule {
    on = tls.events.client_hello,
    eval = function(flow, hello)
      local h = hello.ja3_hash and ja3[string.lower(hello.ja3_hash)]
      if h then
        return refuse(flow, "JA3", hello.ja3_hash, h)
      end
      local f = hello.ja4 and ja4[string.lower(hello.ja4)]
      if f then
        return refuse(flow, "JA4", hello.ja4, f)
      end
    end,
  }
end
