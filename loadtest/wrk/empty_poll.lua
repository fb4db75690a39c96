-- Scenario empty_poll: an empty poll: the cutoff is the newest message, the common case of interval polling.
-- URL: $CHATBUS_URL$EMPTY_POLL_PATH from out/targets.env
--
--   wrk -t1 -c16 -d10s -s loadtest/wrk/empty_poll.lua "$CHATBUS_URL$EMPTY_POLL_PATH"
--
-- A plain GET of the URL given to wrk; this script only adds the RESULT line.
local src = debug.getinfo(1, "S").source
dofile((src:match("^@(.*/)") or "./") .. "report.lua")
done = report("empty_poll")
