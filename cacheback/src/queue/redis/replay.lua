-- replay: puts one dead letter's message back on its stream, as a new message, and removes the
-- dead letter; both streams share a hash tag, so this is one atomic step.
--
-- KEYS[1] = the dead-letter stream, KEYS[2] = the stream it came from.
-- ARGV[1] = the dead letter's id
-- ARGV[2] = the stream's MAXLEN ~ bound
--
-- Replies 1 (replayed), 0 (no such dead letter) or -1 (the dead letter holds no message:
-- nothing to replay; it is left as it is).
local MESSAGE = 'm'

local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not found[1] or not found[1][2] then
  return 0
end
local fields = found[1][2]
local message = nil
for i = 1, #fields, 2 do
  if fields[i] == MESSAGE then
    message = fields[i + 1]
  end
end
if not message then
  return -1
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', MESSAGE, message)
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
