-- wrk script of the server cells: after the run, one line "WRKJSON {...}" with
-- the request count, the run's duration (us), bytes read, the error counts and
-- latency percentiles (us), for bench/servers.py to read.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "lat_p50_us": %.1f, "lat_p99_us": %.1f, "lat_max_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
