-- release: gives a claim up (if the token still owns it) and records how its refresh ended.
--
-- KEYS[1] = the claim, KEYS[2] = the failure state.
-- ARGV[1] = the claim token
-- ARGV[2] = the mode: REFRESHED clears the failure state, FAILED writes ARGV[3] to it, any
--           other mode (abandoned) leaves it as it is
-- ARGV[3] = FAILED only: the failure state, `<failures>:<retry_after>:<forget_at>`
-- ARGV[4] = FAILED only: the failure state's PX expiry
--
-- Replies 1.
local REFRESHED = 'r'
local FAILED = 'f'

local c = redis.call('GET', KEYS[1])
if c and string.sub(c, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[2] == REFRESHED then
  redis.call('DEL', KEYS[2])
elseif ARGV[2] == FAILED then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
return 1
