-- Scenario poll10: a poll returning 10 messages.
-- URL: $CHATBUS_URL$POLL10_PATH from out/targets.env
--
--   wrk -t1 -c16 -d10s -s loadtest/wrk/poll10.lua "$CHATBUS_URL$POLL10_PATH"
--
-- A plain GET of the URL given to wrk; this script only adds the RESULT line.
local src = debug.getinfo(1, "S").source
dofile((src:match("^@(.*/)") or "./") .. "report.lua")
done = report("poll10")
