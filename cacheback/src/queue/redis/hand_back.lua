-- hand_back: hands the messages held by a stopping consumer back to the stream, so that other
-- consumers read them at once instead of taking them over after the visibility timeout.
--
-- KEYS[1] = the stream.
-- ARGV[1] = the consumer group
-- ARGV[2] = the stream's MAXLEN ~ bound
-- ARGV[3], ARGV[4], ... = pairs of (message id, its delivery count so far)
--
-- Each message is copied to the end of the stream with field PRIOR_DELIVERIES = deliveries
-- before this copy (so the delivery limit still counts them), then acknowledged and deleted.
-- Replies how many messages were copied.
local PRIOR_DELIVERIES = 'a'

local handed = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if found[1] and found[1][2] then
    local fields = found[1][2]
    local prior = 0
    local copy = {}
    for j = 1, #fields, 2 do
      if fields[j] == PRIOR_DELIVERIES then
        prior = tonumber(fields[j + 1]) or 0
      else
        copy[#copy + 1] = fields[j]
        copy[#copy + 1] = fields[j + 1]
      end
    end
    copy[#copy + 1] = PRIOR_DELIVERIES
    copy[#copy + 1] = tostring(prior + (tonumber(ARGV[i + 1]) or 1))
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(copy))
    handed = handed + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
end
return handed
