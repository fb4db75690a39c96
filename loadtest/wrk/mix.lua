-- Scenario mix: 90 % polls, 10 % sends, over many sessions.
--
--   MIX_SESSIONS=loadtest/out/mix_sessions.txt \
--     wrk -t1 -c16 -d10s -s loadtest/wrk/mix.lua "$CHATBUS_URL"
--
-- Each request picks a random seeded session (MIX_SESSIONS: lines `session user_id receiver_id`,
-- written by `seed`). A poll asks, as an interval-polling client does, for what arrived in the
-- last MIX_WINDOW_S seconds (default 1): GET /api/messages/:session/<now - window>/0, the clock
-- being the server's own since both run on this machine. A send (probability MIX_SEND_RATIO,
-- default 0.1) posts a short line to the session's contact.
local src = debug.getinfo(1, "S").source
local dir = src:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local file = os.getenv("MIX_SESSIONS") or (dir .. "../out/mix_sessions.txt")
local ratio = tonumber(os.getenv("MIX_SEND_RATIO") or "0.1")
local window = tonumber(os.getenv("MIX_WINDOW_S") or "1")

local sessions = {}
for line in io.lines(file) do
  local session, user, receiver = line:match("^(%x+)%s+(%d+)%s+(%d+)")
  if session then
    sessions[#sessions + 1] = { poll = "/api/messages/" .. session .. "/", send = "/api/message/" .. session,
                                receiver = receiver }
  end
end
if #sessions == 0 then error("mix.lua: no sessions in " .. file) end

local lines = { "hey", "on my way", "see you at 6?", "sounds good", "running 5 min late", "thanks :)",
                "lunch tomorrow?", "can you call me?", "got it", "meeting moved to 3pm" }
local post_headers = { ["Content-Type"] = "application/json" }

-- Each wrk thread has its own Lua state; give each its own random sequence.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0))
end

function request()
  local s = sessions[math.random(#sessions)]
  if math.random() < ratio then
    local body = '{"receiver_id":' .. s.receiver .. ',"body":"' .. lines[math.random(#lines)] .. '"}'
    return wrk.format("POST", s.send, post_headers, body)
  end
  return wrk.format("GET", s.poll .. (os.time() - window) .. "/0")
end

done = report("mix")
