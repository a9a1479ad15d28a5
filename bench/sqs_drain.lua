-- wrk script: SQS consumers over AWS JSON 1.0. Each answer to a ReceiveMessage of up to 10
-- messages (MaxNumberOfMessages 10) is followed by one DeleteMessageBatch of all the receipt
-- handles it gave (bench/sqs.py runs it). Unsigned: the server must be open (no tokens, no credentials:
-- loopback only), as docs/sqs.md allows. The queue's URL comes from KATAR_SQS_QUEUE_URL.
local queue = os.getenv("KATAR_SQS_QUEUE_URL")
local receive_body = '{"QueueUrl":"' .. queue .. '","MaxNumberOfMessages":10}'
-- Messages received and deleted by this thread (summed over the threads when wrk stops).
deleted = 0
received = 0
empty = 0
failed = 0
local threads = {}
-- The deletes to send, first in first out: wrk gives Lua no connection of its own, so a
-- delete goes on whichever connection of this thread writes next (any connection may carry
-- any handle). Each response is followed by one request on its connection, so there are
-- never more deletes waiting than connections.
local pending = {}
local first = 1
local last = 0

setup = function(thread)
  threads[#threads + 1] = thread
end

done = function(summary, latency, requests)
  local totals = { deleted = 0, received = 0, empty = 0, failed = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
  end
  io.write(
    string.format(
      "received: %d\ndeleted: %d\nempty receives: %d\nfailed: %d\n",
      totals.received,
      totals.deleted,
      totals.empty,
      totals.failed
    )
  )
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-amz-json-1.0"

local receive_request = nil
local delete_headers = { ["X-Amz-Target"] = "AmazonSQS.DeleteMessageBatch" }
local receive_headers = { ["X-Amz-Target"] = "AmazonSQS.ReceiveMessage" }

init = function(args)
  receive_request = wrk.format("POST", "/", receive_headers, receive_body)
end

request = function()
  if first <= last then
    local body = pending[first]
    pending[first] = nil
    first = first + 1
    return wrk.format("POST", "/", delete_headers, body)
  end
  return receive_request
end

response = function(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
    return
  end
  local successful = string.match(body, '"Successful":%[(.-)%]')
  if successful ~= nil then
    -- A DeleteMessageBatch's answer: count its successful entries, and any failed one.
    for _ in string.gmatch(successful, '"Id":"') do
      deleted = deleted + 1
    end
    if string.find(body, '"Failed":[{', 1, true) then
      failed = failed + 1
    end
    return
  end
  local entries = {}
  local n = 0
  for handle in string.gmatch(body, '"ReceiptHandle":"([^"]+)"') do
    n = n + 1
    entries[n] = '{"Id":"' .. n .. '","ReceiptHandle":"' .. handle .. '"}'
  end
  if n == 0 then
    empty = empty + 1
    return
  end
  received = received + n
  last = last + 1
  pending[last] = '{"QueueUrl":"' .. queue .. '","Entries":[' .. table.concat(entries, ",") .. "]}"
end
