-- wrk script: a crowd of katar-worker-http workers. Each poll carries the acks of the tasks
-- the previous responses delivered (piggybacked, as the seed protocol does) and asks for up
-- to KATAR_MAX tasks. Acks are gathered per wrk thread, so an ack may travel on another
-- connection than the task came on: the protocol allows it.
local max = tonumber(os.getenv("KATAR_MAX") or "1")
local acks = {}
-- Tasks this thread was handed, summed over the threads when wrk stops (SIGINT), so that a
-- drain can check that each task was delivered once.
delivered = 0
local threads = {}

setup = function(thread)
  threads[#threads + 1] = thread
end

done = function()
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("delivered")
  end
  io.write("delivered: " .. total .. "\n")
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  local body
  if #acks > 0 then
    body = '{"max":' .. max .. ',"tasks":[' .. table.concat(acks, ",") .. ']}'
    acks = {}
  else
    body = '{"max":' .. max .. '}'
  end
  return wrk.format(nil, nil, nil, body)
end

response = function(status, headers, body)
  if status == 200 then
    for id in string.gmatch(body, '"_id":"(%d+)"') do
      acks[#acks + 1] = '{"_id":"' .. id .. '","status":"done"}'
      delivered = delivered + 1
    end
  end
end
