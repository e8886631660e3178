"""The shared backend's algorithm as Lua scripts, one Redis round trip per call (held equal to
core.limiter.local's Python by tests/core/test_limiter_equal.py)."""

_RESERVE_LUA = """
local key = KEYS[1]
local lane, tokens = ARGV[1], tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])  -- negative: no deadline
local rpm, tpm, burst, reserve = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local now = tonumber(ARGV[11])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The processes sharing the account (what each takes a share of if Redis goes away).
redis.call('ZADD', KEYS[2], now, ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[10]))
redis.call('EXPIRE', KEYS[2], ttl)
local peers = redis.call('ZCARD', KEYS[2])
local s = redis.call('HMGET', key, 'rb', 'tb', 'ro', 'to', 'pause', 'lrpm', 'ltpm', 'luntil')
local pause = tonumber(s[5]) or 0
if (tonumber(s[8]) or 0) > now then
  local lrpm, ltpm = tonumber(s[6]) or 0, tonumber(s[7]) or 0
  if lrpm > 0 and (rpm == 0 or lrpm < rpm) then rpm = lrpm end
  if ltpm > 0 and (tpm == 0 or ltpm < tpm) then tpm = ltpm end
end
local function fmt(x) return string.format('%.6f', x) end
if rpm == 0 and tpm == 0 then
  local start = math.max(now, pause)
  if max_wait >= 0 and start - now > max_wait then return {'', '-1', peers} end
  return {lane, fmt(start - now), peers}
end
local function intervals(l)
  local share = reserve
  if l == 'b' then share = 1 - reserve end
  local ri, ti = 0, 0
  if rpm > 0 then ri = 60 / (rpm * share) end
  if tpm > 0 then ti = 60 / (tpm * share) end
  return ri, ti
end
local idx = {b = {1, 2}, o = {3, 4}}
local function tats(l)
  return tonumber(s[idx[l][1]]) or now, tonumber(s[idx[l][2]]) or now
end
local function slot(l)
  local ri = intervals(l)
  local tol = (burst - 1) * ri
  local rt, tt = tats(l)
  return math.max(now, rt - tol, tt - tol, pause)
end
if lane == 'o' and reserve == 0 then lane = 'b' end
local start = slot(lane)
if lane == 'o' and start > now then
  local borrowed = slot('b')
  if borrowed <= now then lane, start = 'b', borrowed end
end
if max_wait >= 0 and start - now > max_wait then return {'', '-1', peers} end
local ri, ti = intervals(lane)
local rt, tt = tats(lane)
local fields = {}
if lane == 'b' then fields = {'rb', 'tb'} else fields = {'ro', 'to'} end
redis.call('HSET', key, fields[1], fmt(math.max(rt, start) + ri), fields[2], fmt(math.max(tt, start) + tokens * ti))
redis.call('EXPIRE', key, ttl)
return {lane, fmt(start - now), peers}
"""

_ADJUST_LUA = """
local key, lane, tokens = KEYS[1], ARGV[1], tonumber(ARGV[2])
local tpm, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(ARGV[5])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local s = redis.call('HMGET', key, 'ltpm', 'luntil')
if (tonumber(s[2]) or 0) > now then
  local ltpm = tonumber(s[1]) or 0
  if ltpm > 0 and (tpm == 0 or ltpm < tpm) then tpm = ltpm end
end
if tpm == 0 then return 0 end
if lane == 'o' and reserve == 0 then lane = 'b' end
local share = reserve
if lane == 'b' then share = 1 - reserve end
local field = 'tb'
if lane == 'o' then field = 'to' end
local tat = tonumber(redis.call('HGET', key, field))
if tat == nil then return 0 end
redis.call('HSET', key, field, string.format('%.6f', tat + tokens * 60 / (tpm * share)))
return 1
"""

_LEARN_LUA = """
local key, pause, rpm, tpm = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local learn, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[6])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local old = tonumber(redis.call('HGET', key, 'pause')) or 0
redis.call('HSET', key, 'pause', string.format('%.6f', math.max(old, now + pause)))
if rpm > 0 or tpm > 0 then
  if (tonumber(redis.call('HGET', key, 'luntil')) or 0) <= now then redis.call('HDEL', key, 'lrpm', 'ltpm') end
  if rpm > 0 then redis.call('HSET', key, 'lrpm', rpm) end
  if tpm > 0 then redis.call('HSET', key, 'ltpm', tpm) end
  redis.call('HSET', key, 'luntil', string.format('%.6f', now + learn))
end
redis.call('EXPIRE', key, ttl)
return 1
"""

_PAUSE_LUA = """
local now = tonumber(ARGV[1])  -- tests pass the time in (tests/core/test_limiter_equal.py)
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause')) or 0
return string.format('%.6f', math.max(0, pause - now))
"""
