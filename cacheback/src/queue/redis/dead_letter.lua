-- dead_letter: moves one message to its dead-letter stream, with why, and acknowledges it.
--
-- KEYS[1] = the stream, KEYS[2] = its dead-letter stream.
-- ARGV[1] = the consumer group
-- ARGV[2] = the message id
-- ARGV[3] = the reason
-- ARGV[4] = the delivery it failed at
-- ARGV[5] = the dead-letter stream's MAXLEN ~ bound
-- ARGV[6] = the job name ('' when the message did not decode)
--
-- The dead letter holds the fields below, then the original ones as they were (raw, even when
-- they do not decode): MESSAGE under its own name, any other under OTHER_FIELD .. its name.
-- The message is then acknowledged and deleted. Replies 1.
local MESSAGE = 'm'
local OTHER_FIELD = 'field:'
local REASON = 'reason'
local ATTEMPT = 'attempt'
local SOURCE_ID = 'id'
local STREAM = 'stream'
local JOB = 'job'

local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local fields = {REASON, ARGV[3], ATTEMPT, ARGV[4], SOURCE_ID, ARGV[2], STREAM, KEYS[1], JOB, ARGV[6]}
if found[1] and found[1][2] then
  local original = found[1][2]
  for i = 1, #original, 2 do
    local name = original[i]
    if name ~= MESSAGE then
      name = OTHER_FIELD .. name
    end
    fields[#fields + 1] = name
    fields[#fields + 1] = original[i + 1]
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
