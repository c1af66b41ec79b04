-- claim: takes a key's refresh claim, unless another one holds it or the key backs off after
-- failed refreshes.
--
-- KEYS[1] = the claim, KEYS[2] = the failure state.
-- ARGV[1] = now
-- ARGV[2] = the new claim's token
-- ARGV[3] = the new claim's end
-- ARGV[4] = the claim's PX expiry
--
-- Times are 20-digit zero-padded decimals, compared as strings. A claim is stored as
-- `<token>:<until>`, the failure state as `<failures>:<retry_after>:<forget_at>`; failure state
-- past its `forget_at` is ignored.
--
-- Replies {WON, failures so far}, {HELD, the holder's until} or
-- {BACKING_OFF, retry_after, failures}.
local WON = 0
local HELD = 1
local BACKING_OFF = 2

local now = ARGV[1]
local failures = '0'
local f = redis.call('GET', KEYS[2])
if f then
  local n, retry, forget = string.match(f, '^(%d+):(%d+):(%d+)$')
  if n and forget > now then
    failures = n
    if retry > now then
      return {BACKING_OFF, retry, n}
    end
  end
end
local c = redis.call('GET', KEYS[1])
if c then
  -- Every token has the new one's length; the end follows it and a ':'.
  local held_until = string.sub(c, #ARGV[2] + 2)
  if held_until > now then
    return {HELD, held_until}
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[3], 'PX', ARGV[4])
return {WON, failures}
