-- Scenario send: POST one message, from the seeded sender to its contact, again and again.
-- URL: $CHATBUS_URL$SEND_PATH; body: $SEND_BODY (both from out/targets.env).
--
--   SEND_BODY='{"receiver_id":3,"body":"hi"}' \
--     wrk -t1 -c16 -d10s -s loadtest/wrk/send.lua "$CHATBUS_URL$SEND_PATH"
local src = debug.getinfo(1, "S").source
dofile((src:match("^@(.*/)") or "./") .. "report.lua")

wrk.method = "POST"
wrk.body = os.getenv("SEND_BODY") or error("send.lua: set SEND_BODY to the JSON body (see out/targets.env)")
wrk.headers["Content-Type"] = "application/json"

done = report("send")
