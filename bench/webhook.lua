-- wrk script: posts Twilio-signed voice webhooks and checks the route of every answer.
--
-- run.py writes the signed bodies as slice_<n>.lua, one per wrk thread (wrk's Lua has no HMAC).
-- Each thread walks its own slice, whose callers all go to one queue: response() cannot tell
-- which request an answer belongs to (a thread runs several connections), but every answer on
-- the thread must carry the slice's <Sip> element, so each one is checked.
--
-- args: the slice directory, then "check" (compare routes) or "nocheck" (200 is enough: the
-- ceiling answers one constant TwiML)

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local slice = dofile(args[1] .. "/slice_" .. id .. ".lua")
  check = args[2] == "check"
  expect = slice.expect
  prepared = {}
  for n, hook in ipairs(slice.hooks) do
    prepared[n] = wrk.format("POST", "/twilio/voice", {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Twilio-Signature"] = hook[2],
      ["I-Twilio-Idempotency-Token"] = hook[3],
    }, hook[1])
  end
  count, current, passes = #prepared, 0, 0
  answered, non200, wrong = 0, 0, 0
  first_problem = ""
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
  local answered_, non200_, wrong_, passes_, problem = 0, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    answered_ = answered_ + thread:get("answered")
    non200_ = non200_ + thread:get("non200")
    wrong_ = wrong_ + thread:get("wrong")
    passes_ = math.max(passes_, thread:get("passes"))
    if problem == "" then problem = thread:get("first_problem") end
  end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "answered": %d, "non200": %d, ' ..
    '"wrong_routes": %d, "max_passes": %d, "socket_errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, ' ..
    '"max": %d, "mean": %.1f}, "first_problem": %s}\n',
    summary.requests, summary.duration, answered_, non200_, wrong_, passes_,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, json_string(problem)))
end
