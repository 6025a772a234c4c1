-- The load of `seqproc bench --server`, run by wrk: every request is a like by a new user on one article (the hot
-- row), POSTed to the endpoint of the URL wrk was given. Its one argument (after wrk's `--`) is the article id.
-- `done` prints wrk's own figures as one JSON line, prefixed with SEQPROC_WRK, for the benchmark to read.

local threads = {}

function setup(thread)
   -- Each wrk thread gets its own block of user ids, so that no two requests of the run share a user.
   thread:set("thread_number", #threads)
   table.insert(threads, thread)
end

function init(args)
   article = tonumber(args[1]) or 1
   sent = 0
end

function request()
   sent = sent + 1
   local user = thread_number * 1000000000 + sent
   return wrk.format("POST", string.format("%s?article=%d&user=%d", wrk.path, article, user))
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'SEQPROC_WRK {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
