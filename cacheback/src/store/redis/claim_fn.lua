-- claim_fn: the claim of one key, shared by the `claim` and `put` scripts (each is sent with
-- this text in front of it).
--
-- Times are 20-digit zero-padded decimals, compared as strings. A claim is stored as
-- `<token>:<until>`, the failure state as `<failures>:<retry_after>:<forget_at>`; failure state
-- past its `forget_at` is ignored.
--
-- Replies {WON, failures so far}, {HELD, the holder's until} or {BACKING_OFF, retry_after,
-- failures}.
local WON = 0
local HELD = 1
local BACKING_OFF = 2

local function claim(claim_key, fail_key, token, now, claim_until, px)
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
  redis.call('SET', claim_key, token .. ':' .. claim_until, 'PX', px)
  return {WON, failures}
end
