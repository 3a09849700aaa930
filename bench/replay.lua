-- wrk script: replays pre-generated requests, never the same one twice while the file lasts.
--
-- Environment (set by bench/run.py):
--   BENCH_REQUESTS  file, one request a line: "POST <path> <signature> <body>" or "GET <path>"
--   BENCH_THREADS   wrk's -t, so thread i takes lines i, i+T, i+2T, ... (disjoint sets)
--   BENCH_AUTH      optional Authorization header value for GET lines
--   BENCH_ACKED     optional file: the delivery_id of every 2xx answer is written there
--   BENCH_PATH      optional path that replaces the one on every line (the ceiling app)
--   BENCH_LATENCY   optional file: wrk's latency histogram, one "microseconds count" a line
--                   (so the latencies of several runs can be merged)
-- done() prints one line "BENCH_RESULT {json}" with counts and latency percentiles.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  local stride = tonumber(os.getenv("BENCH_THREADS") or "1")
  local auth = os.getenv("BENCH_AUTH")
  local track = os.getenv("BENCH_ACKED") ~= nil
  local override = os.getenv("BENCH_PATH")
  requests = {}
  acked = {}
  ok, failed, duplicates, wrapped = 0, 0, 0, 0
  statuses = {}
  position = 0
  tracking = track
  local line_number = 0
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    if line_number % stride == thread_index then
      local method, rest = line:match("^(%u+) (.*)$")
      if method == "POST" then
        local path, signature, body = rest:match("^(%S+) (%x+) (.*)$")
        requests[#requests + 1] = wrk.format("POST", override or path, {
          ["Content-Type"] = "application/json",
          ["User-Agent"] = "nango-registry-bench",
          ["X-Nango-Hmac-Sha256"] = signature,
        }, body)
      else
        local headers = {}
        if auth then headers["Authorization"] = auth end
        requests[#requests + 1] = wrk.format("GET", override or rest, headers)
      end
    end
    line_number = line_number + 1
  end
end

function request()
  position = position + 1
  if position > #requests then
    -- Out of distinct requests: repeats from here on are counted and reported.
    position = 1
    wrapped = wrapped + 1
  end
  return requests[position]
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    if tracking then
      -- A duplicate names the delivery already stored, which was acknowledged before.
      local id = body:match('"delivery_id":(%d+)')
      if id and not body:find('"status":"duplicate"', 1, true) then
        acked[#acked + 1] = id
      else
        duplicates = duplicates + 1
      end
    end
  else
    failed = failed + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total_ok, total_failed, total_duplicates, total_wrapped = 0, 0, 0, 0
  local by_status = {}
  local acked_file = os.getenv("BENCH_ACKED")
  local out = acked_file and assert(io.open(acked_file, "w"))
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_failed = total_failed + thread:get("failed")
    total_duplicates = total_duplicates + thread:get("duplicates")
    total_wrapped = total_wrapped + thread:get("wrapped")
    for key, count in pairs(thread:get("statuses")) do
      by_status[key] = (by_status[key] or 0) + count
    end
    if out then
      for _, id in ipairs(thread:get("acked")) do
        out:write(id, "\n")
      end
    end
  end
  if out then out:close() end
  local latency_file = os.getenv("BENCH_LATENCY")
  if latency_file then
    local histogram = assert(io.open(latency_file, "w"))
    for index = 1, #latency do
      local value, count = latency(index)
      histogram:write(string.format("%d %d\n", value, count))
    end
    histogram:close()
  end
  local parts = {}
  for key, count in pairs(by_status) do
    parts[#parts + 1] = string.format('"%s":%d', key, count)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"ok":%d,"failed":%d,"duplicates":%d,'
      .. '"wrapped":%d,"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,'
      .. '"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, total_ok, total_failed, total_duplicates,
    total_wrapped, table.concat(parts, ","), errors.connect, errors.read, errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end
