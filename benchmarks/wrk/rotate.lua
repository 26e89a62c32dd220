-- Closed-loop load for wrk: POST the bodies of $WRK_BODIES (one per line) in turn; write a JSON summary to
-- $WRK_OUT when done. Latencies in microseconds as wrk measures them (all responses, any status).
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  i = math.random(#bodies)
end

function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_OUT"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
      .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
  out:close()
end
