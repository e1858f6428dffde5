-- wrk script for the keyplane benchmark: a fixed POST body and an optional bearer key, both given
-- through the environment (BENCH_BODY = path of the body file, BENCH_KEY = the key, may be empty).
-- It counts response statuses per thread and prints one parseable line at the end:
--   BENCH_RESULT key=value ...
-- Latency figures are wrk's own histogram, in microseconds.

local body_path = os.getenv("BENCH_BODY")
local key = os.getenv("BENCH_KEY") or ""

local f = assert(io.open(body_path, "rb"), "cannot open " .. tostring(body_path))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, resp_body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses") or {}
    for code, n in pairs(s) do
      counts[code] = (counts[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(counts) do
    table.insert(parts, string.format("%d:%.0f", code, n))
  end
  table.sort(parts)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%.0f duration_us=%.0f bytes=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f "
      .. "p999_us=%.0f max_us=%.0f mean_us=%.1f err_connect=%.0f err_read=%.0f err_write=%.0f "
      .. "err_status=%.0f err_timeout=%.0f statuses=%s\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout,
    (#parts > 0) and table.concat(parts, ",") or "-"
  ))
end
