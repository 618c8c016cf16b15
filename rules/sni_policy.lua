-- sni_policy.lua: allows or denies connections by the server name (SNI)
-- of their ClientHello, before it is forwarded.
--
-- Patterns are host names, compared without case and without a trailing
-- dot: "example.com" matches that name only; "*.example.com" matches any
-- name under example.com (www.example.com, a.b.example.com) but not
-- example.com itself.
--
--   deny   a hello whose SNI matches is refused: an alert and the
--          connection ends.
--   allow  when not empty, a hello whose SNI matches none of its patterns
--          is refused, and so is a hello without SNI unless
--          allow_missing is true.
--
-- Both lists are empty by default: the rule has no effect until you fill
-- them. With ECH, the SNI seen is the client-facing (outer) name.

local config = {
  deny = {
    -- "blocked.example",
    -- "*.ads.example",
  },
  allow = {
    -- "service.example.com",
    -- "*.internal.example.com",
  },
  allow_missing = false,
  action = "drop", -- or "reset"
  severity = "medium",
}

local function normalise(name)
  name = string.lower(name)
  if string.sub(name, -1) == "." then
    name = string.sub(name, 1, -2)
  end
  return name
end

-- compile turns a pattern list into an exact-name set and a list of
-- suffixes (".example.com" for "*.example.com").
local function compile(patterns)
  local exact, suffixes = {}, {}
  for _, p in ipairs(patterns) do
    p = normalise(p)
    if string.sub(p, 1, 2) == "*." then
      suffixes[#suffixes + 1] = string.sub(p, 2)
    else
      exact[p] = true
    end
  end
  return { exact = exact, suffixes = suffixes, empty = #patterns == 0 }
end

local function matches(list, name)
  if list.exact[name] then
    return true
  end
  for _, suffix in ipairs(list.suffixes) do
    if #name > #suffix and string.sub(name, -#suffix) == suffix then
      return true
    end
  end
  return false
end

local deny, allow = compile(config.deny), compile(config.allow)

local function refuse(flow, description)
  haka.alert{ description = description, severity = config.severity, method = { description = "SNI policy" } }
  if config.action == "reset" then
    flow:reset(description)
  else
    flow:drop(description)
  end
end

if not (deny.empty and allow.empty) then
  haka.rule {
    on = tls.events.client_hello,
    eval = function(flow, hello)
      local sni = hello.sni
      if sni == nil or sni == "" then
        if not allow.empty and not config.allow_missing then
          refuse(flow, "SNI policy: ClientHello without a server name")
        end
        return
      end
      local name = normalise(sni)
      if matches(deny, name) then
        refuse(flow, "SNI policy: denied server name " .. sni)
      elseif not allow.empty and not matches(allow, name) then
        refuse(flow, "SNI policy: server name not allowed " .. sni)
      end
    end,
  }
end
