-- ssl_state_machine.lua: an SSL/TLS state machine written in Lua, beside
-- the built-in one, in Haka's state machine language. It follows the
-- handshake from the ClientHello to the switch to encryption (TLS 1.0 to
-- 1.2 full and resumed handshakes, TLS 1.3 with its HelloRetryRequest,
-- compatibility ChangeCipherSpec and 0-RTT data, SSLv2 hellos), raises
-- events of its own for rules, and judges heartbeats against the state:
-- a heartbeat during the handshake is how Heartbleed scanners probe, one
-- on an established connection must not come before any data nor leak.
--
-- Copy it into a rule directory (haka-proxy --rules DIR, haka-proxy replay
-- --rules DIR) to run it; `haka-proxy rules check DIR` checks it.

local ssl = haka.dissector.new{ name = "ssl" }

-- The events the machine raises, which rules hook as ssl.events.NAME.
ssl:register_event("client_hello")           -- (flow, hello)
ssl:register_event("server_hello")           -- (flow, hello)
ssl:register_event("established")            -- (flow, version)
ssl:register_event("heartbeat_in_handshake") -- (flow, hb, state)
ssl:register_event("suspicious_heartbeat")   -- (flow, hb, why)

ssl.states = haka.state_machine.new("ssl", function ()
  state_type(BidirectionalState)

  -- Each state names what it takes from the client (up) and the server
  -- (down). Alerts and heartbeats a state does not name raise
  -- events.alert and events.heartbeat instead of a parse error.

  -- The client speaks first.
  hello_request = state(tls.grammar.client_hello, nil)
  -- The server answers with its ServerHello (or a TLS 1.3 draft's
  -- HelloRetryRequest, or SSLv2); a TLS 1.3 client may send its
  -- compatibility ChangeCipherSpec and 0-RTT data meanwhile.
  client_hello_done = state(tls.grammar.change_cipher_spec + tls.grammar.application_data,
                            tls.grammar.server_hello + tls.grammar.hello_retry_request + tls.grammar.sslv2)
  -- After a HelloRetryRequest: the second ClientHello.
  hello_retry = state(tls.grammar.client_hello + tls.grammar.change_cipher_spec + tls.grammar.application_data,
                      tls.grammar.change_cipher_spec)
  -- TLS 1.2 and earlier: Certificate ... ServerHelloDone, or the
  -- NewSessionTicket and ChangeCipherSpec of a resumption.
  server_flight = state(nil, tls.grammar.handshake + tls.grammar.change_cipher_spec)
  -- The client's Certificate, ClientKeyExchange, CertificateVerify, then
  -- its ChangeCipherSpec.
  client_flight = state(tls.grammar.handshake + tls.grammar.change_cipher_spec, nil)
  -- The client has switched (its Finished, then perhaps False Start
  -- data); the server's NewSessionTicket and ChangeCipherSpec.
  server_finished = state(tls.grammar.encrypted, tls.grammar.new_session_ticket + tls.grammar.change_cipher_spec)
  -- A resumption, where the server switched first.
  client_finished = state(tls.grammar.change_cipher_spec, tls.grammar.encrypted)
  -- Both directions encrypted (in TLS 1.3 from the ServerHello on), no
  -- application data yet; then it flows. The units are the same, what a
  -- heartbeat means is not.
  established = state(tls.grammar.encrypted + tls.grammar.change_cipher_spec,
                      tls.grammar.encrypted + tls.grammar.change_cipher_spec)
  streaming = state(tls.grammar.encrypted + tls.grammar.change_cipher_spec,
                    tls.grammar.encrypted + tls.grammar.change_cipher_spec)

  local function tls13(version) return version ~= nil and version:sub(1, 6) == "TLS1.3" end -- and drafts

  local function server_hello(self, hello)
    self.data.version = hello.version
    self:trigger("server_hello", hello)
  end

  hello_request:on{ event = events.parse_error, jump = fail }
  hello_request:on{ event = events.up,
    execute = function (self, hello) self:trigger("client_hello", hello) end,
    jump = client_hello_done }

  client_hello_done:on{ event = events.down, when = tls.grammar.sslv2, jump = finish } -- opaque from here
  client_hello_done:on{ event = events.down, when = tls.grammar.hello_retry_request, jump = hello_retry }
  client_hello_done:on{ event = events.down, when = function (self, hello) return hello.retry end,
    execute = server_hello, jump = hello_retry }
  client_hello_done:on{ event = events.down, when = function (self, hello) return tls13(hello.version) end,
    execute = server_hello, jump = established }
  client_hello_done:on{ event = events.down, execute = server_hello, jump = server_flight }

  hello_retry:on{ event = events.up, when = tls.grammar.client_hello,
    execute = function (self, hello) self:trigger("client_hello", hello) end,
    jump = client_hello_done }

  server_flight:on{ event = events.down, when = tls.grammar.server_hello_done, jump = client_flight }
  server_flight:on{ event = events.down, when = tls.grammar.change_cipher_spec, jump = client_finished }

  client_flight:on{ event = events.up, when = tls.grammar.change_cipher_spec, jump = server_finished }
  server_finished:on{ event = events.down, when = tls.grammar.change_cipher_spec, jump = established }
  client_finished:on{ event = events.up, jump = established }

  established:on{ event = events.enter,
    execute = function (self) self:trigger("established", self.data.version) end }
  established:on{ events = { events.up, events.down }, when = tls.grammar.application_data, jump = streaming }

  -- A heartbeat after the handshake: none in TLS 1.3, none before any
  -- application data (how scanners probe), and no response longer than
  -- its request.
  local function heartbeat(self, hb)
    if tls13(self.data.version) then
      self:trigger("suspicious_heartbeat", hb, "in TLS 1.3, which has none")
    elseif hb.leak then
      self:trigger("suspicious_heartbeat", hb, "response longer than its request")
    elseif self.state == "established" then
      self:trigger("suspicious_heartbeat", hb, "before any application data")
    end
  end
  established:on{ event = events.heartbeat, execute = heartbeat }
  streaming:on{ event = events.heartbeat, execute = heartbeat }

  -- Every other state is part of the handshake.
  any:on{ event = events.heartbeat,
    execute = function (self, hb) self:trigger("heartbeat_in_handshake", hb, self.state) end }
  any:on{ event = events.parse_error,
    execute = function (self, err) self:log("ssl: " .. err.message) end,
    jump = fail }
  any:on{ event = events.fail,
    execute = function (self, reason) self:drop("ssl state machine: " .. reason) end }

  initial(hello_request)
end)

ssl:install()

-- The rules that judge what the machine raises.

local function stop(flow, description)
  haka.alert{
    description = description,
    severity = "high",
    confidence = "high",
    method = { description = "ssl state machine", ref = "RFC 6520" },
    ref = { "CVE-2014-0160" },
  }
  flow:drop(description)
end

haka.rule{ on = ssl.events.heartbeat_in_handshake, eval = function (flow, hb, state)
  stop(flow, "heartbleed: heartbeat " .. (hb.type or "record") .. " from the " ..
    (hb.direction == "up" and "client" or "server") .. " during the handshake (state " .. state .. ")")
end }

haka.rule{ on = ssl.events.suspicious_heartbeat, eval = function (flow, hb, why)
  stop(flow, "heartbleed: encrypted heartbeat " .. why)
end }

-- What the machine saw, for the connection's other rules and the debug log.
haka.rule{ on = ssl.events.client_hello, eval = function (flow, hello)
  flow.data.ssl = { sni = hello.sni, ja4 = hello.ja4 }
end }

haka.rule{ on = ssl.events.established, eval = function (flow, version)
  haka.log.debug("%s -> %s: %s established, SNI %s", flow.src, flow.dst, version,
    tostring(flow.data.ssl and flow.data.ssl.sni))
end }
