"""The two Lua scripts the Redis store runs: a batch of writes, one session read.

A script runs whole, with nothing else in between, and with ``appendfsync
always`` Redis answers it only once its effects are in the append-only file
on disk: one script per batch makes the batch one command, one reply and one
Deferred, however many writes it holds.

Keys (``P`` is ``reactorapp:``, or ``reactorapp:{prefix}:``)::

    P retained            hash  topic -> packed message
    P sessions            hash  client id -> the node that holds the session
    P sub: client id      hash  topic filter -> QoS
    P q: client id        hash  seq -> packed queue entry
    P f: client id        hash  seq -> packet id and state (in flight)
    P rel: client id      set   incoming QoS 2 packet ids awaiting PUBREL

Writes to a session held by another node are skipped (it moved there: see
`reactorapp.cluster.redisstore`). The script answers with the client ids
of skipped writes an acknowledgement depends on (a queued message, an
incoming QoS 2 id), so that the batch's commit fails and the publisher
sends again, to the node that holds the session now.
"""

WRITE = b"""
local prefix, node = ARGV[1], ARGV[2]
local sessions = prefix .. 'sessions'
local owners, moved, answer = {}, {}, {}
local arity = {R=2, r=1, S=1, X=1, B=3, b=2, Q=3, F=3, D=2, P=2, p=2}
local must = {Q=true, P=true}
local function held(client)
  local owner = owners[client]
  if owner == nil then
    owner = redis.call('HGET', sessions, client)
    owners[client] = owner
  end
  return owner == node
end
local i, n = 3, #ARGV
while i <= n do
  local op = ARGV[i]
  local a, b, c = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 1 + arity[op]
  if op == 'R' then
    redis.call('HSET', prefix .. 'retained', a, b)
  elseif op == 'r' then
    redis.call('HDEL', prefix .. 'retained', a)
  elseif op == 'S' then
    redis.call('HSET', sessions, a, node)
    owners[a] = node
  elseif not held(a) then
    if must[op] and not moved[a] then
      moved[a] = true
      answer[#answer + 1] = a
    end
  elseif op == 'X' then
    redis.call('DEL', prefix .. 'sub:' .. a, prefix .. 'q:' .. a, prefix .. 'f:' .. a,
               prefix .. 'rel:' .. a)
    redis.call('HDEL', sessions, a)
    owners[a] = false
  elseif op == 'B' then
    redis.call('HSET', prefix .. 'sub:' .. a, b, c)
  elseif op == 'b' then
    redis.call('HDEL', prefix .. 'sub:' .. a, b)
  elseif op == 'Q' then
    redis.call('HSET', prefix .. 'q:' .. a, b, c)
  elseif op == 'F' then
    if redis.call('HEXISTS', prefix .. 'q:' .. a, b) == 1 then
      redis.call('HSET', prefix .. 'f:' .. a, b, c)
    end
  elseif op == 'D' then
    redis.call('HDEL', prefix .. 'q:' .. a, b)
    redis.call('HDEL', prefix .. 'f:' .. a, b)
  elseif op == 'P' then
    redis.call('SADD', prefix .. 'rel:' .. a, b)
  elseif op == 'p' then
    redis.call('SREM', prefix .. 'rel:' .. a, b)
  end
end
return answer
"""

#: ARGV: prefix, client id, the node that takes the session over ('' to
#: only read). Answers nil when there is no such session, else
#: {holder, subscriptions, queue, in flight, awaiting PUBREL}.
READ_SESSION = b"""
local prefix, client, node = ARGV[1], ARGV[2], ARGV[3]
local owner = redis.call('HGET', prefix .. 'sessions', client)
if not owner then
  return nil
end
if node ~= '' then
  redis.call('HSET', prefix .. 'sessions', client, node)
end
return {owner, redis.call('HGETALL', prefix .. 'sub:' .. client),
        redis.call('HGETALL', prefix .. 'q:' .. client),
        redis.call('HGETALL', prefix .. 'f:' .. client),
        redis.call('SMEMBERS', prefix .. 'rel:' .. client)}
"""
