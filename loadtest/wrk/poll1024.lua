-- Scenario poll1024: a poll returning 1024 messages (~170 KB): the original's 2016 benchmark.
-- URL: $CHATBUS_URL$POLL1024_PATH from out/targets.env
--
--   wrk -t1 -c16 -d10s -s loadtest/wrk/poll1024.lua "$CHATBUS_URL$POLL1024_PATH"
--
-- A plain GET of the URL given to wrk; this script only adds the RESULT line.
local src = debug.getinfo(1, "S").source
dofile((src:match("^@(.*/)") or "./") .. "report.lua")
done = report("poll1024")
