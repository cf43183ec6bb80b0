-- wrk script for `make bench`: replays a list of requests prepared by bench/wrk.py and prints
-- the run's figures as one JSON line.
--
-- wrk -s bench/load.lua URL -- REQUESTS_FILE
--   REQUESTS_FILE is a Lua file returning { {method, path, body, authorization, user}, ... }:
--   every request carries the caller both ways (a bearer token for the apps with auth, the
--   X-User header for those without), so every app runs the same queries for the same users.

local requests_list = {}
local next_index = 1

function init(args)
  local spec = dofile(args[1])
  for i, r in ipairs(spec) do
    local headers = {
      ["Authorization"] = "Bearer " .. r[4],
      ["X-User"] = r[5],
    }
    if r[3] then
      headers["Content-Type"] = "application/json"
    end
    -- Formatted once here, so each request costs wrk a table lookup, not a format.
    requests_list[i] = wrk.format(r[1], r[2], headers, r[3])
  end
  -- Each thread starts at its own place in the list.
  next_index = (math.floor(os.clock() * 1000003) % #requests_list) + 1
end

function request()
  local r = requests_list[next_index]
  next_index = next_index + 1
  if next_index > #requests_list then
    next_index = 1
  end
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
