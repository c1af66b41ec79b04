-- claim: takes the refresh claims of one or more keys, each unless another claim holds it or
-- the key backs off after failed refreshes. Each key is decided as if claimed alone, by
-- `claim` of claim_fn.lua (sent in front of this text).
--
-- KEYS[2i-1] = key i's claim, KEYS[2i] = its failure state (i = 1 .. #KEYS / 2).
-- ARGV[1] = now
-- ARGV[2] = the new claims' end
-- ARGV[3] = the claims' PX expiry
-- ARGV[3 + i] = key i's new token
--
-- Replies one reply per key, in order (see claim_fn.lua).
local replies = {}
for i = 1, #KEYS / 2 do
  replies[i] = claim(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 + i], ARGV[1], ARGV[2], ARGV[3])
end
return replies
