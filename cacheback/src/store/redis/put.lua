-- put, put-and-release and put-and-claim: writes an entry if its generation condition holds,
-- and stamps the new generation into it. Sent with claim_fn.lua in front of it.
--
-- KEYS[1] = the entry; for put-and-release and put-and-claim also KEYS[2] = the claim,
-- KEYS[3] = the failure state.
-- ARGV[1] = '' (write always) or the expected generation, 8 big-endian bytes
-- ARGV[2] = the new envelope
-- ARGV[3] = its PX expiry
-- ARGV[4] = the envelope's first bytes (magic and format version)
-- ARGV[5] = the envelope header's length
-- ARGV[6] = the generation's byte offset in the header (0-based; the generation is 8 bytes)
-- ARGV[7] = the channel that announces changes ('' = announce nothing)
-- ARGV[8] = what the announcement starts with: 1 byte (1 for a delete, 0 otherwise), then the
--           key's digest, 16 big-endian bytes; the new generation (8 bytes) follows it
-- ARGV[9] = put-and-release: the claim token; put-and-claim: ''
-- ARGV[10..13] = put-and-claim only: now, the new claim's end, its PX expiry, its token
--
-- The layout comes from the Rust side, so this script never disagrees with the envelope codec.
-- Bytes that do not start with the prefix, or are shorter than a header, have generation 0.
-- Put-and-release then also deletes the claim (if the token owns it) and the failure state,
-- whether the entry was written or not: one round trip instead of two. Put-and-claim takes the
-- key's claim (as the claim script would) once the entry is written, and not when it is not.
--
-- Replies {WRITTEN, new generation} or {DISCARDED, current generation}, generations as
-- 8-byte strings; put-and-claim's WRITTEN reply has the claim's reply (see claim_fn.lua) third.
local WRITTEN = 1
local DISCARDED = 0

local prefix, header_len, gen_at = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])

local function release()
  if #KEYS == 3 and ARGV[9] ~= '' then
    local token = ARGV[9]
    local c = redis.call('GET', KEYS[2])
    if c and string.sub(c, 1, #token) == token then
      redis.call('DEL', KEYS[2])
    end
    redis.call('DEL', KEYS[3])
  end
end

local cur = redis.call('GET', KEYS[1])
local gen = '\0\0\0\0\0\0\0\0'
if cur and #cur >= header_len and string.sub(cur, 1, #prefix) == prefix then
  gen = string.sub(cur, gen_at + 1, gen_at + 8)
end
if ARGV[1] ~= '' and ARGV[1] ~= gen then
  release()
  return {DISCARDED, gen}
end
-- Increment the 8-byte big-endian generation as a byte string (Lua numbers are doubles).
local b = {string.byte(gen, 1, 8)}
local i = 8
while i >= 1 do
  if b[i] == 255 then
    b[i] = 0
    i = i - 1
  else
    b[i] = b[i] + 1
    break
  end
end
local new = string.char(unpack(b))
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SETRANGE', KEYS[1], gen_at, new)
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], ARGV[8] .. new)
end
release()
if #KEYS == 3 and ARGV[9] == '' then
  return {WRITTEN, new, claim(KEYS[2], KEYS[3], ARGV[13], ARGV[10], ARGV[11], ARGV[12])}
end
return {WRITTEN, new}
