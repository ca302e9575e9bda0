-- wrk script used by bench/hits.sh: every request asks for the next of N small files,
-- <prefix>/pool/main/small-1.deb .. small-N.deb, wrapping around.
--
-- Environment:
--   WRK_PREFIX  repository prefix in the request path (default /debian)
--   WRK_NFILES  N (default 1000; 1 = always small-1.deb)
--   WRK_ABS     empty (path-routed: "GET /debian/...") or a scheme://host:port that is put in
--               front of the path to send forward-proxy requests ("GET http://host:port/debian/...")
--   WRK_HOST    Host header to send instead of wrk's default (the target's host:port)

local prefix = os.getenv("WRK_PREFIX") or "/debian"
local count = tonumber(os.getenv("WRK_NFILES") or "1000")
local absolute = os.getenv("WRK_ABS") or ""
local host = os.getenv("WRK_HOST") or ""

if host ~= "" then
  wrk.headers["Host"] = host
end

-- Each wrk thread has its own Lua state; setup() runs in the main state once per thread and
-- hands each one a different starting point so threads do not request the same file together.
local threads_seen = 0
function setup(thread)
  thread:set("start_at", threads_seen * 367)
  threads_seen = threads_seen + 1
end

local prepared = {}
local next_index = 0

function init(args)
  for n = 1, count do
    prepared[n] = wrk.format("GET", absolute .. prefix .. "/pool/main/small-" .. n .. ".deb")
  end
  next_index = (tonumber(start_at) or 0) % count
end

function request()
  next_index = next_index % count + 1
  return prepared[next_index]
end
