-- tag: invalidates (or deletes) every entry carrying a tag, in constant work: bumps the
-- prefix's tag clock and records the new value in the tag's record, then announces it.
--
-- KEYS[1] = the prefix's tag clock (an integer)
-- KEYS[2] = the tag's record: '<invalidated>:<deleted>', both tag clock values (0: never)
-- ARGV[1] = '1' to delete, '0' to invalidate
-- ARGV[2] = the channel that announces changes ('' = announce nothing)
-- ARGV[3] = what the announcement starts with: the tag marker byte, then the tag's digest (16
--           big-endian bytes); the record follows it as text
--
-- Both keys share one hash tag (the prefix's), so this runs in one Cluster slot. Clock values
-- stay far below 2^53, where Lua's doubles are exact.
--
-- Replies {invalidated, deleted}.
local clock = redis.call('INCR', KEYS[1])
local deleted = 0
local record = redis.call('GET', KEYS[2])
if record then
  local d = string.match(record, '^%d+:(%d+)$')
  if d then
    deleted = tonumber(d)
  end
end
if ARGV[1] == '1' then
  deleted = clock
end
local new = string.format('%d:%d', clock, deleted)
redis.call('SET', KEYS[2], new)
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. new)
end
return {clock, deleted}
