-- wrk script: posts Twilio-signed voice webhooks and checks the route of every answer.
--
-- run.py writes the signed requests as slice_<n>.txt, one per wrk thread (wrk's Lua has no
-- HMAC): the <Sip> element expected on the first line, then each whole request as its length,
-- a newline and the bytes. Each thread walks its own slice, whose callers all go to one queue:
-- response() cannot tell which request an answer belongs to (a thread runs several
-- connections), but every answer on the thread must carry the slice's <Sip> element, so each
-- one is checked.
--
-- Every connection waits for one start time before its first request. Under load, the server's
-- event loop (libuv) accepts one new connection per turn, so connections opened under load come
-- online one turn at a time and their first requests wait for up to 64 turns; wrk's correction
-- for coordinated omission then multiplies those waits into the percentiles. Waiting lets the
-- idle server accept every connection before the load begins, so that the latencies are those
-- of the load, not of the ramp. The rate is counted from the start time.
--
-- args: the slice directory; "check" (compare routes) or "nocheck" (200 is enough: the ceiling
-- answers one constant TwiML); the start time (Unix time, seconds)

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local timespec = ffi.new("bench_timespec")

local function now_ms()  -- CLOCK_REALTIME, Python's time.time()
  ffi.C.clock_gettime(0, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function load_slice(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  local first = data:find("\n", 1, true)
  local requests, at = {}, first + 1
  while at <= #data do
    local newline = data:find("\n", at, true)
    local length = tonumber(data:sub(at, newline - 1))
    requests[#requests + 1] = data:sub(newline + 1, newline + length)
    at = newline + 1 + length
  end
  return data:sub(1, first - 1), requests
end

function init(args)
  expect, prepared = load_slice(args[1] .. "/slice_" .. id .. ".txt")
  check = args[2] == "check"
  start_ms = tonumber(args[3]) * 1000
  waited = 0  -- connections that were ready before the start time
  count, current, passes = #prepared, 0, 0
  answered, non200, wrong = 0, 0, 0
  first_problem = ""
end

function delay()
  local wait = start_ms - now_ms()
  if wait <= 0 then return 0 end
  waited = waited + 1
  return math.ceil(wait)
end

function request()
  current = current + 1
  if current > count then current = 1 end
  if current == 1 then passes = passes + 1 end
  return prepared[current]
end

local function note(problem)
  if first_problem == "" then first_problem = problem end
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    non200 = non200 + 1
    note("HTTP " .. status .. ": " .. string.sub(body, 1, 200))
  elseif check and not string.find(body, expect, 1, true) then
    wrong = wrong + 1
    note("expected " .. expect .. ", got " .. string.sub(body, 1, 300))
  end
end

local function json_string(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local loaded_us = (now_ms() - threads[1]:get("start_ms")) * 1000
  local answered_, non200_, wrong_, passes_, waited_, problem = 0, 0, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    waited_ = waited_ + thread:get("waited")
    answered_ = answered_ + thread:get("answered")
    non200_ = non200_ + thread:get("non200")
    wrong_ = wrong_ + thread:get("wrong")
    passes_ = math.max(passes_, thread:get("passes"))
    if problem == "" then problem = thread:get("first_problem") end
  end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "loaded_us": %d, "waited": %d, ' ..
    '"answered": %d, "non200": %d, ' ..
    '"wrong_routes": %d, "max_passes": %d, "socket_errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, ' ..
    '"max": %d, "mean": %.1f}, "first_problem": %s}\n',
    summary.requests, summary.duration, loaded_us, waited_, answered_, non200_, wrong_, passes_,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, json_string(problem)))
end
