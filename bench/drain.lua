-- wrk script: a crowd of katar-worker-http workers. Each poll carries the acks of the tasks
-- the previous responses delivered (piggybacked, as the seed protocol does) and asks for up
-- to KATAR_MAX tasks. Acks are gathered per wrk thread, so an ack may travel on another
-- connection than the task came on: the protocol allows it.
local max = tonumber(os.getenv("KATAR_MAX") or "1")
local acks = {}

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
    end
  end
end
