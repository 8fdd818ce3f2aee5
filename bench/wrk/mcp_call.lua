-- wrk script: POST JSON-RPC tools/call of the echo tool, one MCP request per HTTP request.
--
--   wrk -t T -c C -d 5s -s mcp_call.lua http://127.0.0.1:PORT/mcp -- ERA TOOL TOKEN [SESSIONS_FILE NTHREADS]
--
-- ERA "modern": 2026-07-28 stateless POSTs; every request carries the protocol version, client
--   info and capabilities in params._meta (and the MCP-Protocol-Version / Mcp-Method / Mcp-Name
--   headers); no session.
-- ERA "legacy": 2025-11-25 handshake era. wrk's Lua cannot see connections, and a request hook
--   cannot wait for an answer, so the sessions are opened beforehand (serve_bench.py initializes
--   one per connection and writes their Mcp-Session-Id values, one per line, to SESSIONS_FILE);
--   thread k of NTHREADS takes every NTHREADS-th id and its requests rotate over them.
-- TOOL: the tool name (the guard exposes upstream "upstream"'s echo as upstream_echo).
-- TOKEN: bearer grant chain, or "-" for none.
--
-- Every request has a fresh JSON-RPC id (several may be in flight on one session). A response
-- counts as an error unless it is HTTP 200 and its body carries "isError":false. done() prints
-- one line "WRKJSON {...}" with counts and latency percentiles in microseconds; the first error
-- answer of each thread is printed as "WRKERR <status> <body prefix>".

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  era = args[1] or "modern"
  tool = args[2] or "echo"
  local token = args[3] or "-"
  rpc_errors = 0
  seq = tid * 1000000000
  headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
  }
  if token ~= "-" then
    headers["Authorization"] = "Bearer " .. token
  end
  local meta = ""
  if era == "modern" then
    headers["MCP-Protocol-Version"] = "2026-07-28"
    headers["Mcp-Method"] = "tools/call"
    headers["Mcp-Name"] = tool
    meta = ',"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
      .. '"io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"4"},'
      .. '"io.modelcontextprotocol/clientCapabilities":{}}'
  else
    headers["MCP-Protocol-Version"] = "2025-11-25"
    sids = {}
    local nthreads = tonumber(args[5])
    local i = 0
    for line in io.lines(args[4]) do
      if line ~= "" then
        if i % nthreads == tid - 1 then table.insert(sids, line) end
        i = i + 1
      end
    end
    if #sids == 0 then error("no session ids for thread " .. tid) end
    cur = 0
  end
  head = '{"jsonrpc":"2.0","id":'
  tail = ',"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"text":"hello"}' .. meta .. '}}'
end

function request()
  seq = seq + 1
  if era == "legacy" then
    cur = cur % #sids + 1
    headers["Mcp-Session-Id"] = sids[cur]
  end
  return wrk.format("POST", nil, headers, head .. seq .. tail)
end

function response(status, hdrs, body)
  if status ~= 200 or not string.find(body, '"isError":false', 1, true) then
    rpc_errors = rpc_errors + 1
    if rpc_errors == 1 then  -- the first refusal of each thread, for the record
      io.write("WRKERR " .. status .. " " .. string.sub(body, 1, 300):gsub("\n", " ") .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local rpc = 0
  for _, t in ipairs(threads) do rpc = rpc + t:get("rpc_errors") end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
    .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"rpc_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, rpc, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
