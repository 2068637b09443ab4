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
    P share: client id    hash  seq -> the shared subscription a queued
                                message was taken for
    P expiry              hash  client id -> seconds a session is kept once
                                its client has gone ("inf": never; none:
                                --session-expiry)
    P will                hash  client id -> Will Delay Interval NUL packed
                                will, of a session whose will waits
    P webhook:rules       hash  rule name -> the rule as JSON (secret included)
    P webhook:version     counter, bumped when a rule changes (nodes look at it)
    P webhook:outbox:N    hash  delivery id -> rule NUL packed delivery (node N's)
    P webhook:dead:N      hash  id -> rule NUL packed dead letter (node N's)
    P webhook:pending:N:R, webhook:buried:N:R   sorted sets of those ids, by rule
    P webhook:named:N     set   rules with deliveries or dead letters on node N
    P webhook:last:N      the highest delivery id node N used

Writes to a session held by another node are skipped (it moved there: see
`reactorapp.cluster.redisstore`). A queued message for it is not lost with
them: it is added, in the same script, to the stream of the node that holds
the session now, as an entry for that session alone (fields ``c`` client
id, ``e`` packed queue entry; `reactorapp.cluster.inbox`), so what waited
for the write is placed once the batch is answered. ``T`` (client id,
entry) does the same for a message a node got for a session it does not
have in memory; if that node holds it all the same (it read the session but
its client left before the session was set up), the message joins the
session's queue in Redis, read by whoever loads the session next. The script answers with the client ids of other skipped writes an
acknowledgement depends on (a queued message for a session nobody holds,
an incoming QoS 2 id), so that the batch's commit fails and the publisher
sends again, to the node that holds the session now.
"""

WRITE = b"""
local prefix, node, streams = ARGV[1], ARGV[2], ARGV[3]
local sessions = prefix .. 'sessions'
local hooks = prefix .. 'webhook:'
local outbox, dead = hooks .. 'outbox:' .. node, hooks .. 'dead:' .. node
local function pending(rule) return hooks .. 'pending:' .. node .. ':' .. rule end
local function buried(rule) return hooks .. 'buried:' .. node .. ':' .. rule end
local owners, moved, answer = {}, {}, {}
local arity = {R=2, r=1, S=1, X=1, E=2, L=2, H=3, B=3, b=2, Q=3, F=3, D=2, P=2, p=2,
               W=2, w=1, A=3, a=1, Z=3, z=2, V=4, T=2}
local free = {R=true, r=true, S=true, W=true, w=true, A=true, a=true, Z=true, z=true, V=true}
local must = {Q=true, P=true}
local function held(client)
  local owner = owners[client]
  if owner == nil then
    owner = redis.call('HGET', sessions, client)
    owners[client] = owner
  end
  return owner == node
end
local function forward(client, entry)
  local owner = owners[client]
  if not owner then
    return false
  end
  redis.call('XADD', streams .. owner, '*', 'c', client, 'e', entry)
  return true
end
local function unqueue(id)
  local value = redis.call('HGET', outbox, id)
  if value then
    redis.call('HDEL', outbox, id)
    redis.call('ZREM', pending(string.sub(value, 1, string.find(value, '\\0', 1, true) - 1)), id)
  end
end
local function queue(rule, id, value)
  redis.call('HSET', outbox, id, value)
  redis.call('ZADD', pending(rule), id, id)
  redis.call('SADD', hooks .. 'named:' .. node, rule)
  local last = hooks .. 'last:' .. node
  if tonumber(redis.call('GET', last) or '0') < tonumber(id) then
    redis.call('SET', last, id)
  end
end
local function set_if_queued(kind, client, seq, value)
  if redis.call('HEXISTS', prefix .. 'q:' .. client, seq) == 1 then
    redis.call('HSET', prefix .. kind .. client, seq, value)
  end
end
local function set_or_clear(key, field, value)
  if value == '' then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, value)
  end
end
local function forget(key, index, count)
  local ids = redis.call('ZRANGE', index, 0, count - 1)
  if #ids > 0 then
    redis.call('HDEL', key, unpack(ids))
    redis.call('ZREM', index, unpack(ids))
  end
end
local i, n = 4, #ARGV
while i <= n do
  local op = ARGV[i]
  local a, b, c, d = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 1 + arity[op]
  if not free[op] and not held(a) then
    if (op == 'Q' and forward(a, c)) or (op == 'T' and (forward(a, b) or true)) then
      -- placed where the session is now (a 'T' for no session: it ended)
    elseif must[op] and not moved[a] then
      moved[a] = true
      answer[#answer + 1] = a
    end
  elseif op == 'R' then
    redis.call('HSET', prefix .. 'retained', a, b)
  elseif op == 'r' then
    redis.call('HDEL', prefix .. 'retained', a)
  elseif op == 'S' then
    redis.call('HSET', sessions, a, node)
    owners[a] = node
  elseif op == 'X' then
    redis.call('DEL', prefix .. 'sub:' .. a, prefix .. 'q:' .. a, prefix .. 'f:' .. a,
               prefix .. 'rel:' .. a, prefix .. 'share:' .. a)
    redis.call('HDEL', sessions, a)
    redis.call('HDEL', prefix .. 'expiry', a)
    redis.call('HDEL', prefix .. 'will', a)
    owners[a] = false
  elseif op == 'L' then
    set_or_clear(prefix .. 'will', a, b)
  elseif op == 'E' then
    set_or_clear(prefix .. 'expiry', a, b)
  elseif op == 'B' then
    redis.call('HSET', prefix .. 'sub:' .. a, b, c)
  elseif op == 'b' then
    redis.call('HDEL', prefix .. 'sub:' .. a, b)
  elseif op == 'Q' then
    redis.call('HSET', prefix .. 'q:' .. a, b, c)
  elseif op == 'F' then
    set_if_queued('f:', a, b, c)
  elseif op == 'D' then
    redis.call('HDEL', prefix .. 'q:' .. a, b)
    redis.call('HDEL', prefix .. 'f:' .. a, b)
    redis.call('HDEL', prefix .. 'share:' .. a, b)
  elseif op == 'H' then
    set_if_queued('share:', a, b, c)
  elseif op == 'P' then
    redis.call('SADD', prefix .. 'rel:' .. a, b)
  elseif op == 'p' then
    redis.call('SREM', prefix .. 'rel:' .. a, b)
  elseif op == 'W' then
    redis.call('HSET', hooks .. 'rules', a, b)
    redis.call('INCR', hooks .. 'version')
  elseif op == 'w' then
    if redis.call('HDEL', hooks .. 'rules', a) == 1 then
      redis.call('INCR', hooks .. 'version')
    end
    forget(outbox, pending(a), 0)
    forget(dead, buried(a), 0)
    redis.call('SREM', hooks .. 'named:' .. node, a)
  elseif op == 'A' then
    queue(a, b, c)
  elseif op == 'a' then
    unqueue(a)
  elseif op == 'Z' then
    unqueue(b)
    redis.call('HSET', dead, b, c)
    redis.call('ZADD', buried(a), b, b)
    redis.call('SADD', hooks .. 'named:' .. node, a)
  elseif op == 'z' then
    forget(dead, buried(a), tonumber(b))
  elseif op == 'T' then
    -- Held here but not in this node's memory (`RedisStore.forward`): queued
    -- after the rest, for whoever loads the session next.
    local top = 0
    for _, seq in ipairs(redis.call('HKEYS', prefix .. 'q:' .. a)) do
      top = math.max(top, tonumber(seq))
    end
    redis.call('HSET', prefix .. 'q:' .. a, top + 1, b)
  elseif op == 'V' then
    redis.call('HDEL', dead, a)
    redis.call('ZREM', buried(b), a)
    queue(b, c, d)
  end
end
return answer
"""

#: ARGV: prefix, client id, the node that takes the session over ('' to
#: only read). Answers nil when there is no such session, else
#: {holder, subscriptions, queue, in flight, awaiting PUBREL, expiry or nil,
#: will or nil, shared (seq -> share filter)}.
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
        redis.call('SMEMBERS', prefix .. 'rel:' .. client),
        redis.call('HGET', prefix .. 'expiry', client),
        redis.call('HGET', prefix .. 'will', client),
        redis.call('HGETALL', prefix .. 'share:' .. client)}
"""

#: ARGV: prefix, node. Answers {rules (HGETALL), the node's last delivery
#: id, {rule, outbox count, dead letter count}...}.
READ_WEBHOOKS = b"""
local hooks, node = ARGV[1] .. 'webhook:', ARGV[2]
local counts = {}
for _, rule in ipairs(redis.call('SMEMBERS', hooks .. 'named:' .. node)) do
  counts[#counts + 1] = {rule, redis.call('ZCARD', hooks .. 'pending:' .. node .. ':' .. rule),
                         redis.call('ZCARD', hooks .. 'buried:' .. node .. ':' .. rule)}
end
return {redis.call('HGETALL', hooks .. 'rules'),
        redis.call('GET', hooks .. 'last:' .. node) or '0', counts}
"""

#: ARGV: prefix, node, 'outbox' or 'dead', rule, after id, limit. Answers
#: the values of up to ``limit`` of the rule's entries after ``after id``.
READ_DELIVERIES = b"""
local hooks, node, kind, rule = ARGV[1] .. 'webhook:', ARGV[2], ARGV[3], ARGV[4]
local index = hooks .. (kind == 'outbox' and 'pending:' or 'buried:') .. node .. ':' .. rule
local ids = redis.call('ZRANGEBYSCORE', index, '(' .. ARGV[5], '+inf', 'LIMIT', 0, ARGV[6])
if #ids == 0 then
  return {}
end
return redis.call('HMGET', hooks .. kind .. ':' .. node, unpack(ids))
"""
