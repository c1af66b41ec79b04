-- claim: takes the refresh claims of one or more keys, each unless another claim holds it or
-- the key backs off after failed refreshes. Each key is decided as if claimed alone.
--
-- KEYS[2i-1] = key i's claim, KEYS[2i] = its failure state (i = 1 .. #KEYS / 2).
-- ARGV[1] = now
-- ARGV[2] = the new claims' end
-- ARGV[3] = the claims' PX expiry
-- ARGV[3 + i] = key i's new token
--
-- Times are 20-digit zero-padded decimals, compared as strings. A claim is stored as
-- `<token>:<until>`, the failure state as `<failures>:<retry_after>:<forget_at>`; failure state
-- past its `forget_at` is ignored.
--
-- Replies one reply per key, in order: {WON, failures so far}, {HELD, the holder's until} or
-- {BACKING_OFF, retry_after, failures}.
local WON = 0
local HELD = 1
local BACKING_OFF = 2

local now = ARGV[1]

local function claim(claim_key, fail_key, token)
  local failures = '0'
  local f = redis.call('GET', fail_key)
  if f then
    local n, retry, forget = string.match(f, '^(%d+):(%d+):(%d+)$')
    if n and forget > now then
      failures = n
      if retry > now then
        return {BACKING_OFF, retry, n}
      end
    end
  end
  local c = redis.call('GET', claim_key)
  if c then
    -- Every token has the new one's length; the end follows it and a ':'.
    local held_until = string.sub(c, #token + 2)
    if held_until > now then
      return {HELD, held_until}
    end
  end
  redis.call('SET', claim_key, token .. ':' .. ARGV[2], 'PX', ARGV[3])
  return {WON, failures}
end

local replies = {}
for i = 1, #KEYS / 2 do
  replies[i] = claim(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 + i])
end
return replies
