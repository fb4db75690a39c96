-- Shared by every scenario script: report(name) returns the done() that prints one
-- parseable line. Latencies in microseconds, as wrk measures them:
--
--   RESULT tool=wrk scenario=poll10 requests=123456 duration_s=10.000 rps=12345.6 bytes=...
--          bytes_per_req=... p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. mean_us=..
--          errors_connect=0 errors_read=0 errors_write=0 errors_status=0 errors_timeout=0
--
-- (all on one line; errors_status counts answers with a status >= 400).
function report(name)
  return function(summary, latency, requests)
    local e = summary.errors
    local secs = summary.duration / 1e6
    local n = summary.requests
    io.write(string.format(
      "RESULT tool=wrk scenario=%s requests=%d duration_s=%.3f rps=%.1f bytes=%d bytes_per_req=%.0f"
        .. " p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f"
        .. " errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
      name, n, secs, n / secs, summary.bytes, n > 0 and summary.bytes / n or 0,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
  end
end

