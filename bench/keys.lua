-- wrk script: every request carries an X-API-Key from a key list file, round-robin.
-- Usage: wrk ... -s bench/keys.lua http://host:port/bench -- KEYFILE
-- Each thread starts at a different place in the list. At the end, one line
-- "BENCHJSON {...}" gives requests/s, latency percentiles (µs) and error counts.

local keys = {}
local position = 0
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then keys[#keys + 1] = line end
  end
  position = (id or 0) * math.floor(#keys / 2)
end

function request()
  position = position % #keys + 1
  return wrk.format("GET", nil, { ["X-API-Key"] = keys[position] })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "rps": %.2f, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.timeout, e.status))
end
