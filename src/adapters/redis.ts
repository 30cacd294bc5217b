import { createHash, randomBytes } from 'node:crypto'
import { Cluster, Redis, type ClusterNode, type ClusterOptions, type RedisOptions } from 'ioredis'
import type { EncodedPublish, Member } from '../protocol.js'
import { encodeDirect, messageFrame } from '../protocol.js'
import { RoomsError, storeUnavailable } from '../errors.js'
import type {
  Adapter, AdapterConfig, AdapterListener, HistoryPage, JoinResult,
  MembersQuery, RoomInfo, RoomPage, RoomQuery, StoredMessage
} from './adapter.js'
import type { ControlCommand, PublishReceipt } from './adapter.js'
import type { LinkMetrics } from '../metrics.js'
import type { RoomCountWatcher } from './adapter.js'
import { Partitions } from './partitions.js'
import { MAX_TIMER_MS } from '../options.js'
import { ShardSubscriber } from './shard-subscriber.js'
import { compareCodePoints } from '../client/order.js'

export interface RedisAdapterOptions {
  /** `redis://host:port/db`; the adapter opens its own two connections. */
  url?: string
  /** Or a client to copy the connection settings from (it is duplicated, never used directly). */
  client?: Redis
  /** Prefix of every key and channel (default `fastify-rooms:`), to share one Redis between apps. */
  keyPrefix?: string
  /** A node whose lease is this old is dead: its members are removed (default 10000 ms). */
  leaseMs?: number
  /**
   * A connection with a call unanswered this long is taken for dead (Redis
   * hung, or the network dropped it silently): it is reconnected, and its
   * calls settle as for a broken connection (default 5000 ms).
   */
  commandTimeoutMs?: number
  /**
   * A Redis Cluster instead of one Redis: some of its nodes, to learn the rest
   * from (`[{ host, port }]`). Rooms are spread over `partitions` hash tags,
   * and their messages go over sharded pub/sub (Redis 7 or later).
   */
  cluster?: ClusterNode[]
  /** ioredis `Cluster` options to add to the adapter's own (for example `natMap`, `dnsLookup`, `redisOptions.password`). */
  clusterOptions?: ClusterOptions
  /**
   * On a cluster, how many partitions (hash tags) the rooms are spread over
   * (default 64, at most 1024). More spread the load more evenly over more
   * shards; the room listing reads every partition. Every node must agree.
   */
  partitions?: number
  /**
   * On a cluster, a publish is acknowledged once this many replicas of its
   * shard have it (default 1; at most the replicas the shard has), so that a
   * failover cannot lose an acknowledged message. 0 acknowledges on the
   * master's word alone. On one Redis the default is 0; set it to wait for
   * that Redis's replicas the same way.
   */
  waitReplicas?: number
}

/**
 * Every cluster-wide operation is one call of this script, so it is atomic and
 * costs one round trip. Its declared keys are P..'rooms' (to route it) and
 * P..'guard', never written (see script()). Keys (P = prefix, R = P..'r:'..room..':'):
 *   R..'seq' offset counter, R..'epoch' history id, R..'hist' stream of frames,
 *   R..'members' user id -> member JSON, R..'counts' user id -> connections,
 *   R..'conns' connection id -> user id, R..'pseq' presence sequence (while
 *   the room has members), R..'plog' list of the room's presence changes of
 *   the last PRESENCE_LOG_MS (at most PRESENCE_LOG), `<ms>|<as published>`,
 *   P..'rooms' sorted set of rooms with
 *   members, P..'nodes' node id -> lease expiry (Redis clock, ms),
 *   P..'n:'..node..':conns' set of room.."\n"..connection of a node,
 *   P..'n:'..node..':pubs' sorted set of the node's recent publish ids
 *   (score id, member id..':'..offset), P..'history' sorted set of rooms with
 *   a stream (score: last publish, µs), P..'history:bytes' hash room -> frame
 *   bytes in its stream, '#' -> their total.
 * A room's seq, epoch and hist expire together, historyTtlMs after its last
 * publish, unless the room has members (then seq and epoch stay).
 * R..'ids' sorted set of user ids (score 0: by id), for member pages.
 * The message frames built here must stay byte-compatible with messageFrame
 * in protocol.ts (test/redis-frames.test.ts).
 * Channels: P..'c:'..room carries the messages of one publish call,
 * `b<epoch>|` then `<offset>|<frame bytes>|<frame>` for each,
 * `p<presence seq>|<count>|<j or l><user id bytes>|<user id><member JSON>`,
 * `e<frame>` (ephemeral) and `k<node>|<token>` (a node's resync marker);
 * P..'n:'..node carries
 * `d<connection>|<frame>` and `x<origin node>|<command>` (one connection's),
 * P..'all' carries `x<origin node>|<command>` (a user's, on any node),
 * P..'roomlist' carries `<count>|<room>` on every member count change.
 * On a cluster P above is a partition's base, P..'{'..tag..'}' (see
 * partitions.ts), for room keys and channels; node leases and the secret use
 * P..'{global}'; node channels are P..'{n:'..node..'}' and P..'{all}', all
 * channels sharded (SPUBLISH).
 */
const SCRIPT = `
-- p: the key base of the room's partition, or the global base for node leases.
local p = ARGV[1]
local cmd = ARGV[2]
local rooms_with_history, history_bytes = p .. 'history', p .. 'history:bytes'

local function now ()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- (global) Note that a node asked about leases (renewed or reaped), and
-- whether reaping is held. Every node renews and reaps every third of its
-- lease, so a silence of half a lease (or no note at all: a fresh Redis, or
-- one that lost it) means Redis, or every node's link to it, may have been
-- away: the nodes could not renew either, and the first reaper back would
-- take healthy ones for dead. Nobody new is marked for a lease after, while
-- they reconnect and renew. Returns the time, and till when reaping is held.
local function note_leases (lease)
  local reaper, t = p .. 'reaper', now()
  local last, hold = unpack(redis.call('HMGET', reaper, 'last', 'hold'))
  hold = tonumber(hold) or 0
  if not last or t - tonumber(last) > lease / 2 then
    hold = t + lease
    redis.call('HSET', reaper, 'hold', hold)
  end
  redis.call('HSET', reaper, 'last', t)
  return t, hold
end

-- The least recently published room other than this one, or nil.
local function oldest_other (room)
  local two = redis.call('ZRANGE', rooms_with_history, 0, 1)
  if two[1] ~= room then return two[1] end
  return two[2]
end

-- A presence change, numbered with the room's presence sequence so that a
-- joiner can drop what its member list already reflects. Nodes batch these
-- into diffs. R..'pseq' exists while the room has members; it starts from
-- Redis's clock in microseconds, so that no change of an earlier life of the
-- room can compare higher.
local function presence (room, kind, user, member, count)
  local r = p .. 'r:' .. room .. ':'
  if redis.call('EXISTS', r .. 'pseq') == 0 then
    local t = redis.call('TIME')
    redis.call('SET', r .. 'pseq', string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
  end
  local seq = redis.call('INCR', r .. 'pseq')
  local change = 'p' .. string.format('%d', seq) .. '|' .. count .. '|' .. kind .. #user .. '|' .. user .. member
  redis.call(PUB, p .. 'c:' .. room, change)
  -- Kept a while, so that a node whose subscription broke meanwhile replays
  -- what it missed (see 'state') instead of its members' lists going stale:
  -- the changes of the last PRESENCE_LOG_MS, at most PRESENCE_LOG of them,
  -- each behind the time it was made (ms), older ones dropped from the head.
  local log, ms = r .. 'plog', now()
  local n = redis.call('RPUSH', log, string.format('%d', ms) .. '|' .. change)
  while n > 1 do
    local head = redis.call('LINDEX', log, 0)
    if n <= PRESENCE_LOG and tonumber(string.sub(head, 1, string.find(head, '|', 1, true) - 1)) >= ms - PRESENCE_LOG_MS then break end
    redis.call('LPOP', log)
    n = n - 1
  end
  redis.call('PEXPIRE', log, PRESENCE_LOG_MS)
  -- The live room list: only nodes with watchers subscribe, so this costs nothing otherwise.
  redis.call(PUB, p .. 'roomlist', count .. '|' .. room)
end

-- A page of members by id, after a cursor ('' for the first): count, next cursor ('' for none), member JSONs.
local function page (r, after, limit)
  local from = '-'
  if after ~= '' then from = '(' .. after end
  local ids = redis.call('ZRANGEBYLEX', r .. 'ids', from, '+', 'LIMIT', 0, limit + 1)
  local cursor = ''
  if #ids > limit then
    cursor = ids[limit]
    ids[limit + 1] = nil
  end
  local out = { redis.call('HLEN', r .. 'members'), cursor }
  if #ids > 0 then
    for _, m in ipairs(redis.call('HMGET', r .. 'members', unpack(ids))) do out[#out + 1] = m end
  end
  return out
end

local function count_bytes (room, bytes)
  redis.call('HINCRBY', history_bytes, room, bytes)
  return redis.call('HINCRBY', history_bytes, '#', bytes)
end

-- Forget a room's stream (evicted or expired); a room with no members goes with it.
local function drop_history (room)
  local r = p .. 'r:' .. room .. ':'
  redis.call('DEL', r .. 'hist')
  redis.call('ZREM', rooms_with_history, room)
  local bytes = tonumber(redis.call('HGET', history_bytes, room) or '0')
  if bytes ~= 0 then count_bytes(room, -bytes) end
  redis.call('HDEL', history_bytes, room)
  if redis.call('EXISTS', r .. 'members') == 0 then redis.call('DEL', r .. 'seq', r .. 'epoch') end
end

-- Remove the n oldest of a stream's len entries; returns the bytes freed.
local function trim_oldest (hist, n, len)
  local freed = 0
  for _, entry in ipairs(redis.call('XRANGE', hist, '-', '+', 'COUNT', n)) do freed = freed + #entry[2][2] end
  redis.call('XTRIM', hist, 'MAXLEN', len - n)
  return freed
end

-- Append a frame to a room's stream of len entries, keeping its last size;
-- returns the new length and the bytes the stream grew by.
local function append (hist, offset, frame, size, len)
  redis.call('XADD', hist, string.format('%d', offset) .. '-0', 'f', frame)
  len = len + 1
  local added = #frame
  if len > size then
    added = added - trim_oldest(hist, len - size, len)
    len = size
  end
  return len, added
end

-- After a call's appends to a room's stream (now len entries, added bytes
-- more), hold every bound: historyTtlMs, maxHistoryRooms and maxHistoryBytes
-- across rooms (the least recently published rooms go first; a room alone
-- loses its oldest). Once per call, not per message: the bookkeeping is a
-- partition's, and every write here is one more command to run and to
-- replicate. us: the call's time in microseconds, the rooms' order of last publish.
local function bound (room, len, added, ttl, max_rooms, max_bytes, us)
  local hist = p .. 'r:' .. room .. ':hist'
  local total = count_bytes(room, added)
  redis.call('PEXPIRE', hist, ttl)
  redis.call('ZADD', rooms_with_history, us, room)
  local expired = redis.call('ZRANGEBYSCORE', rooms_with_history, '-inf', string.format('%d', us - ttl * 1000), 'LIMIT', 0, 100)
  local dropped = #expired > 0
  for _, old in ipairs(expired) do drop_history(old) end
  while redis.call('ZCARD', rooms_with_history) > max_rooms do
    drop_history(oldest_other(room))
    dropped = true
  end
  if dropped then total = tonumber(redis.call('HGET', history_bytes, '#') or '0') end
  while total > max_bytes do
    local victim = oldest_other(room)
    if victim then
      drop_history(victim)
      total = tonumber(redis.call('HGET', history_bytes, '#') or '0')
    elseif len > 1 then
      total = count_bytes(room, -trim_oldest(hist, 1, len))
      len = len - 1
    else
      break
    end
  end
  redis.call('PEXPIRE', rooms_with_history, ttl)
  redis.call('PEXPIRE', history_bytes, ttl)
end

-- A new epoch starts from nothing: leftovers of a lost one must not mix in.
local function new_epoch (room, epoch)
  local r = p .. 'r:' .. room .. ':'
  drop_history(room)
  redis.call('DEL', r .. 'seq')
  redis.call('SET', r .. 'epoch', epoch)
  return epoch
end

-- Remove one connection from a room; presence leave when it was the user's last.
local function leave (room, conn)
  local r = p .. 'r:' .. room .. ':'
  local user = redis.call('HGET', r .. 'conns', conn)
  if not user then return 0 end
  redis.call('HDEL', r .. 'conns', conn)
  if redis.call('HINCRBY', r .. 'counts', user, -1) > 0 then return 1 end
  redis.call('HDEL', r .. 'counts', user)
  local member = redis.call('HGET', r .. 'members', user)
  redis.call('HDEL', r .. 'members', user)
  redis.call('ZREM', r .. 'ids', user)
  local n = redis.call('HLEN', r .. 'members')
  presence(room, 'l', user, member, n)
  if n == 0 then redis.call('DEL', r .. 'pseq', r .. 'plog') end
  if n == 0 then
    redis.call('ZREM', p .. 'rooms', room)
    -- The offsets live exactly as long as the history that uses them.
    local left = redis.call('PTTL', r .. 'hist')
    if left > 0 then
      redis.call('PEXPIRE', r .. 'seq', left)
      redis.call('PEXPIRE', r .. 'epoch', left)
    else
      drop_history(room)
    end
  end
  return 1
end

-- Drop up to limit of the members a node has in this partition (its lease
-- expired, or it shut down); returns how many it dropped and whether the node
-- has members left here. Bounded, so that a node with many members does not
-- hold Redis for one long call: the caller calls again until none is left.
-- Its publish ids go with its last member.
local function forget (node, limit)
  local set = p .. 'n:' .. node .. ':conns'
  local taken = {}
  if limit > 0 then taken = redis.call('SPOP', set, limit) end
  for _, entry in ipairs(taken) do
    local cut = string.find(entry, '\\n', 1, true)
    leave(string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1))
  end
  if redis.call('EXISTS', set) == 1 then return #taken, true end
  redis.call('DEL', p .. 'n:' .. node .. ':pubs')
  return #taken, false
end

-- The presence changes of a room after sequence 'heard', for a node whose
-- subscription broke: {} when it missed none, false when the log no longer
-- holds all it missed (too old, too many, or another life of the room).
-- The log's sequences are consecutive, so the first one wanted is found by
-- its index: the cost is what was missed, not the log's length.
local function presence_since (r, heard)
  local last = tonumber(redis.call('GET', r .. 'pseq') or '0')
  if last == heard then return {} end
  if last < heard then return false end
  local log = r .. 'plog'
  local head = redis.call('LINDEX', log, 0)
  if not head then return false end
  local cut = string.find(head, '|', 1, true)
  local first = tonumber(string.sub(head, cut + 2, string.find(head, '|', cut + 1, true) - 1))
  if first > heard + 1 then return false end
  local out = redis.call('LRANGE', log, heard + 1 - first, -1)
  if #out ~= last - heard then return false end
  for i, entry in ipairs(out) do out[i] = string.sub(entry, string.find(entry, '|', 1, true) + 1) end
  return out
end

if cmd == 'publish' then
  -- Publishes to rooms of this partition, applied in order: node, lowest id of the node still in flight,
  -- sent before ('1'), historyTtlMs, maxHistoryRooms, maxHistoryBytes, the publishes in one string, and
  -- the first and last of their ids. The string holds each room's publishes together:
  -- <count>|<room bytes>|<room><new epoch, 8 bytes>, then count times
  -- <id>|<historySize>|<from bytes>|<data bytes>|<from JSON or nothing><data JSON>.
  -- Returns their offsets, in that order, as one string: <offset>,<offset>... What is per room (the epoch, the stream's length and bounds, its
  -- channel message) is read and written once per room; the clock and the publish ids' record once per call.
  local node, low, again, packed = ARGV[3], ARGV[4], ARGV[5], ARGV[9]
  local ttl, max_rooms, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local pubs = p .. 'n:' .. node .. ':pubs'
  local offsets, ids = {}, {}
  -- The clock, read at the call's first new publish; rooms is how many rooms of the call came before.
  local ts, us, rooms = nil, nil, 0
  local sweep = false
  -- Sent again after a cut connection: the offsets its publishes got the first time, never a second one.
  local seen = {}
  if again == '1' then
    for _, entry in ipairs(redis.call('ZRANGEBYSCORE', pubs, ARGV[10], ARGV[11])) do
      local cut = string.find(entry, ':', 1, true)
      seen[string.sub(entry, 1, cut - 1)] = tonumber(string.sub(entry, cut + 1))
    end
  end
  local at = 1
  while at <= #packed do
    local ra = string.find(packed, '|', at, true)
    local rb = string.find(packed, '|', ra + 1, true)
    local count = tonumber(string.sub(packed, at, ra - 1))
    local room_end = rb + tonumber(string.sub(packed, ra + 1, rb - 1))
    local room = string.sub(packed, rb + 1, room_end)
    local fresh = string.sub(packed, room_end + 1, room_end + 8)
    at = room_end + 9
    local r = p .. 'r:' .. room .. ':'
    local hist = r .. 'hist'
    local members = redis.call('EXISTS', r .. 'members') == 1
    local out = {}
    local epoch, heard, unheard, known = nil, nil, false, false
    -- The stream's length (read at the first append), and the bytes this room's publishes added to it.
    local len, added = nil, 0
    for _ = 1, count do
      local a = string.find(packed, '|', at, true)
      local b = string.find(packed, '|', a + 1, true)
      local c = string.find(packed, '|', b + 1, true)
      local d = string.find(packed, '|', c + 1, true)
      local id, size = string.sub(packed, at, a - 1), tonumber(string.sub(packed, a + 1, b - 1))
      local from_end = d + tonumber(string.sub(packed, b + 1, c - 1))
      local from = string.sub(packed, d + 1, from_end)
      at = from_end + tonumber(string.sub(packed, c + 1, d - 1)) + 1
      local data = string.sub(packed, from_end + 1, at - 1)
      local offset = seen[id]
      if not offset then
        -- Ids below the lowest in flight are settled: the node never sends them again (swept now and then).
        if tonumber(id) % 64 == 0 then sweep = true end
        if not ts then
          local t = redis.call('TIME')
          ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          us = tonumber(t[1]) * 1000000 + tonumber(t[2])
        end
        if not known then
          epoch = redis.call('GET', r .. 'epoch')
          known = true
        end
        offset = 1
        -- With no member to deliver to and no history to keep, nothing is written.
        if epoch or members or size > 0 then
          if not epoch then epoch = new_epoch(room, fresh) end
          offset = redis.call('INCR', r .. 'seq')
          if from ~= '' then from = ',"from":' .. from end
          local frame = '{"type":"message","room":"' .. room .. '","data":' .. data .. ',"offset":' .. string.format('%d', offset) .. ',"ts":' .. string.format('%d', ts) .. from .. '}'
          if size > 0 then
            if not len then
              len = redis.call('XLEN', hist)
              if len == 0 then
                -- A new stream, or the room's previous one expired: its bytes are no longer held.
                local stale = tonumber(redis.call('HGET', history_bytes, room) or '0')
                if stale ~= 0 then count_bytes(room, -stale) end
              end
            end
            local grew
            len, grew = append(hist, offset, frame, size, len)
            added = added + grew
          end
          if members then
            out[#out + 1] = string.format('%d', offset) .. '|' .. #frame .. '|' .. frame
            heard = epoch
          else
            unheard = true
          end
        end
        ids[#ids + 1] = id
        ids[#ids + 1] = id .. ':' .. string.format('%d', offset)
      end
      offsets[#offsets + 1] = string.format('%d', offset)
    end
    -- Before the next room's publishes, as if each room had its own call: its bounds may drop this one's history.
    -- A microsecond apart, in call order: the least recently published goes first, as with a call per room.
    if len then bound(room, len, added, ttl, max_rooms, max_bytes, string.format('%d', us + rooms)) end
    rooms = rooms + 1
    -- One message per room and call: a node reads them together and writes them to each member at once.
    if heard then redis.call(PUB, p .. 'c:' .. room, 'b' .. heard .. '|' .. table.concat(out)) end
    if unheard then
      -- Only nodes with members subscribe; a joiner in flight gets an offset past these.
      redis.call('PEXPIRE', r .. 'seq', ttl)
      redis.call('PEXPIRE', r .. 'epoch', ttl)
    end
  end
  if sweep then redis.call('ZREMRANGEBYSCORE', pubs, '-inf', '(' .. low) end
  if #ids > 0 then redis.call('ZADD', pubs, unpack(ids)) end
  -- One string, not an array of integers: the node reads it without a value per publish.
  return table.concat(offsets, ',')
elseif cmd == 'join' then
  -- room, connection, user id, member JSON, node, max members, new epoch, members page size
  local room, conn, user, member, node, max = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
  local r = p .. 'r:' .. room .. ':'
  local present = 0
  if redis.call('HEXISTS', r .. 'conns', conn) == 0 then
    local first = redis.call('HEXISTS', r .. 'counts', user) == 0
    if not first then present = 1 end
    if first and redis.call('HLEN', r .. 'members') >= max then return { 'FULL' } end
    redis.call('HSET', r .. 'conns', conn, user)
    redis.call('HINCRBY', r .. 'counts', user, 1)
    redis.call('SADD', p .. 'n:' .. node .. ':conns', room .. '\\n' .. conn)
    if first then
      redis.call('HSET', r .. 'members', user, member)
      redis.call('ZADD', r .. 'ids', 0, user)
      redis.call('ZADD', p .. 'rooms', 0, room)
      presence(room, 'j', user, member, redis.call('HLEN', r .. 'members'))
    end
  end
  local epoch = redis.call('GET', r .. 'epoch') or new_epoch(room, ARGV[9])
  -- A room with members keeps its offsets and epoch however long it stays quiet.
  redis.call('PERSIST', r .. 'epoch')
  redis.call('PERSIST', r .. 'seq')
  local out = { 'OK', tonumber(redis.call('GET', r .. 'seq') or '0'), epoch, redis.call('GET', r .. 'pseq') or '0', present }
  for _, v in ipairs(page(r, '', tonumber(ARGV[10]))) do out[#out + 1] = v end
  return out
elseif cmd == 'room' then
  -- room, after ('' for the first page), limit: false when the room has no members
  local r = p .. 'r:' .. ARGV[3] .. ':'
  if redis.call('EXISTS', r .. 'members') == 0 then return false end
  local out = { tonumber(redis.call('GET', r .. 'seq') or '0'), redis.call('GET', r .. 'epoch') or '' }
  for _, v in ipairs(page(r, ARGV[4], tonumber(ARGV[5]))) do out[#out + 1] = v end
  return out
elseif cmd == 'leave' then
  -- room, connection, node
  redis.call('SREM', p .. 'n:' .. ARGV[5] .. ':conns', ARGV[3] .. '\\n' .. ARGV[4])
  return leave(ARGV[3], ARGV[4])
elseif cmd == 'history' then
  -- room, first offset wanted, most messages: nil when the room has no epoch
  local r = p .. 'r:' .. ARGV[3] .. ':'
  local epoch = redis.call('GET', r .. 'epoch')
  if not epoch then return false end
  local seq = tonumber(redis.call('GET', r .. 'seq') or '0')
  local entries = {}
  if tonumber(ARGV[5]) > 0 and tonumber(ARGV[4]) <= seq then
    entries = redis.call('XRANGE', r .. 'hist', ARGV[4] .. '-0', '+', 'COUNT', ARGV[5])
  end
  return { epoch, seq, entries }
elseif cmd == 'state' then
  -- new epoch, then room, epoch and offset delivered by the asking node, the
  -- SHA-1 of the frame it delivered at that offset ('' if none) and the last
  -- presence sequence it heard ('' if none to check), for each room: its
  -- epoch ('' for none), its last offset and the presence changes the node
  -- missed (see presence_since; {} when not checked). A room whose offsets
  -- went back behind what was delivered in the same epoch, or that holds
  -- another message at the offset delivered, lost writes (a failover to a
  -- replica that had not got them; new writes since reuse their offsets): it
  -- starts a new epoch, so that members learn of the gap instead of being
  -- given other messages under offsets they saw.
  local out = {}
  for i = 4, #ARGV, 5 do
    local room = ARGV[i]
    local r = p .. 'r:' .. room .. ':'
    local epoch = redis.call('GET', r .. 'epoch')
    local seq = tonumber(redis.call('GET', r .. 'seq') or '0')
    local lost = false
    if epoch and epoch == ARGV[i + 1] then
      lost = seq < tonumber(ARGV[i + 2])
      if not lost and ARGV[i + 3] ~= '' then
        local entry = redis.call('XRANGE', r .. 'hist', ARGV[i + 2] .. '-0', ARGV[i + 2] .. '-0')[1]
        lost = entry ~= nil and redis.sha1hex(entry[2][2]) ~= ARGV[i + 3]
      end
    end
    if lost then
      epoch = new_epoch(room, ARGV[3])
      seq = 0
      -- With no member left to hold it (the asking node's were reaped, or the
      -- failover lost their joins too), an epoch without history would stay
      -- for good: no leave comes to expire it. The node still learns of the
      -- new epoch; the next join starts one of its own.
      if redis.call('EXISTS', r .. 'members') == 0 then redis.call('DEL', r .. 'epoch') end
    end
    out[#out + 1] = epoch or ''
    out[#out + 1] = seq
    if ARGV[i + 4] == '' then out[#out + 1] = {} else out[#out + 1] = presence_since(r, tonumber(ARGV[i + 4])) end
  end
  return out
elseif cmd == 'renew' then
  -- (global) node, lease ms, registered before ('1'), the resume-token secret
  -- the node signs with ('' until it read one): a node whose lease was
  -- reaped must not come back silently, nor register again before the reaping
  -- is done (a score of -1 marks a node being forgotten).
  -- The secret lives while any node runs, and a week after. A Redis that lost
  -- it (restarted empty) gets back the one the running nodes sign with: else
  -- the next node to start would make another, and a guest moved between the
  -- two by a load balancer would become someone else.
  local secret = p .. 'secret'
  if ARGV[6] == '' or not redis.call('SET', secret, ARGV[6], 'NX', 'PX', 604800000) then redis.call('PEXPIRE', secret, 604800000) end
  local score = redis.call('ZSCORE', p .. 'nodes', ARGV[3])
  if ARGV[5] == '1' and (not score or tonumber(score) < 0) then return 'REAPED' end
  if score and tonumber(score) < 0 then return 'WAIT' end
  local t = note_leases(tonumber(ARGV[4]))
  redis.call('ZADD', p .. 'nodes', t + tonumber(ARGV[4]), ARGV[3])
  return 'OK'
elseif cmd == 'dead' then
  -- (global) lease ms: mark every node whose lease expired as being
  -- forgotten, and name them (with those a reaper before did not finish):
  -- each partition forgets them, then 'unregister'. None is marked while
  -- reaping is held after an outage (see note_leases).
  local t, hold = note_leases(tonumber(ARGV[3]))
  if t < hold then return redis.call('ZRANGEBYSCORE', p .. 'nodes', '-inf', '(0') end
  local dead = redis.call('ZRANGEBYSCORE', p .. 'nodes', '-inf', t)
  for _, node in ipairs(dead) do redis.call('ZADD', p .. 'nodes', -1, node) end
  return dead
elseif cmd == 'retire' then
  -- (global) node: a node shutting down cleanly is forgotten like a dead one
  redis.call('ZADD', p .. 'nodes', -1, ARGV[3])
  return 1
elseif cmd == 'forget' then
  -- limit, nodes...: drop at most limit of their members in this partition;
  -- returns the nodes that still have members here (call again for those).
  local limit, left = tonumber(ARGV[3]), {}
  for i = 4, #ARGV do
    local n, more = forget(ARGV[i], limit)
    limit = limit - n
    if more then left[#left + 1] = ARGV[i] end
  end
  return left
elseif cmd == 'unregister' then
  -- (global) nodes... forgotten by every partition
  for i = 3, #ARGV do
    local score = redis.call('ZSCORE', p .. 'nodes', ARGV[i])
    if score and tonumber(score) < 0 then redis.call('ZREM', p .. 'nodes', ARGV[i]) end
  end
  if redis.call('EXISTS', p .. 'nodes') == 0 then redis.call('DEL', p .. 'reaper') end
  return 1
end
return redis.error_reply('unknown command ' .. cmd)
`

type Client = (Redis | Cluster) & {
  /** The script: KEYS[1] routes it to the partition's shard, KEYS[2] guards it (see script()), ARGV[1] is the partition's key base. */
  rooms: (key: string, guard: string, base: string, cmd: string, ...args: Array<string | number | Buffer>) => Promise<unknown>
}

/**
 * How long a publish cut off in flight waits for its connection to come back
 * and be sent again (it is applied once whatever the number of sends). Past
 * it the publish answers INTERNAL: it may or may not have been applied.
 */
const RESEND_WITHIN_MS = 2_000

/**
 * On a cluster, a call refused before it went out (its master's connection
 * was down) or refused CLUSTERDOWN is sent again this often, within
 * RESEND_WITHIN_MS, the slots read again first: what ioredis'
 * retryDelayOnFailover and retryDelayOnClusterDown did, which are off (see Link).
 */
const RETRY_MS = 100

/**
 * A room's presence changes of the last PRESENCE_LOG_MS, at most PRESENCE_LOG
 * of them, stay in Redis: a node whose subscription broke replays those its
 * members missed; when they are no longer all there, its members rejoin (1012).
 */
const PRESENCE_LOG = 1024
const PRESENCE_LOG_MS = 60_000

/**
 * At most this many memberships of dead nodes are dropped per 'forget' script
 * call (per partition). Each costs some 30-80 µs of Redis time (the leave, its
 * presence change and their publishes), so a call holds Redis for some 15-50
 * ms, however many members the dead node had, and other nodes' calls run
 * between the reaper's. Smaller chunks only add round trips: the reaping as a
 * whole costs Redis the same time.
 */
export const FORGET_CHUNK = 500

/** The key of one Redis (not a cluster) among the masters whose replicas are counted. */
const ONE_REDIS = 'redis'

/** How long a master's count of online replicas is used before ROLE is asked again. */
const REPLICAS_FRESH_MS = 1_000

const unavailable = storeUnavailable
/**
 * A publish whose outcome is unknown. Not UNAVAILABLE: the contract gives that
 * code to "nothing was published", which a client may retry blindly; this one
 * may have been stored and delivered, so it is INTERNAL with a sentence that
 * says what to do.
 */
const MAYBE_PUBLISHED = 'The message store became unreachable while publishing: the message may or may not have been published. Check the room\'s history before publishing it again.'
const maybePublished = (): RoomsError => new RoomsError('INTERNAL', MAYBE_PUBLISHED)
/**
 * A publish call that its Redis did not serve: unreachable, refusing for now
 * (TRYAGAIN past ioredis' retries, CLUSTERDOWN past the Link's, LOADING, READONLY...: both
 * UNAVAILABLE), or cut off in flight (may or may not). Not one that Redis
 * answered with an error of the script's (INTERNAL).
 */
const notServed = (err: unknown): boolean => err instanceof RoomsError && (err.code === 'UNAVAILABLE' || err.message === MAYBE_PUBLISHED)
/** The same for a message that is not stored (ephemeral, `direct`): there is no history to check. */
const maybeDelivered = (): RoomsError => new RoomsError('INTERNAL', 'The message store became unreachable while sending: the message may or may not have been delivered.')
/**
 * A ROLE or WAIT that Redis refused (a master demoted in a failover refuses
 * WAIT): the publishes it was for are unconfirmed, which is expected in a
 * failover, so it is not logged as Redis refusing a command.
 */
const unconfirmed = (): never => { throw maybePublished() }
/**
 * The offsets of a publish call's reply, `<offset>,<offset>...`, read in one
 * pass; undefined unless it is exactly `count` of them, each of digits.
 */
function offsetsOf (reply: unknown, count: number): number[] | undefined {
  if (typeof reply !== 'string') return undefined
  const offsets: number[] = []
  for (let at = 0; ; at++) {
    const start = at
    let offset = 0
    for (let c = reply.charCodeAt(at); c >= 48 && c <= 57; c = reply.charCodeAt(++at)) offset = offset * 10 + c - 48
    if (at === start) return undefined
    offsets.push(offset)
    if (at === reply.length) return offsets.length === count ? offsets : undefined
    if (reply.charCodeAt(at) !== 44) return undefined
  }
}

/**
 * An ioredis error as the log gets it: its command's arguments hold users'
 * messages (packed bytes a logger would write out number by number), so
 * only their sizes are kept.
 */
function withoutArguments (err: unknown): unknown {
  const command = (err as { command?: { name?: unknown, args?: unknown } } | null)?.command
  if (!(err instanceof Error) || command === undefined || !Array.isArray(command.args)) return err
  const args = command.args.map((arg: unknown) => Buffer.isBuffer(arg) ? `<${arg.length} bytes>` : typeof arg === 'string' && arg.length > 100 ? `<${arg.length} characters>` : arg)
  return { type: err.name, message: err.message, stack: err.stack, command: { name: command.name, args } }
}

const internal = (): RoomsError => new RoomsError('INTERNAL', 'The server failed to handle this request; it has been logged. Try again later.')

/** One room's publishes in a Batch. */
interface RoomBatch {
  /**
   * The publishes as the script reads them, `<id>|<historySize>|<from bytes>|<data bytes>|<from><data>`
   * each, in UTF-8: the first `size` bytes. Bytes, not a string, so that the
   * data held until the call is answered (to send it again after a cut) is
   * outside the JavaScript heap: each scavenge copies what lives, and a call's
   * publishes live for a round trip.
   */
  packed: Buffer
  size: number
  /** Each publish's receipt, answered with the call. */
  receipts: PublishReceipt[]
}

/** A partition's publishes not sent yet, made in this turn of the event loop (on a cluster, since its call in flight went out): one script call. */
interface Batch {
  /** Its first publish's id, the lowest of its ids (ids only grow). */
  firstId: number
  /** Its last publish's id, the highest. */
  lastId: number
  /** Each room's publishes, in the order the rooms got their first: the script applies them room by room. */
  rooms: Map<string, RoomBatch>
  /** Publishes in it, over all rooms. */
  count: number
  /** Bytes of the packed publishes, over all rooms. */
  bytes: number
  /** The call was answered or given up on: its ids are never sent again. */
  settled: boolean
}

/** Publishes to one partition in one script call, at most; past it (or MAX_BATCH_BYTES of data) a call goes at once. */
const MAX_BATCH = 256
const MAX_BATCH_BYTES = 1024 * 1024

/** A room as the 'state' call reads it: its epoch, last offset, and the presence changes the node missed (null: no longer all kept). */
type RoomState = [epoch: string, offset: number, missed: string[] | null]

/** A room channel this node is subscribed to. */
interface Subscription {
  /** Local joins holding it (joined, or joining). */
  holders: number
  /** Local members joined (answered), of `holders`. */
  joined: number
  /** Resolves once Redis confirmed the subscription. */
  ready: Promise<unknown>
  /** The room's epoch as this node's members know it; undefined until a join tells. */
  epoch: string | undefined
  /** Highest offset passed to the listener. */
  offset: number
  /** The frame of the message at `offset`, when this node delivered it: a resync checks that the offset still holds it. */
  frame: Buffer | string | undefined
  /**
   * Messages held back, in arrival order: while the epoch is unknown (they
   * may belong to an older one), and while a gap left by a broken subscriber
   * connection is being filled from history.
   */
  held: Array<{ offset: number, epoch: string, frame: Buffer }> | undefined
  /** The subscriber connection broke since this room's last message: resync before delivering. */
  gap: boolean
  /** The last presence sequence heard on the subscription (0: none yet); a resync replays the changes after it. */
  presenceSeq: number
  /** Like `gap`, for presence: set by a break, cleared once the resync replayed what was missed. */
  presenceGap: boolean
  /**
   * Presence changes heard during a gap after its resync asked Redis for the
   * room's state, in arrival order: they follow the replayed ones. Those
   * heard before it asked are in the replay, so they are not kept (undefined).
   */
  heldPresence: Buffer[] | undefined
  /** On a cluster: `breakSeq` at this room's last subscription break (0: none), so a join or a fill that overlapped one can tell. */
  brokeAt: number
  /** On a cluster: broken and not restored yet. Its shard is away: joins fail, and a resync waits for the restore. */
  restoring: boolean
}

interface LocalMember {
  room: string
  connectionId: string
  member: Member
}

/**
 * Several app instances act as one through Redis: offsets, history, presence
 * and room counts live there; each node subscribes to the rooms it has
 * members in and fans out locally. Switch to it with one option:
 * `adapter: redisAdapter({ url })`.
 */
export class RedisAdapter implements Adapter {
  /** Publishes go out on one connection, in call order, and a resend after a break keeps that order (see Link). */
  readonly orderedPublishes = true
  private readonly options: RedisAdapterOptions
  private readonly prefix: string
  private readonly leaseMs: number
  private readonly commandTimeoutMs: number
  private readonly waitReplicas: number
  /** The history budgets of one partition: each holds its share (all of them on one Redis), so no call spans two shards. */
  private historyRooms = 0
  private historyBytes = 0
  /** Where each room's keys live. */
  private readonly partitions: Partitions
  /** The key base of the node leases and the shared secret (one slot on a cluster). */
  private readonly global: string
  private redis!: Client
  /** On one Redis: the subscriber connection, for every channel. */
  private sub: Redis | undefined
  /** On a cluster: every channel, over sharded pub/sub, one connection per shard master. */
  private shards: ShardSubscriber | undefined
  /** The command connection and the subscriber connection, whose calls always settle. */
  private cmd!: Link
  private subLink: Link | undefined
  private listener!: AdapterListener
  private config!: AdapterConfig
  private readonly subscriptions = new Map<string, Subscription>()
  /** Leaves that Redis refused (away, or refusing writes), done at the upkeep rounds till it takes them. */
  private readonly pendingLeaves = new Map<string, { room: string, connectionId: string }>()
  /** When finishLeaves last logged the refusals of owed leaves. */
  private owedLoggedAt = 0
  /** Local memberships, to re-register them after an outage. */
  private readonly local = new Map<string, LocalMember>()
  /**
   * Batches not yet settled, in the order they were made, so the first one
   * holds the lowest publish id not settled: the script forgets ids below it.
   */
  private readonly unsettled: Batch[] = []
  /**
   * Publishes not sent yet, by the key base of their partition: this turn's
   * (see publish), and on a cluster also those made while the partition's
   * call is in flight and until the end of the turn it is answered in (see sendBatch).
   */
  private readonly batches = new Map<string, Batch>()
  /**
   * On a cluster: the partitions with a publish call in flight, and for each
   * its full batches made since, waiting their turn, oldest first.
   */
  private readonly publishing = new Map<string, Batch[]>()
  /** An endTurn is due at the end of this turn of the event loop (publishes to send, WAITs owed). */
  private turnEndScheduled = false
  private lastPublishId = 0
  private timers: NodeJS.Timeout[] = []
  private registered = false
  private running = false
  private closed = false
  /** A connection broke and the node has not resynchronised yet: joins wait or fail. */
  private down = false
  /** The subscriber connection broke since the last resync: rooms are resubscribed. */
  private subscriberLost = false
  /** How many times the subscriber connection broke, to notice a break during a join. */
  private subscriberBreaks = 0
  private recovering: Promise<void> | undefined
  /**
   * On a cluster, one shard's broken subscription concerns that shard's
   * rooms only: they are resynced on their own once restored, while joins
   * and publishes go on everywhere else. Bumped at each room break.
   */
  private breakSeq = 0
  /** Rooms restored since their break, to resync. */
  private readonly resyncDue = new Set<string>()
  /** Rooms in a resync of their own, and those resyncs: a room is never in two at once (each fill would deliver its page). */
  private readonly resyncing = new Set<string>()
  private readonly resyncs = new Set<Promise<void>>()
  /** The live room list's watcher, while any connection of this node subscribes to it. */
  private roomWatcher: RoomCountWatcher | undefined
  private renewing: Promise<void> | undefined
  /**
   * The resume-token secret as this node read it (the plugin reads it once,
   * at start): each lease renewal puts it back in a Redis that lost it.
   */
  private signing: string | undefined
  /** Markers this node published to its own room channels, by token: see heard(). */
  private readonly markers = new Map<string, () => void>()
  private markerSeq = 0
  /** Online replicas of each master (`host:port`) lately, for the WAIT after a publish. */
  private readonly replicaCounts = new Map<string, { count: number, until: number }>()
  /** ROLE asked of a master (`host:port`) and not answered yet. */
  private readonly roles = new Map<string, Promise<number>>()
  /** Publish calls answered by a master (`host:port`) this turn, for its next WAIT. */
  private readonly waits = new Map<string, Array<{ resolve: () => void, reject: (err: Error) => void }>>()

  constructor (options: RedisAdapterOptions) {
    if (options.url === undefined && options.client === undefined && options.cluster === undefined) throw new TypeError('redisAdapter needs a url, a client or cluster nodes.')
    const { partitions = 64 } = options
    if (options.cluster !== undefined) wholeNumber(partitions, 'partitions', 1, 1024)
    this.options = options
    this.prefix = options.keyPrefix ?? 'fastify-rooms:'
    // A brace in the prefix would be taken for the hash tag, putting every key in one slot.
    if (options.cluster !== undefined && /[{}]/.test(this.prefix)) throw new TypeError('redisAdapter: on a cluster, keyPrefix must not contain { or }.')
    this.partitions = new Partitions(this.prefix, options.cluster === undefined ? undefined : partitions)
    this.global = options.cluster === undefined ? this.prefix : `${this.prefix}{global}`
    this.leaseMs = wholeNumber(options.leaseMs ?? 10_000, 'leaseMs', 30, MAX_TIMER_MS)
    this.commandTimeoutMs = wholeNumber(options.commandTimeoutMs ?? 5_000, 'commandTimeoutMs', 1, MAX_TIMER_MS)
    this.waitReplicas = wholeNumber(options.waitReplicas ?? (options.cluster === undefined ? 0 : 1), 'waitReplicas', 0, 1_000)
  }

  async start (listener: AdapterListener, config: AdapterConfig): Promise<void> {
    if (this.listener !== undefined) throw new Error('This adapter is already in use: create one adapter per plugin registration.')
    this.listener = listener
    this.config = config
    const shares = this.partitions.bases.length
    this.historyRooms = Math.max(1, Math.floor(config.maxHistoryRooms / shares))
    this.historyBytes = Math.floor(config.maxHistoryBytes / shares)
    const name = `fastify-rooms:${config.nodeId}`
    // Fail fast while Redis is away instead of queueing, and never let ioredis
    // replay commands or subscriptions after a reconnect: the Links settle
    // every call, and recover() restores the subscriptions this node needs.
    const settings: RedisOptions = {
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      autoResubscribe: false,
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(50 * times, 1000),
      connectionName: `${name}:cmd`
    }
    const { cluster } = this.options
    // Room messages go over sharded pub/sub on a cluster: only the shard that owns the room carries them.
    const lua = `local PUB, PRESENCE_LOG, PRESENCE_LOG_MS = '${cluster === undefined ? 'PUBLISH' : 'SPUBLISH'}', ${PRESENCE_LOG}, ${PRESENCE_LOG_MS}\n${SCRIPT}`
    if (cluster === undefined) {
      const redis = this.options.client !== undefined ? this.options.client.duplicate(settings) : new Redis(this.options.url as string, settings)
      this.redis = redis as Client
      this.sub = redis.duplicate({ ...settings, connectionName: `${name}:sub` })
    } else {
      const { retryStrategy, ...node } = settings
      const redis = new Cluster(cluster, {
        ...this.options.clusterOptions,
        enableOfflineQueue: false,
        // ioredis would send a call cut off by a closed master connection again, after the Link settled it: a join
        // the node already undid would run. The Link resends what is safe to send again (see Link.failedOnCluster).
        retryDelayOnFailover: 0,
        // Nor a call Redis refused with CLUSTERDOWN: ioredis holds it for a slot read from a random node, and a read
        // sent to a frozen one waits slotsRefreshTimeout, so a call would look unanswered while every connection
        // answers, and the Link would break them all (see Link.probe). The Link sends it again instead (clusterDown).
        retryDelayOnClusterDown: 0,
        // A node connection that reconnected by itself would drop the calls written on it without settling them.
        clusterNodeRetryStrategy: undefined,
        // Replicas lag: history and offsets are read where they are written.
        scaleReads: 'master',
        clusterRetryStrategy: retryStrategy,
        redisOptions: { ...this.options.clusterOptions?.redisOptions, ...node, connectionName: `${name}:cmd` }
      })
      this.redis = redis as Client
      this.shards = new ShardSubscriber(redis, {
        message: (channel, message) => this.onMessage(channel, message),
        broken: (channels) => this.subscriberBroke(channels),
        restored: (channels) => this.subscriberRestored(channels)
      }, { timeoutMs: this.commandTimeoutMs, log: config.log, connectionName: `${name}:shard` })
    }
    this.redis.defineCommand('rooms', { numberOfKeys: 2, lua })
    // Every retry emits an error: debug only; a lost or restored link is one warn line each.
    this.redis.on('error', (err: Error) => config.log.debug({ err, nodeId: config.nodeId }, 'fastify-rooms: redis connection error'))
    const fail = (err: unknown, what: string): Error => this.failure(err, what)
    // On a cluster the command link does not hold publishes for the connection to come back: it resends them by itself (see Link).
    this.cmd = new Link(this.redis, this.commandTimeoutMs, fail, () => this.linkLost(), () => this.maybeRecover(), cluster === undefined, config.metrics?.redisLink('command'), (node) => {
      config.log.warn({ nodeId: config.nodeId, node }, 'fastify-rooms: a Redis Cluster node stopped answering; its calls settle and its connection is made again')
    })
    const sub = this.sub
    if (sub !== undefined) {
      sub.on('error', (err: Error) => config.log.debug({ err, nodeId: config.nodeId }, 'fastify-rooms: redis subscriber error'))
      this.subLink = new Link(sub, this.commandTimeoutMs, fail, () => this.subscriberBroke(), () => this.maybeRecover(), false, config.metrics?.redisLink('subscriber'))
      sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel.toString(), message))
    }
    await Promise.all([ready(this.redis), sub === undefined ? undefined : ready(sub)])
    await this.listen(this.nodeChannels())
    await this.renew()
    this.running = true
    const every = (ms: number, fn: () => Promise<unknown>): void => {
      const timer = setInterval(() => { fn().catch((err: unknown) => config.log.debug({ err, nodeId: config.nodeId }, 'fastify-rooms: redis upkeep failed')) }, ms)
      timer.unref()
      this.timers.push(timer)
    }
    every(Math.max(this.leaseMs / 3, 10), async () => {
      this.maybeRecover()
      // A room resync that failed is tried again here, not at once: its shard may still be failing over.
      this.maybeResyncRooms()
      // A subscriber connection dropped silently carries no call to notice it by: ask it something.
      // (The shard subscriber checks its own connections.)
      // A leave refused with the link up (its slot was migrating, its shard failing over) is not left for the next outage.
      await Promise.all([this.renew(), sub === undefined ? undefined : this.subLink?.call('ping', async () => await sub.ping()), this.down ? undefined : this.finishLeaves()])
    })
    // As often as leases are renewed: a silence of the reapers longer than that tells of an outage (see note_leases).
    every(Math.max(this.leaseMs / 3, 10), async () => await this.reap())
  }

  /**
   * Forget the nodes whose lease expired: marked first (a marked node that
   * comes back learns it was reaped, and cannot register again until this is
   * done), then each partition drops their members, then they are unlisted.
   * A reaper that stops half way leaves the marks: the next round finishes.
   */
  private async reap (): Promise<void> {
    const dead = await this.globalCall('dead', this.leaseMs) as string[]
    if (dead.length > 0) await this.forgetNodes(dead)
  }

  /**
   * Each partition drops the nodes' members FORGET_CHUNK at a time, one
   * script call per chunk, until none is left; then the nodes are unlisted.
   * A call that removed every member of a node at once would hold Redis (and
   * every other instance's publishes) for as long as the node had members.
   */
  private async forgetNodes (nodes: string[]): Promise<void> {
    await Promise.all(this.partitions.bases.map(async (base) => {
      let left = nodes
      while (left.length > 0) left = await this.baseCall(base, 'forget', FORGET_CHUNK, ...left) as string[]
    }))
    await this.globalCall('unregister', ...nodes)
  }

  async close (): Promise<void> {
    this.closed = true
    for (const timer of this.timers) clearInterval(timer)
    await this.globalCall('retire', this.config.nodeId).then(async () => await this.forgetNodes([this.config.nodeId])).catch(() => {})
    this.shards?.close()
    this.cmd.close()
    this.subLink?.close()
    this.redis.disconnect()
    this.sub?.disconnect()
  }

  /**
   * Publishes wait for the end of this turn of the event loop, then each
   * partition's go to Redis in one script call (so one call on one Redis),
   * and all of them in one write: the messages a room got together reach
   * every node in one pub/sub message. On a cluster a partition's call waits
   * until the one before it is answered (see sendBatch).
   */
  publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    // No closure of its own: `capture` hands over the promise's resolvers.
    const promise = new Promise<number | undefined>(capture)
    this.take(room, message, { published: captured.resolve, failed: captured.reject })
    return promise
  }

  /** `publish`, unless a subclass overrides `publish`: then that, so that it still sees every publish. */
  publishTo (room: string, message: EncodedPublish, receipt: PublishReceipt): void {
    if (this.publish === RedisAdapter.prototype.publish) {
      this.take(room, message, receipt)
    } else {
      this.answerWhen(this.publish(room, message), receipt)
    }
  }

  /** Refused while Redis is unreachable; an ephemeral one is sent at once, any other joins its partition's next call. */
  private take (room: string, message: EncodedPublish, receipt: PublishReceipt): void {
    if (!this.cmd.ready) {
      this.answer(receipt, undefined, unavailable())
    } else if (message.ephemeral === true) {
      this.answerWhen(this.publishEphemeral(room, message), receipt)
    } else {
      this.enqueue(room, message, receipt)
    }
  }

  /**
   * Not stored, not numbered: straight to the nodes with members, with this
   * node's clock. After the room's publishes before it on one Redis; on a
   * cluster those may still wait for their partition's call in flight (see
   * sendBatch), and it does not: ephemeral messages are not ordered with stored ones.
   */
  private async publishEphemeral (room: string, message: EncodedPublish): Promise<undefined> {
    this.sendBatch(this.partitions.base(room))
    const frame = messageFrame(room, message, undefined, Date.now())
    await this.send('publish', this.roomChannel(room), 'e' + frame, maybeDelivered)
    return undefined
  }

  /** Add a publish to its partition's call of this turn; its receipt gets its offset once the call is answered. */
  private enqueue (room: string, message: EncodedPublish, receipt: PublishReceipt): void {
    // A message larger than the whole history budget is delivered but not kept, as on the memory adapter.
    // Past 2^53 a history size means "unbounded" anyway; bounded so that its digits fit where they are written.
    const historySize = fits(room, message, this.historyBytes) ? Math.min(this.config.historySize, Number.MAX_SAFE_INTEGER) : 0
    const id = ++this.lastPublishId
    const base = this.partitions.base(room)
    let batch = this.batches.get(base)
    if (batch === undefined) {
      batch = { firstId: id, lastId: id, rooms: new Map(), count: 0, bytes: 0, settled: false }
      this.batches.set(base, batch)
      this.unsettled.push(batch)
      this.scheduleTurnEnd()
    }
    const from = message.from ?? ''
    const fromBytes = from === '' ? 0 : Buffer.byteLength(from)
    const dataBytes = Buffer.byteLength(message.data)
    // Four numbers of at most 16 digits, and their bars.
    const bytes = 4 * 17 + fromBytes + dataBytes
    let group = batch.rooms.get(room)
    if (group === undefined) {
      // Most rooms get one publish a turn: room for it (or a few small ones), grown by doubling when more come.
      group = { packed: Buffer.allocUnsafe(Math.max(1024, bytes)), size: 0, receipts: [] }
      batch.rooms.set(room, group)
    } else if (group.size + bytes > group.packed.length) {
      const grown = Buffer.allocUnsafe(Math.max(2 * group.packed.length, group.size + bytes))
      group.packed.copy(grown, 0, 0, group.size)
      group.packed = grown
    }
    const packed = group.packed
    let at = group.size
    at = writeDigits(packed, at, id)
    packed[at++] = BAR
    at = writeDigits(packed, at, historySize)
    packed[at++] = BAR
    at = writeDigits(packed, at, fromBytes)
    packed[at++] = BAR
    at = writeDigits(packed, at, dataBytes)
    packed[at++] = BAR
    if (fromBytes > 0) at += packed.write(from, at, fromBytes)
    at += packed.write(message.data, at, dataBytes)
    batch.bytes += at - group.size
    group.size = at
    batch.lastId = id
    batch.count++
    group.receipts.push(receipt)
    if (batch.count >= MAX_BATCH || batch.bytes >= MAX_BATCH_BYTES) this.sendBatch(base)
  }

  /** Have endTurn run once at the end of this turn, however many publishes and replies ask for it. */
  private scheduleTurnEnd (): void {
    if (this.turnEndScheduled) return
    this.turnEndScheduled = true
    setImmediate(() => this.endTurn())
  }

  /**
   * Send every partition's publishes of this turn, in the order the
   * partitions got their first, then the WAITs owed for the publish calls
   * answered this turn, each master's in one write: a shard reads the
   * turn's calls and its WAIT in one read, not one per call.
   */
  private endTurn (): void {
    this.turnEndScheduled = false
    if (this.batches.size === 0 && this.waits.size === 0) return
    const streams = this.cmd.ready ? this.streams() : []
    for (const stream of streams) stream.cork()
    try {
      try {
        for (const base of [...this.batches.keys()]) this.sendBatch(base)
      } finally {
        // After the calls, not before: a WAIT blocks its connection until the replicas answer.
        const owed = [...this.waits]
        this.waits.clear()
        for (const [owner, group] of owed) {
          this.waitFor(owner).then(() => { for (const w of group) w.resolve() }, (err: Error) => { for (const w of group) w.reject(err) })
        }
      }
    } finally {
      for (const stream of streams) stream.uncork()
    }
  }

  /** The sockets of the command connection: one Redis's, or every master's of a cluster. */
  private streams (): Array<{ cork: () => void, uncork: () => void }> {
    const clients = this.shards === undefined ? [this.redis as Redis] : (this.redis as Cluster).nodes('master')
    const out: Array<{ cork: () => void, uncork: () => void }> = []
    for (const client of clients) if (typeof client.stream?.cork === 'function') out.push(client.stream)
    return out
  }

  /**
   * Send a partition's publishes not sent yet, as one call that applies them
   * in order, room by room, and settles them together: its rooms share a hash
   * slot, so the call is atomic on one shard.
   */
  private sendBatch (base: string): void {
    const batch = this.batches.get(base)
    if (batch === undefined) return
    if (this.shards !== undefined) {
      // One call in flight per partition, the next one sent once it is answered or has failed. A call Redis
      // refused for now is sent again later (TRYAGAIN while the slot migrates, by ioredis by way of a random
      // master; CLUSTERDOWN, by the Link): a later call of the partition would overtake it, and a room's offsets
      // would not follow its frames. Meanwhile the publishes gather in one batch (and full ones wait their turn).
      const waiting = this.publishing.get(base)
      if (waiting !== undefined) {
        if (batch.count >= MAX_BATCH || batch.bytes >= MAX_BATCH_BYTES) {
          this.batches.delete(base)
          waiting.push(batch)
        }
        return
      }
      this.publishing.set(base, [])
    }
    this.batches.delete(base)
    this.sendNow(base, batch)
  }

  /** On a cluster: the partition's call was answered (or failed), so its next goes, if any. */
  private sendNext (base: string): void {
    if (this.closed) this.refuseWaiting(base)
    const full = this.publishing.get(base)?.shift()
    if (full !== undefined) {
      this.sendNow(base, full)
      return
    }
    this.publishing.delete(base)
    // The open one at the end of this turn: with the publishes made until then, in one write with the other calls.
    if (this.batches.has(base)) this.scheduleTurnEnd()
  }

  /** On a cluster: refuse the partition's publishes waiting for its call in flight. None went out: UNAVAILABLE. */
  private refuseWaiting (base: string): void {
    const waiting = this.publishing.get(base)?.splice(0) ?? []
    const open = this.batches.get(base)
    if (open !== undefined) {
      this.batches.delete(base)
      waiting.push(open)
    }
    for (const batch of waiting) {
      this.settle(batch)
      this.fail(batch, unavailable())
    }
  }

  /** Send a batch of a partition as one script call, and answer its publishes with the reply. */
  private sendNow (base: string, batch: Batch): void {
    const { historyTtlMs, nodeId } = this.config
    // Each room's publishes behind `<count>|<room bytes>|<room><epoch>`, its epoch if the call starts one: a fresh one per room.
    let size = 0
    for (const [room, group] of batch.rooms) size += 2 * 17 + 3 * room.length + EPOCH_CHARS + group.size
    const packed = Buffer.allocUnsafe(size)
    let at = 0
    for (const [room, group] of batch.rooms) {
      at = writeDigits(packed, at, group.receipts.length)
      packed[at++] = BAR
      const roomBytes = Buffer.byteLength(room)
      at = writeDigits(packed, at, roomBytes)
      packed[at++] = BAR
      at += packed.write(room, at, roomBytes)
      at += writeEpoch(packed, at)
      at += group.packed.copy(packed, at, 0, group.size)
      // The call holds the batch until it is answered; these bytes are in `packed` now.
      group.packed = EMPTY
    }
    const call = packed.subarray(0, at)
    // No async step of its own: each would add a promise and a turn of microtasks to every call. The wait for replicas only where there are some to wait for.
    const issue = (again: boolean): Promise<unknown> => this.script(
      // On a cluster the Link resends a call cut off by a master's death, to
      // the promoted replica, which may have it already: the script always checks.
      base, 'publish', nodeId, (this.unsettled[0] as Batch).firstId, again || this.shards !== undefined ? '1' : '0',
      historyTtlMs, this.historyRooms, this.historyBytes, call, batch.firstId, batch.lastId
    )
    const called = this.cmd.call('publish', issue, { resend: true, unknown: maybePublished })
    if (this.shards !== undefined) {
      called.then(() => this.sendNext(base), (err: unknown) => {
        // Its master did not answer (within commandTimeoutMs, or a resend's 2 s), or refused for now: those waiting
        // behind it would wait as long again, each call in turn, and their queue would grow meanwhile.
        if (notServed(err)) this.refuseWaiting(base)
        this.sendNext(base)
      })
    }
    const answered = this.waitReplicas === 0
      ? called
      : called.then(async (offsets) => {
        await this.replicated(base)
        return offsets
      })
    answered.then((reply) => {
      this.settle(batch)
      // In the order of the packed publishes: room by room. Checked whole before any publish settles.
      const offsets = offsetsOf(reply, batch.count)
      if (offsets === undefined) {
        this.config.log.error({ nodeId: this.config.nodeId, command: 'publish', publishes: batch.count, reply: String(reply).slice(0, 200) }, 'fastify-rooms: Redis answered a publish call with the wrong number of offsets')
        this.fail(batch, internal())
        return
      }
      let at = 0
      for (const { receipts } of batch.rooms.values()) {
        for (const receipt of receipts) this.answer(receipt, offsets[at++] as number, undefined)
      }
    }, (err: Error) => {
      this.settle(batch)
      this.fail(batch, err)
    })
  }

  /**
   * Answer one publish of a call. A receipt that throws (it should not) must
   * not leave the call's later publishes unanswered.
   */
  private answer (receipt: PublishReceipt, offset: number | undefined, err: Error | undefined): void {
    try {
      if (err === undefined) receipt.published(offset)
      else receipt.failed(err)
    } catch (thrown) {
      this.config.log.error({ err: thrown, nodeId: this.config.nodeId }, 'fastify-rooms: answering a publish failed')
    }
  }

  /** Answer a publish once the promise of its outcome settles. */
  private answerWhen (outcome: Promise<number | undefined>, receipt: PublishReceipt): void {
    outcome.then((offset) => { this.answer(receipt, offset, undefined) }, (err: Error) => { this.answer(receipt, undefined, err) })
  }

  private fail (batch: Batch, err: Error): void {
    for (const { receipts } of batch.rooms.values()) for (const receipt of receipts) this.answer(receipt, undefined, err)
  }

  private settle (batch: Batch): void {
    batch.settled = true
    while (this.unsettled[0]?.settled === true) this.unsettled.shift()
  }

  /**
   * Wait until the shard's replicas (up to `waitReplicas`) have
   * what this connection wrote to it: a failover promotes a replica, and
   * without this it could lack an acknowledged message. Short of that, the
   * publish answers INTERNAL ("may or may not have been published") rather
   * than promise what a failover could take back.
   *
   * One WAIT per master per turn covers every call whose reply came in that
   * turn: WAIT counts what the connection wrote before it, and each of those
   * calls ran before the WAIT was sent on the same connection. A WAIT per call
   * cost the master a command, a blocked client and a replica ack each.
   */
  private async replicated (base: string): Promise<void> {
    if (this.waitReplicas === 0) return
    const owner = this.shards === undefined ? ONE_REDIS : (this.redis as unknown as Cluster).slots[this.partitions.slot(base)]?.[0]
    if (owner === undefined) throw maybePublished()
    let group = this.waits.get(owner)
    if (group === undefined) {
      group = []
      this.waits.set(owner, group)
      // At the end of the turn, after the replies that came in with this one: their calls go under the same WAIT.
      this.scheduleTurnEnd()
    }
    const waiting = group
    await new Promise<void>((resolve, reject) => waiting.push({ resolve, reject }))
  }

  /**
   * One WAIT on a master's connection, for every call answered on it before.
   * The node is looked up among all of ioredis' nodes, not its masters: after
   * a failover ioredis routes to the promoted replica (MOVED) before its pool
   * counts it as a master. ROLE says whether it is one.
   *
   * ROLE and WAIT go through the command Link like every other call: a
   * connection that breaks and is back at ioredis' first retry drops the
   * commands in flight without settling them (autoResendUnfulfilledCommands
   * off), and a Redis that stops answering never settles them. Left to
   * ioredis, one lost ROLE held every later publish behind it, and one lost
   * WAIT left its publishes (and the replies after them) unanswered for good.
   */
  private async waitFor (owner: string): Promise<void> {
    const master = this.shards === undefined ? this.redis as Redis : (this.redis as unknown as Cluster).nodes('all').find((node) => `${node.options.host}:${node.options.port}` === owner)
    let wanted = this.waitReplicas
    let acked = 0
    try {
      if (master !== undefined) {
        // A count known already needs no await: the WAIT goes out now, in the turn's corked write to the master.
        const count = this.replicasOf(owner, master)
        wanted = Math.min(wanted, typeof count === 'number' ? count : await count)
        if (wanted === 0) return
        // WAIT takes whole milliseconds, and 0 would wait for ever.
        const timeout = Math.max(1, Math.floor(Math.min(1_000, this.commandTimeoutMs / 2)))
        acked = await this.cmd.call('wait', async () => await master.wait(wanted, timeout).catch(unconfirmed))
      }
    } catch {}
    if (acked < wanted) throw maybePublished()
  }

  /**
   * How many replicas a master has online, as its ROLE said within the last
   * REPLICAS_FRESH_MS. Not ioredis' slot table: it lists the replicas of the
   * CLUSTER SLOTS answer it last read, which leaves out a replica that had
   * no write yet, and one that came back after a failover. Callers at once
   * share one ROLE. A fresh count is answered at once, not as a promise.
   */
  private replicasOf (key: string, master: Redis): number | Promise<number> {
    const known = this.replicaCounts.get(key)
    if (known !== undefined && known.until > Date.now()) return known.count
    let asking = this.roles.get(key)
    if (asking === undefined) {
      asking = this.cmd.call('role', async () => await (master.call('ROLE') as Promise<[string, number, unknown[]]>).catch(unconfirmed)).then((role) => {
        // Demoted since the publish ran on it: what it holds cannot be confirmed.
        if (role[0] !== 'master') throw new Error(`${key} is not a master any more`)
        const count = role[2].length
        this.replicaCounts.set(key, { count, until: Date.now() + REPLICAS_FRESH_MS })
        return count
      }).finally(() => this.roles.delete(key))
      this.roles.set(key, asking)
    }
    return asking
  }

  async join (room: string, connectionId: string, member: Member): Promise<JoinResult> {
    await this.usable()
    const breaks = this.subscriberBreaks
    const since = this.breakSeq
    const subscription = await this.subscribe(room)
    // Its shard's subscription is broken: messages after the join's offset would wait for the shard to come back.
    if (subscription.restoring) {
      void this.release(room)
      throw unavailable()
    }
    // A leave of this membership still owed would undo the join once done. Dropped only now: a join
    // that failed before this point sent nothing, and the membership the leave is owed for is still there.
    this.pendingLeaves.delete(connectionId + '\n' + room)
    let reply: [string, number, string, string, number, number, string, ...string[]]
    try {
      reply = await this.call('join', room, connectionId, member.id, JSON.stringify(member), this.config.nodeId, this.config.maxMembersPerRoom, newEpoch(), this.config.membersPageSize) as typeof reply
    } catch (err) {
      void this.release(room)
      // It may have run before the connection broke (or in part, before a script error): undo it, now or once Redis is back.
      void this.forgetRemote(room, connectionId).catch(() => {})
      throw err
    }
    if (reply[0] === 'FULL') {
      void this.release(room)
      throw new RoomsError('ROOM_FULL', `Room "${room}" is full (${this.config.maxMembersPerRoom} members): try again later.`, room)
    }
    if (this.subscriberBreaks !== breaks || subscription.brokeAt > since) {
      // The room's messages after this join may have been missed: the member retries the join.
      void this.release(room)
      void this.forgetRemote(room, connectionId).catch(() => {})
      throw unavailable()
    }
    const [, offset, epoch, presenceSeq, present, count, next, ...members] = reply
    // Local members of an older epoch missed the room's loss: they rejoin.
    if (subscription.epoch !== undefined && subscription.epoch !== epoch) this.lose(room)
    if (subscription.epoch === undefined) {
      subscription.epoch = epoch
      subscription.offset = Math.max(subscription.offset, offset)
      this.flush(room, subscription)
    }
    // Changes after it reach this node on the subscription, made before the
    // join. With no member here yet, earlier ones concern nobody here (and
    // may be of an earlier life of the room, if it emptied meanwhile).
    if (subscription.joined === 0) subscription.presenceSeq = Math.max(subscription.presenceSeq, Number(presenceSeq))
    const key = connectionId + '\n' + room
    if (!this.local.has(key)) subscription.joined++
    this.local.set(key, { room, connectionId, member })
    return { offset, epoch, members: members.map((m) => JSON.parse(m) as Member), membersNext: next === '' ? null : next, count, presenceSeq: Number(presenceSeq), present: present === 1 }
  }

  /**
   * Shared by every node through Redis: the first node to start sets it. It
   * lives while any node runs and a week after (see the script's renew), so
   * resume tokens outlive a restart of every node; a Redis that restarted
   * empty gets it back with the next lease renewal of a node that runs.
   */
  async secret (): Promise<string> {
    const key = `${this.global}secret`
    await this.cmd.call('secret', async () => await this.redis.set(key, randomBytes(32).toString('base64url'), 'PX', 604_800_000, 'NX'))
    const secret = await this.cmd.call('secret', async () => await this.redis.get(key)) as string
    this.signing = secret
    return secret
  }

  async leave (room: string, connectionId: string): Promise<void> {
    if (!this.local.delete(connectionId + '\n' + room)) return
    const subscription = this.subscriptions.get(room)
    if (subscription !== undefined) subscription.joined--
    await Promise.all([this.release(room), this.forgetRemote(room, connectionId)])
  }

  async direct (connectionId: string, data: unknown, from?: Member): Promise<boolean> {
    const frame = encodeDirect(data, from)
    if (this.listener.direct(connectionId, frame)) return true
    const node = connectionId.slice(0, connectionId.indexOf('-'))
    if (node === '' || node === this.config.nodeId) return false
    const receivers = await this.send('direct', this.nodeChannel(node), `d${connectionId}|${frame}`, maybeDelivered)
    return receivers > 0
  }

  async control (command: ControlCommand): Promise<number> {
    const here = this.listener.control(command)
    const message = `x${this.config.nodeId}|${JSON.stringify(command)}`
    // A push (`sendToUser`) cut off in flight may have reached its connections, as `direct` may; the other commands may be repeated.
    const unknown = command.kind === 'direct' ? maybeDelivered : undefined
    if ('connectionId' in command.target) {
      const { connectionId } = command.target
      const node = connectionId.slice(0, connectionId.indexOf('-'))
      if (here > 0 || node === '' || node === this.config.nodeId) return here
      return await this.send('control', this.nodeChannel(node), message, unknown) > 0 ? 1 : 0
    }
    await this.send('control', this.allChannel(), message, unknown)
    return here
  }

  async room (room: string, query: MembersQuery): Promise<RoomInfo | null> {
    const reply = await this.call('room', room, query.after ?? '', query.limit) as [number, string, number, string, ...string[]] | null
    // A room with members here that the store no longer has, or has in another epoch, was lost (Redis emptied)
    // before the lease renewal found out: its members here rejoin now, as a join in another epoch makes them do.
    // Without it, a member's repeated join would pair the new epoch with its old offset.
    const subscription = this.subscriptions.get(room)
    if (subscription !== undefined && subscription.joined > 0 && subscription.epoch !== undefined && subscription.epoch !== reply?.[1]) this.lose(room)
    if (reply === null) return null
    const [offset, epoch, count, next, ...members] = reply
    return { name: room, count, members: members.map((m) => JSON.parse(m) as Member), membersNext: next === '' ? null : next, offset, epoch }
  }

  async rooms (query: RoomQuery): Promise<RoomPage> {
    const { prefix = '', after, limit } = query
    const start = after !== undefined && compareCodePoints(after, prefix) >= 0 ? `(${after}` : `[${prefix}`
    // One more than asked tells whether there is a next page. Each partition
    // lists its own rooms; the page is the first of them all, in Redis's byte order.
    const { bases } = this.partitions
    const listed = await Promise.all(bases.map(async (base) =>
      await this.cmd.call('rooms', async () => await this.redis.zrangebylex(`${base}rooms`, start, '+', 'LIMIT', 0, limit + 1))))
    let names = listed.flat().filter((n) => n.startsWith(prefix))
    if (bases.length > 1) names = names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))).slice(0, limit + 1)
    const page = names.slice(0, limit)
    const groups = [...this.partitions.group(page)]
    const counted = new Map<string, number>()
    await Promise.all(groups.map(async ([base, group]) => {
      // A pipeline per send: one that settled answers every exec() with the same result, and the Link may send again.
      const counts = await this.cmd.call('rooms', async () => {
        const pipeline = this.redis.pipeline()
        for (const name of group) pipeline.hlen(`${base}r:${name}:members`)
        return results(await pipeline.exec())
      })
      for (const [i, name] of group.entries()) counted.set(name, Number(counts[i]))
    }))
    const counts = page.map((name) => counted.get(name))
    return {
      rooms: page.map((name, i) => ({ name, count: Number(counts[i]) })).filter((r) => r.count > 0),
      next: names.length > limit ? (page[page.length - 1] as string) : null
    }
  }

  async history (room: string, after: number, limit: number): Promise<HistoryPage | null> {
    // Offsets are safe integers: a page from past them, or past the last one, is empty (and never a malformed stream id).
    const first = Math.max(Math.floor(after) + 1, 1)
    const most = Number.isFinite(limit) ? Math.floor(limit) : Number.MAX_SAFE_INTEGER
    const asked = Number.isSafeInteger(first) && most > 0
    const reply = await this.call('history', room, asked ? first : 0, asked ? most : 0) as [string, number, Array<[string, string[]]>] | null
    if (reply === null) return null
    const [epoch, offset, entries] = reply
    const messages: StoredMessage[] = entries.map(([id, fields]) => ({ offset: Number(id.slice(0, id.indexOf('-'))), frame: fields[1] as string }))
    return { epoch, offset, messages }
  }

  /** One call of the script on a room's partition (the room is its first argument). */
  private async call (cmd: string, room: string, ...args: Array<string | number>): Promise<unknown> {
    return await this.baseCall(this.partitions.base(room), cmd, room, ...args)
  }

  /** One call of the script on a partition, known to the link and `failure` by its command, as every call but an owed leave is. */
  private async baseCall (base: string, cmd: string, ...args: Array<string | number>): Promise<unknown> {
    return await this.namedCall(cmd, base, cmd, ...args)
  }

  /** A script call the link and `failure` know by `what` instead of its command (owed leaves are logged their own way). */
  private async namedCall (what: string, base: string, cmd: string, ...args: Array<string | number>): Promise<unknown> {
    return await this.cmd.call(what, async () => await this.script(base, cmd, ...args))
  }

  /**
   * Run the script on a partition. Its second key is never written: while the
   * partition's slot migrates, Redis finds a declared key missing and refuses
   * the whole call (TRYAGAIN, which ioredis retries for a while). Without it
   * the call would run, and fail half way at the first key not on that node
   * (a script's undeclared keys are checked one by one, as it runs).
   */
  private async script (base: string, cmd: string, ...args: Array<string | number | Buffer>): Promise<unknown> {
    return await this.redis.rooms(base + 'rooms', base + 'guard', base, cmd, ...args)
  }

  /** A call about node leases, whose keys are outside every partition. */
  private async globalCall (cmd: string, ...args: Array<string | number>): Promise<unknown> {
    return await this.baseCall(this.global, cmd, ...args)
  }

  /**
   * What a caller sees of a failed Redis call: a lost connection (or a Redis
   * busy loading or failing over) is the retryable UNAVAILABLE; anything else
   * is logged and becomes INTERNAL, so no Redis text reaches a client.
   */
  private failure (err: unknown, what: string): Error {
    if (err instanceof RoomsError) return err
    if (this.closed || isTransient(err)) return unavailable()
    // Retried every round, and logged by finishLeaves once a minute at most.
    if (what === OWED_LEAVE) return refusesWrites(err) ? unavailable() : internal()
    if (refusesWrites(err)) {
      // Nothing was written, and it passes once the operator acts: retryable, but the operator must hear of it.
      this.config.log.warn({ err: withoutArguments(err), nodeId: this.config.nodeId, command: what }, 'fastify-rooms: Redis refuses writes')
      return unavailable()
    }
    this.config.log.error({ err: withoutArguments(err), nodeId: this.config.nodeId, command: what }, 'fastify-rooms: Redis refused a command')
    return internal()
  }

  /** One renewal at a time: the timer's and recover()'s would otherwise both see REAPED. */
  private async renew (): Promise<void> {
    this.renewing ??= this.renewLease().finally(() => { this.renewing = undefined })
    await this.renewing
  }

  private async renewLease (): Promise<void> {
    let reply = await this.globalCall('renew', this.config.nodeId, this.leaseMs, this.registered ? '1' : '0', this.signing ?? '')
    if (reply === 'REAPED') {
      // Our lease expired while we were away (a long pause, or Redis lost its
      // data): others removed our members. Start over rather than resurrect
      // them: every local member rejoins.
      const rooms = new Set([...this.local.values()].map((m) => m.room))
      this.config.log[rooms.size > 0 ? 'warn' : 'debug']({ nodeId: this.config.nodeId, rooms: rooms.size }, 'fastify-rooms: this node\'s lease expired; disconnecting its members so they rejoin')
      this.registered = false
      // Checked before this node forgets what its members were given: a room
      // that lost writes they got (a failover during the same outage) must
      // not carry on in the same epoch, or their rejoin would pass for recovered.
      const known = [...rooms].filter((room) => this.subscriptions.get(room)?.epoch !== undefined)
      if (known.length > 0) await this.states(known).catch(() => {})
      for (const room of rooms) this.lose(room)
      reply = await this.globalCall('renew', this.config.nodeId, this.leaseMs, '0', this.signing ?? '')
    }
    if (reply === 'WAIT') {
      // Still being reaped: members joined now could be dropped by the reaper. Joins fail until it is done.
      this.registered = false
      throw unavailable()
    }
    this.registered = true
  }

  /** A connection broke: say so once, and hold joins until recover() has run. */
  private linkLost (): void {
    if (!this.running || this.closed || this.down) return
    this.down = true
    this.config.log.warn({ nodeId: this.config.nodeId }, 'fastify-rooms: lost the link to Redis; publishes and joins answer UNAVAILABLE until it is back')
  }

  /**
   * A subscriber connection broke: the rooms' messages meanwhile are missed,
   * so each room resyncs. On one Redis that is every room, and the whole
   * node recovers; on a cluster, the channels of the shard whose connection
   * broke or whose slot moved (`channels`, see shardBroke).
   */
  private subscriberBroke (channels?: string[]): void {
    if (!this.running || this.closed) return
    if (channels !== undefined) {
      this.shardBroke(channels)
      return
    }
    this.subscriberBreaks++
    this.subscriberLost = true
    // Whatever comes after the break is fetched from history, from the last offset delivered.
    for (const subscription of this.subscriptions.values()) {
      subscription.held = []
      subscription.heldPresence = undefined
      subscription.gap = true
      subscription.presenceGap = true
    }
    this.linkLost()
  }

  /**
   * On a cluster: some channels' subscriptions (one shard's) broke. Their
   * rooms resync on their own once restored; only the node's own channels
   * (direct frames, commands) take the whole node down, as a lost command
   * link does.
   */
  private shardBroke (channels: string[]): void {
    let nodeWide = false
    for (const channel of channels) {
      const target = this.parseChannel(channel)
      // The room list's: its watcher reads the list again once restored.
      if (target?.room === undefined) {
        if (target === undefined) nodeWide = true
        continue
      }
      const subscription = this.subscriptions.get(target.room)
      if (subscription === undefined) continue
      // Whatever comes after the break is fetched from history, from the last offset delivered.
      subscription.held = []
      subscription.heldPresence = undefined
      subscription.gap = true
      subscription.presenceGap = true
      subscription.brokeAt = ++this.breakSeq
      subscription.restoring = true
      this.resyncDue.delete(target.room)
    }
    if (nodeWide) {
      this.subscriberBreaks++
      this.linkLost()
    }
  }

  /** On a cluster: these broken channels are subscribed again; their rooms resync now. */
  private subscriberRestored (channels: string[]): void {
    if (!this.running || this.closed) return
    let roomList = false
    for (const channel of channels) {
      const target = this.parseChannel(channel)
      if (target === undefined) continue
      if (target.room === undefined) {
        roomList = true
        continue
      }
      const subscription = this.subscriptions.get(target.room)
      if (subscription?.restoring !== true) continue
      subscription.restoring = false
      this.resyncDue.add(target.room)
    }
    // Count changes while it was broken were not heard.
    if (roomList && !this.down) this.roomWatcher?.resync()
    this.maybeRecover()
    this.maybeResyncRooms()
  }

  /**
   * Resync the rooms restored since their break, unless the node's recovery
   * (which does every room) is due or under way. Rooms of different shards
   * resync side by side: one whose shard is slow to answer holds no other.
   */
  private maybeResyncRooms (): void {
    if (this.resyncDue.size === 0 || this.closed || this.down || this.recovering !== undefined || !this.cmd.ready) return
    const rooms = [...this.resyncDue].filter((room) => !this.resyncing.has(room))
    if (rooms.length === 0) return
    for (const room of rooms) {
      this.resyncDue.delete(room)
      this.resyncing.add(room)
    }
    let failed = false
    const run: Promise<void> = this.resyncBroken(rooms).catch((err: unknown) => {
      failed = true
      // Tried again at the next upkeep round, or with the next restore: not at once, its shard may still be failing over.
      for (const room of rooms) if (this.subscriptions.has(room)) this.resyncDue.add(room)
      const transient = err instanceof RoomsError && err.code === 'UNAVAILABLE'
      this.config.log[transient ? 'debug' : 'error']({ err, nodeId: this.config.nodeId, rooms: rooms.length }, 'fastify-rooms: resynchronising rooms after a shard subscription break failed; it is retried')
    }).finally(() => {
      for (const room of rooms) this.resyncing.delete(room)
      this.resyncs.delete(run)
      // Rooms restored while one of them was resyncing wait for it.
      if (!failed) this.maybeResyncRooms()
    })
    this.resyncs.add(run)
  }

  /**
   * What the node's recovery does, for the rooms of one broken shard: the
   * lease first (a node reaped meanwhile must not register its members
   * again), then the rooms, then their local members registered again (a
   * failover may have lost their joins).
   */
  private async resyncBroken (rooms: string[]): Promise<void> {
    const breaks = this.subscriberBreaks
    await this.renew()
    await this.resync(breaks, rooms)
    // A Set: register asks once per local membership, and a shard may hold many rooms.
    const resynced = new Set(rooms)
    await this.register((room) => resynced.has(room))
    this.config.log.warn({ nodeId: this.config.nodeId, rooms: rooms.length }, 'fastify-rooms: the rooms of a broken shard subscription are resynchronised')
  }

  /** Register the local members (of the rooms `which` picks) in Redis again; a membership it still has is left as it is. */
  private async register (which: (room: string) => boolean): Promise<void> {
    await Promise.all([...this.local.values()].filter(({ room }) => which(room)).map(async ({ room, connectionId, member }) => {
      await this.call('join', room, connectionId, member.id, JSON.stringify(member), this.config.nodeId, Number.MAX_SAFE_INTEGER, newEpoch(), 1)
    }))
  }

  /** The subscriber connections the whole node needs are up: on a cluster, its own channels' subscriptions (rooms resync on their own). */
  private get listening (): boolean {
    return (this.subLink?.ready ?? true) && (this.shards?.holds(this.nodeChannels()) ?? true)
  }

  /** Subscribe to channels: room channels go over sharded pub/sub on a cluster. */
  private async listen (channels: string[]): Promise<void> {
    if (this.shards !== undefined) await this.shards.subscribe(channels)
    else await this.subLink?.call('subscribe', async () => await this.sub?.subscribe(...channels))
  }

  private async unlisten (channels: string[]): Promise<void> {
    if (this.shards !== undefined) await this.shards.unsubscribe(channels)
    else await this.subLink?.call('unsubscribe', async () => await this.sub?.unsubscribe(...channels))
  }

  /**
   * Resolves once every message published to these rooms before the call has
   * reached this node. On one Redis a PING on the subscriber connection
   * answers after them; on a cluster a marker published to one room of each
   * partition arrives after them, since a shard sends its messages in order.
   */
  private async heard (rooms: string[]): Promise<void> {
    if (this.shards === undefined) {
      await this.subLink?.call('ping', async () => await this.sub?.ping())
      return
    }
    await Promise.all([...this.partitions.group(rooms).values()].map(async ([room]) => {
      const token = `${++this.markerSeq}`
      const arrived = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => { if (this.markers.delete(token)) reject(unavailable()) }, this.commandTimeoutMs)
        this.markers.set(token, () => {
          clearTimeout(timer)
          resolve()
        })
      })
      arrived.catch(() => {})
      await this.send('marker', this.roomChannel(room as string), `k${this.config.nodeId}|${token}`)
      await arrived
    }))
  }

  private maybeRecover (): void {
    if (!this.down || this.closed || this.recovering !== undefined || !this.cmd.ready || !this.listening) return
    this.recovering = this.recover().finally(() => { this.recovering = undefined })
  }

  /**
   * Both connections are back: resubscribe, finish failed leaves, renew the
   * lease, check every room against Redis (lost rooms' members rejoin, missed
   * messages are replayed from history), re-register local members.
   */
  private async recover (): Promise<void> {
    try {
      // Never two fills of one room at once: each would deliver its page.
      await Promise.all(this.resyncs)
      const breaks = this.subscriberBreaks
      // Only the subscriber connection of one Redis is ever lost whole; on a
      // cluster the shard subscriber restores what it lost itself.
      if (this.subscriberLost) {
        const channels = [...this.nodeChannels(), ...[...this.subscriptions.keys()].map((room) => this.roomChannel(room))]
        if (this.roomWatcher !== undefined) channels.push(...this.roomListChannels())
        await this.listen(channels)
        if (this.subscriberBreaks === breaks) this.subscriberLost = false
      }
      await this.finishLeaves()
      await this.renew()
      await this.resync(breaks)
      // A room whose shard subscription is broken still does this once restored: its shard may be away.
      await this.register((room) => this.subscriptions.get(room)?.restoring !== true)
      // A break meanwhile (on a cluster, another shard's, already restored)
      // left rooms the resync did not do: stay down, and recover again.
      if (this.subscriberBreaks !== breaks) {
        setImmediate(() => this.maybeRecover())
        return
      }
      if (this.subscriberLost || !this.cmd.ready || !this.listening) return
      this.down = false
      this.config.log.warn({ nodeId: this.config.nodeId }, 'fastify-rooms: the link to Redis is back; rooms resynchronised')
      // Count changes during the outage were not heard: the room list is read again.
      this.roomWatcher?.resync()
      // Rooms restored meanwhile, which this recovery's resync may have passed before.
      setImmediate(() => this.maybeResyncRooms())
    } catch (err) {
      const transient = err instanceof RoomsError && err.code === 'UNAVAILABLE'
      this.config.log[transient ? 'debug' : 'error']({ err, nodeId: this.config.nodeId }, 'fastify-rooms: redis recovery failed; it is retried')
    }
  }

  /**
   * Do the leaves Redis refused earlier. Sent together (one connection keeps
   * their order), so thousands of members cost one round trip. One refused
   * again stays owed for the next round and holds up nothing else; the
   * refusals are logged once a minute at most, not once per leave and round.
   */
  private async finishLeaves (): Promise<void> {
    let refused = 0
    let error: unknown
    await Promise.all([...this.pendingLeaves].map(async ([key, owed]) => {
      try {
        await this.namedCall(OWED_LEAVE, this.partitions.base(owed.room), 'leave', owed.room, owed.connectionId, this.config.nodeId)
        // Not a leave owed since (a join and a leave again while this one was in flight): that one is still owed.
        if (this.pendingLeaves.get(key) === owed) this.pendingLeaves.delete(key)
      } catch (err) {
        refused++
        error ??= err
      }
    }))
    if (refused === 0 || this.down || Date.now() - this.owedLoggedAt < 60_000) return
    this.owedLoggedAt = Date.now()
    this.config.log.warn({ err: error, nodeId: this.config.nodeId, owed: this.pendingLeaves.size }, 'fastify-rooms: Redis refused leaves this instance owes; their members stay listed until it takes them, retried every leaseMs/3')
  }

  /**
   * Check each subscribed room (or only these) against Redis: a changed
   * epoch is a loss; a gap is filled from history, or the room's members
   * rejoin. A room whose subscription is broken still is left to the resync
   * its restore starts: what it misses meanwhile would not be in what is read now.
   */
  private async resync (breaks: number, only?: string[]): Promise<void> {
    const seq = this.breakSeq
    const subscribed = (only ?? [...this.subscriptions.keys()]).flatMap((room) => {
      const subscription = this.subscriptions.get(room)
      return subscription === undefined || subscription.restoring ? [] : [[room, subscription] as const]
    })
    // A room whose epoch is still unknown has no local member yet: its first join's reply tells.
    for (const [room, subscription] of subscribed) {
      if (subscription.epoch !== undefined) continue
      subscription.gap = false
      this.flushPresence(room, subscription)
    }
    const rooms = subscribed.filter(([, s]) => s.epoch !== undefined).map(([room]) => room)
    if (rooms.length === 0) return
    const state = await this.states(rooms)
    // Every message published before the state was read is now in: the gap is exactly what did not come.
    const gaps = rooms.filter((room) => this.subscriptions.get(room)?.gap === true)
    if (gaps.length > 0) await this.heard(gaps)
    for (const room of rooms) {
      // Broken again meanwhile: the next recovery starts over.
      if (this.subscriberBreaks !== breaks) return
      const subscription = this.subscriptions.get(room)
      // Broken again since the state was asked for: its restore resyncs it.
      if (subscription?.epoch === undefined || subscription.brokeAt > seq) continue
      const [epoch, last, missed] = state.get(room) as RoomState
      if (epoch !== subscription.epoch || (subscription.presenceGap && missed === null)) {
        // Another epoch, or presence changes this node missed and Redis no longer keeps: its members rejoin.
        this.lose(room)
        continue
      }
      if (subscription.presenceGap) {
        for (const change of missed ?? []) this.presenceHeard(room, subscription, Buffer.from(change))
        this.flushPresence(room, subscription)
      }
      if (subscription.gap) await this.fill(room, subscription, last)
    }
  }

  /**
   * Each room's epoch and last offset in Redis, checked against what this
   * node delivered (rooms whose epoch it knows): a room that lost writes this
   * node delivered starts a new epoch there (see the script's 'state').
   */
  private async states (rooms: string[]): Promise<Map<string, RoomState>> {
    const epoch = newEpoch()
    const groups = [...this.partitions.group(rooms)]
    const replies = await Promise.all(groups.map(async ([base, names]) =>
      await this.baseCall(base, 'state', epoch, ...names.flatMap((room) => {
        const subscription = this.subscriptions.get(room) as Subscription
        const { epoch, offset, frame, presenceGap, presenceSeq } = subscription
        // Members that get no presence frames miss nothing: no reason to close them.
        const heard = presenceGap && presenceSeq > 0 && this.config.presenceEvents ? presenceSeq : ''
        // What arrives from now on may come after the state is read: kept for after the replay.
        if (presenceGap) subscription.heldPresence = []
        return [room, epoch as string, offset, frame === undefined ? '' : createHash('sha1').update(frame).digest('hex'), heard]
      })) as Array<string | number | string[] | null>))
    const state = new Map<string, RoomState>()
    for (const [g, [, names]] of groups.entries()) {
      const reply = replies[g] as Array<string | number | string[] | null>
      for (const [i, room] of names.entries()) state.set(room, reply.slice(3 * i, 3 * i + 3) as RoomState)
    }
    return state
  }

  /** Deliver what a broken subscription missed, from history, then what it held back meanwhile. */
  private async fill (room: string, subscription: Subscription, last: number): Promise<void> {
    const epoch = subscription.epoch as string
    const next = subscription.held?.find((m) => m.epoch === epoch)?.offset ?? last + 1
    const missing = next - 1 - subscription.offset
    if (missing > 0) {
      const breaks = this.subscriberBreaks
      const brokeAt = subscription.brokeAt
      const page = await this.history(room, subscription.offset, missing)
      if (this.subscriptions.get(room) !== subscription || subscription.epoch !== epoch || this.subscriberBreaks !== breaks || subscription.brokeAt !== brokeAt) return
      // Offsets only rise, so the right count from the right first to the right last leaves no gap.
      // The last is checked too: a message delivered but not kept (over maxHistoryBytes) is a hole
      // that XRANGE's COUNT steps over, reading a later message in its place.
      const covered = page !== null && page.epoch === epoch && page.messages.length === missing &&
        page.messages[0]?.offset === subscription.offset + 1 && page.messages[missing - 1]?.offset === next - 1
      if (!covered) {
        this.lose(room)
        return
      }
      for (const message of page.messages) this.listener.message(room, message.offset, message.frame)
      subscription.offset = next - 1
      subscription.frame = page.messages[missing - 1]?.frame
    }
    subscription.gap = false
    this.flush(room, subscription)
  }

  /**
   * The room's cluster state is not what this node's members joined (Redis
   * lost it, or this node's lease was reaped): they are closed (1012) to
   * rejoin and learn of the gap. Their subscription holds are released here,
   * once, so a second report of the same loss finds nothing to do.
   */
  private lose (room: string): void {
    const subscription = this.subscriptions.get(room)
    if (subscription !== undefined) {
      subscription.epoch = undefined
      subscription.offset = 0
      subscription.frame = undefined
      subscription.held = []
      subscription.gap = false
      subscription.heldPresence = undefined
      subscription.presenceGap = false
      subscription.presenceSeq = 0
      subscription.joined = 0
    }
    // Only the members of the lost state: a connection joining the room's new state meanwhile stays.
    const lost: string[] = []
    for (const [key, entry] of this.local) {
      if (entry.room !== room) continue
      this.local.delete(key)
      lost.push(entry.connectionId)
      void this.release(room)
      void this.forgetRemote(room, entry.connectionId).catch(() => {})
    }
    if (lost.length > 0) this.listener.reset(room, lost)
  }

  /**
   * Remove a connection from a room in Redis, now or, when Redis refuses
   * (away, or refusing writes), at the next upkeep round till it takes it: a
   * leave given up would leave the member there for as long as this node runs.
   */
  private async forgetRemote (room: string, connectionId: string): Promise<void> {
    try {
      await this.call('leave', room, connectionId, this.config.nodeId)
    } catch {
      // failure() has logged a refusal that is not a passing one.
      this.pendingLeaves.set(connectionId + '\n' + room, { room, connectionId })
    }
  }

  /** Joins wait for a recovery under way, and fail while the link is down. */
  private async usable (): Promise<void> {
    if (!this.registered) throw unavailable()
    if (!this.down) return
    if (this.recovering === undefined) throw unavailable()
    await this.recovering
    if (this.down) throw unavailable()
  }

  private async subscribe (room: string): Promise<Subscription> {
    let subscription = this.subscriptions.get(room)
    if (subscription === undefined) {
      const ready = this.listen([this.roomChannel(room)])
      ready.catch(() => {})
      subscription = { holders: 0, joined: 0, ready, epoch: undefined, offset: 0, frame: undefined, held: [], gap: false, presenceSeq: 0, presenceGap: false, heldPresence: undefined, brokeAt: 0, restoring: false }
      this.subscriptions.set(room, subscription)
    }
    subscription.holders++
    // Subscribed before the join is recorded, so no message after the join's offset can be missed.
    try {
      await subscription.ready
    } catch (err) {
      void this.release(room)
      throw err
    }
    return subscription
  }

  /**
   * Drop one hold on a room's channel; the last one unsubscribes. This map is
   * the truth: when the subscriber connection is down, the unsubscribe fails
   * and the room is simply not resubscribed when it is back.
   */
  private async release (room: string): Promise<void> {
    const subscription = this.subscriptions.get(room)
    if (subscription === undefined || --subscription.holders > 0) return
    this.subscriptions.delete(room)
    await this.unlisten([this.roomChannel(room)]).catch(() => {})
  }

  /** Deliver the messages a subscription held back, unless it still waits for its epoch or a resync. */
  private flush (room: string, subscription: Subscription): void {
    const held = subscription.held
    if (held === undefined || subscription.epoch === undefined || subscription.gap) return
    subscription.held = undefined
    for (const { offset, epoch, frame } of held) {
      // Held while the epoch was unknown: messages of another epoch were not for these members.
      if (epoch === subscription.epoch) this.deliver(room, subscription, offset, epoch, frame)
    }
  }

  private deliver (room: string, subscription: Subscription, offset: number, epoch: string, frame: Buffer): void {
    if (epoch !== subscription.epoch) {
      // The room's history was lost (Redis flushed or restarted): its local members must rejoin.
      this.lose(room)
      // A member joining the new epoch meanwhile (its answer travels on the
      // other connection) must still get this message: held for its join.
      if (this.subscriptions.get(room) === subscription) subscription.held?.push({ offset, epoch, frame })
      return
    }
    if (offset <= subscription.offset) return
    subscription.offset = offset
    subscription.frame = frame
    this.listener.message(room, offset, frame)
  }

  /** Subscribe to the room list channel with the first watcher; unsubscribe without one. */
  async watchRooms (watcher: RoomCountWatcher | undefined): Promise<void> {
    const was = this.roomWatcher
    this.roomWatcher = watcher
    if (watcher === undefined) {
      if (was !== undefined) await this.unlisten(this.roomListChannels()).catch(() => {})
      return
    }
    if (was !== undefined) return
    try {
      await this.listen(this.roomListChannels())
    } catch (err) {
      if (this.roomWatcher === watcher) {
        this.roomWatcher = undefined
        // A subscribe that failed leaves its channels wanted (the shard subscriber confirms them later): nobody would ever drop them.
        void this.unlisten(this.roomListChannels()).catch(() => {})
      }
      throw err
    }
  }

  /** Each partition's room list channel: `<count>|<room>` on every member count change. */
  private roomListChannels (): string[] {
    return this.partitions.bases.map((base) => `${base}roomlist`)
  }

  /** What a partition channel is: a room's (`<base>c:<room>`) or a room list's (`<base>roomlist`); undefined for a node channel. */
  private parseChannel (channel: string): { room: string } | { room: undefined } | undefined {
    let at = this.prefix.length
    if (channel.charCodeAt(at) === 123) at = channel.indexOf('}', at) + 1 // '{': a partition's hash tag
    if (channel.startsWith('c:', at)) return { room: channel.slice(at + 2) }
    if (channel.length === at + 8 && channel.endsWith('roomlist')) return { room: undefined }
    return undefined
  }

  private onMessage (channel: string, message: Buffer): void {
    const target = this.parseChannel(channel)
    if (target !== undefined && target.room === undefined) { // <count>|<room>
      const cut = message.indexOf(124)
      this.roomWatcher?.count(message.toString('latin1', cut + 1), Number(message.toString('latin1', 0, cut)))
      return
    }
    const bar = message.indexOf(124) // '|'
    const kind = message[0]
    if (target !== undefined) {
      const room = target.room as string
      if (kind === 98) { // 'b': b<epoch>|, then <offset>|<frame bytes>|<frame> for each message
        const subscription = this.subscriptions.get(room)
        if (subscription !== undefined) this.received(room, subscription, message, bar)
      } else if (kind === 112) { // 'p': a presence change
        const subscription = this.subscriptions.get(room)
        // Behind a gap, changes the node missed are replayed first (see resync).
        if (subscription?.presenceGap !== true) this.presenceHeard(room, subscription, message)
        else subscription.heldPresence?.push(message)
      } else if (kind === 107) { // 'k': k<node>|<token>, a marker of heard()
        if (message.toString('latin1', 1, bar) === this.config.nodeId) {
          const token = message.toString('latin1', bar + 1)
          this.markers.get(token)?.()
          this.markers.delete(token)
        }
      } else if (kind === 101) { // 'e': e<frame>, ephemeral
        if (this.subscriptions.has(room)) this.listener.message(room, undefined, message.subarray(1))
      }
    } else if (kind === 100) { // 'd': d<connection>|<frame>
      this.listener.direct(message.toString('latin1', 1, bar), message.toString('utf8', bar + 1))
    } else if (kind === 120 && message.toString('latin1', 1, bar) !== this.config.nodeId) { // 'x': x<origin>|<command>, done at the origin already
      this.listener.control(JSON.parse(message.toString('utf8', bar + 1)) as ControlCommand)
    }
  }

  /** A presence change, `p<presence seq>|<count>|<j or l><user id bytes>|<user id><member JSON>`, to the room's members. */
  private presenceHeard (room: string, subscription: Subscription | undefined, message: Buffer): void {
    const bar = message.indexOf(124)
    const bar2 = message.indexOf(124, bar + 1)
    const bar3 = message.indexOf(124, bar2 + 2)
    const idEnd = bar3 + 1 + Number(message.toString('latin1', bar2 + 2, bar3))
    const seq = Number(message.toString('latin1', 1, bar))
    if (subscription !== undefined && seq > subscription.presenceSeq) subscription.presenceSeq = seq
    this.listener.presence(room, {
      join: message[bar2 + 1] === 106, // 'j'
      id: message.toString('utf8', bar3 + 1, idEnd),
      member: message.toString('utf8', idEnd),
      count: Number(message.toString('latin1', bar + 1, bar2)),
      seq
    })
  }

  /** End a presence gap: pass on the changes held during it that its replay did not cover. */
  private flushPresence (room: string, subscription: Subscription): void {
    const held = subscription.heldPresence ?? []
    subscription.heldPresence = undefined
    subscription.presenceGap = false
    for (const message of held) {
      if (digits(message, 1, message.indexOf(124)) > subscription.presenceSeq) this.presenceHeard(room, subscription, message)
    }
  }

  /**
   * The messages of one publish call, in offset order. Live, they go to the
   * members together (one write each); held back, or of another epoch, each
   * takes the way a single message would.
   */
  private received (room: string, subscription: Subscription, message: Buffer, bar: number): void {
    const epoch = message.toString('latin1', 1, bar)
    const live = subscription.held === undefined && epoch === subscription.epoch
    const fresh: Array<{ offset: number, frame: Buffer }> = []
    let at = bar + 1
    while (at < message.length && this.subscriptions.get(room) === subscription) {
      const bar1 = message.indexOf(124, at)
      const bar2 = bar1 === -1 ? -1 : message.indexOf(124, bar1 + 1)
      if (bar2 === -1) break
      const offset = digits(message, at, bar1)
      const end = bar2 + 1 + digits(message, bar1 + 1, bar2)
      const frame = message.subarray(bar2 + 1, end)
      at = end
      if (!live) {
        if (subscription.held !== undefined) subscription.held.push({ offset, epoch, frame })
        else this.deliver(room, subscription, offset, epoch, frame)
      } else if (offset > subscription.offset) {
        subscription.offset = offset
        subscription.frame = frame
        fresh.push({ offset, frame })
      }
    }
    if (fresh.length > 0) this.listener.messages(room, fresh)
  }

  private roomChannel (room: string): string {
    return `${this.partitions.base(room)}c:${room}`
  }

  /**
   * The channels every node listens on whatever rooms it serves: its own
   * (`d` direct frames and `x` commands for one of its connections), and
   * `all` (`x` commands for a user, who may be on any node).
   */
  private nodeChannels (): string[] {
    return [this.nodeChannel(this.config.nodeId), this.allChannel()]
  }

  /**
   * A node's channel. On a cluster it is a sharded channel of its own slot:
   * classic pub/sub would copy every message to every Redis node, and count
   * only the receivers of the node it was sent to.
   */
  private nodeChannel (node: string): string {
    return this.shards === undefined ? `${this.prefix}n:${node}` : `${this.prefix}{n:${node}}`
  }

  private allChannel (): string {
    return this.shards === undefined ? `${this.prefix}all` : `${this.prefix}{all}`
  }

  /** Publish on a channel: sharded on a cluster. Resolves to the receivers. */
  /** @param unknown the error for a message cut off in flight, when it is one whose delivery matters (not a control command, which may be repeated) */
  private async send (what: string, channel: string, message: string, unknown?: () => RoomsError): Promise<number> {
    return await this.cmd.call(what, async () => await (this.shards === undefined ? this.redis.publish(channel, message) : this.redis.spublish(channel, message)) as number, { unknown })
  }
}

/** A call that may be sent again has run once it went out: it must say what its unknown outcome is. */
type CallOptions = { resend: true, unknown: () => RoomsError } | { resend?: false, unknown?: () => RoomsError }

/** A call on a Link: settled by the link whatever becomes of the connection. */
interface Call {
  what: string
  /** Send it; `again` when it was sent before (cut off in flight). */
  issue: (again: boolean) => Promise<unknown>
  resolve: (value: any) => void
  reject: (err: Error) => void
  /** Sent again after a cut rather than failed (the script applies it once whatever the number of sends). */
  resend: boolean
  /**
   * The error for a call that went out and was cut off: one that changes what
   * clients see (a publish) may have run, which UNAVAILABLE would deny.
   * Undefined for the others, which get UNAVAILABLE.
   */
  unknown: (() => RoomsError) | undefined
  /** When it was last sent (0: never). */
  sentAt: number
  /**
   * On a cluster: a node connection closed while it was in flight, so this
   * attempt may have run, whatever error ends it (ioredis may have retried
   * it after a MOVED, ASK or TRYAGAIN, and names only the last error),
   * except CLUSTERDOWN (see clusterDown).
   */
  cut?: boolean
  /** On a cluster: an earlier attempt was cut off, so the call may have run. */
  ran?: boolean
  /** For a call held after a cut (one Redis), or sent again (a cluster): when it gives up. */
  until?: number
}

/**
 * One ioredis connection whose calls always settle. Left to itself, ioredis
 * resends the commands in flight when a connection breaks, once it is back:
 * a publish could be applied twice, and a promise could wait for as long as
 * Redis is away. Here a call in flight at a break fails at once with
 * UNAVAILABLE, except a `resend` call (a publish), which is sent again if the
 * connection is back within RESEND_WITHIN_MS and fails after that. A call
 * unanswered for `timeoutMs` breaks the connection the same way (a hung
 * Redis, or a connection the network dropped without a word).
 *
 * On a cluster, a call is sent again, as ioredis would, when it was refused
 * before it went out (its master's connection was down) or without being
 * run (CLUSTERDOWN: the slot read is not timed as the call's), or when it is a
 * publish; any other call cut off in flight fails. A publish sent again
 * keeps its place: the adapter sends a partition's next publish call only
 * once the one before is answered or failed (see RedisAdapter.sendBatch).
 * A call unanswered for `timeoutMs` has the node connections asked whether
 * they answer (see probe): only those that do not are broken, so a frozen
 * master costs the calls to it alone.
 */
class Link {
  private readonly client: Redis | Cluster
  private readonly timeoutMs: number
  private readonly failure: (err: unknown, what: string) => Error
  /** In the order they were sent: the first is the oldest. */
  private readonly inflight = new Set<Call>()
  private held: Call[] = []
  private timer: NodeJS.Timeout | undefined
  private readonly watchdog: NodeJS.Timeout
  /**
   * The Redis server process last connected to (INFO's run_id). A call is
   * sent again only to the same process: one that restarted may have lost
   * the record that makes a resent publish apply once.
   */
  private server: string | undefined
  private readonly resends: boolean
  private readonly metrics: LinkMetrics | undefined
  /** On a cluster: calls waiting RETRY_MS to be sent again, oldest first, and the timer that sends them. */
  private retrying: Call[] = []
  private retryTimer: NodeJS.Timeout | undefined
  /** On a cluster: the masters are being asked whether they answer. */
  private probing = false
  private readonly onHung: (node: string) => void
  /** On a cluster: every node connection that has not ended, and since when those being made are. */
  private readonly nodes = new Set<Redis>()
  private readonly connecting = new Map<Redis, number>()

  /**
   * @param resends on one Redis, whether calls on this link may be sent
   *   again after a break (the command link's publishes): only then is the
   *   server checked. On a cluster the link resends by itself (see failedOnCluster).
   * @param metrics where round trips and state changes go, when metrics are on
   * @param onHung on a cluster, told the address of a node whose connection is broken for not answering
   */
  constructor (client: Redis | Cluster, timeoutMs: number, failure: (err: unknown, what: string) => Error, onLost: () => void, onReady: () => void, resends = false, metrics?: LinkMetrics, onHung: (node: string) => void = () => {}) {
    this.client = client
    this.onHung = onHung
    this.metrics = metrics
    metrics?.state(client.status === 'ready')
    this.resends = resends
    this.timeoutMs = timeoutMs
    this.failure = failure
    this.watchdog = setInterval(() => this.check(), Math.max(timeoutMs / 4, 5))
    this.watchdog.unref()
    client.on('close', () => {
      this.metrics?.state(false)
      this.cut()
      onLost()
    })
    client.on('ready', () => {
      this.metrics?.state(true)
      void this.resume()
      onReady()
    })
    if (client.isCluster) {
      const cluster = client as Cluster
      const watch = (node: Redis): void => {
        this.nodes.add(node)
        let ready = node.status === 'ready'
        node.on('connecting', () => { this.connecting.set(node, Date.now()) })
        node.on('ready', () => {
          ready = true
          this.connecting.delete(node)
        })
        node.on('close', () => {
          // Any node's, not only the one a call went to: a call retried after a MOVED is on another node than the one it
          // ran on first. Not one that never was ready: ioredis holds calls until then, so none of them went out.
          if (ready) for (const call of this.inflight) call.cut = true
          ready = false
          this.connecting.delete(node)
        })
        node.on('end', () => {
          this.nodes.delete(node)
          this.connecting.delete(node)
        })
      }
      cluster.on('+node', watch)
      for (const node of cluster.nodes()) watch(node)
    }
  }

  get ready (): boolean {
    return this.client.status === 'ready'
  }

  call<T> (what: string, issue: (again: boolean) => Promise<T>, { resend = false, unknown }: CallOptions = {}): Promise<T> {
    if (!this.ready) return Promise.reject(unavailable())
    return new Promise<T>((resolve, reject) => {
      const call: Call = { what, issue, resolve, reject, resend, unknown, sentAt: 0 }
      if (resend && this.held.length > 0) {
        // The connection is back, and the calls cut off on it wait to be sent
        // again: one made now goes after them, or it would overtake them.
        call.until = Date.now() + RESEND_WITHIN_MS
        this.held.push(call)
      } else {
        this.send(call)
      }
    })
  }

  /** Fail every call: the adapter is closing. */
  close (): void {
    clearInterval(this.watchdog)
    clearTimeout(this.timer)
    clearTimeout(this.retryTimer)
    // A publish that went out may have run, as when its time to be sent again is up (`expire`).
    for (const call of [...this.inflight, ...this.held]) call.reject(outcome(call))
    for (const call of this.retrying) call.reject(lost(call))
    this.inflight.clear()
    this.held = []
    this.retrying = []
  }

  private send (call: Call): void {
    const again = call.sentAt !== 0
    call.sentAt = Date.now()
    this.inflight.add(call)
    const started = this.metrics === undefined ? 0 : performance.now()
    call.issue(again).then((value) => {
      this.metrics?.roundTrip(performance.now() - started)
      if (!this.inflight.delete(call)) return
      call.resolve(value)
    }, (err: unknown) => {
      if (!this.inflight.delete(call)) return
      if (this.client.isCluster) {
        this.failedOnCluster(call, err)
        return
      }
      // A publish whose connection broke under it may have run.
      if (call.unknown !== undefined && !call.resend && isCutOff(err)) call.reject(call.unknown())
      else call.reject(this.ready ? this.failure(err, call.what) : unavailable())
    })
  }

  /**
   * A call on a cluster failed: send it again if that is safe and its time
   * is not up, else fail it. Refused before it went out or refused
   * CLUSTERDOWN, it did not run; a
   * publish runs once however often it is sent; anything else cut off in
   * flight may have run, and sending it again after the caller was answered
   * (a join it undid) would act behind its back.
   */
  private failedOnCluster (call: Call, err: unknown): void {
    const cut = call.cut === true
    call.cut = false
    // A CLUSTERDOWN ends an attempt that ran nowhere, whatever connection closed meanwhile.
    const unsent = clusterDown(err) || (!cut && notSent(err))
    if (!unsent && (cut || isCutOff(err))) call.ran = true
    call.until ??= call.sentAt + RESEND_WITHIN_MS
    // Sent again only for a broken connection: an error Redis gave (a script's) would come back the same.
    if ((unsent || (call.resend && isCutOff(err))) && this.ready && Date.now() + RETRY_MS < call.until) {
      this.retrying.push(call)
      this.soon()
      return
    }
    call.reject(call.ran === true ? lost(call) : this.ready ? this.failure(err, call.what) : unavailable())
  }

  /** Have a round of sending again (retry) come in RETRY_MS, unless one is due already. */
  private soon (): void {
    this.retryTimer ??= setTimeout(() => this.retry(), RETRY_MS)
  }

  /** Send the calls waiting to be sent again, once the cluster's slots are read again. */
  private retry (): void {
    const cluster = this.client as Cluster
    cluster.refreshSlotsCache(() => {
      this.retryTimer = undefined
      const calls = this.retrying
      this.retrying = []
      for (const call of calls) {
        // Unless its time to be sent again is up: then it fails.
        if (this.ready && Date.now() < (call.until as number)) this.send(call)
        else call.reject(lost(call))
      }
    })
  }

  /** The connection broke: what was in flight may or may not have run. */
  private cut (): void {
    const now = Date.now()
    for (const call of this.inflight) {
      if (call.resend && this.resends) {
        call.until ??= now + RESEND_WITHIN_MS
        this.held.push(call)
      } else {
        call.reject(outcome(call))
      }
    }
    this.inflight.clear()
    this.expire()
  }

  /** The oldest call waited too long: settle what is in flight as for a break, and reconnect. */
  private check (): void {
    // Calls waiting to be sent again always have a round to come, whatever broke meanwhile: their time runs out there.
    if (this.retrying.length > 0) this.soon()
    const oldest = this.inflight.values().next().value
    if (oldest === undefined || Date.now() - oldest.sentAt < this.timeoutMs) return
    if (this.client.isCluster) {
      this.probe(oldest)
      return
    }
    this.breakAll()
  }

  private breakAll (): void {
    this.cut()
    // Ends the socket, destroys it if that does not finish; 'close' and a reconnection follow.
    this.client.disconnect(true)
  }

  /**
   * On a cluster: ask every node connection for a PONG, and break those that
   * give none within two seconds (`timeoutMs` at most): their calls fail as
   * cut off (see send), and ioredis connects again when a call needs that
   * master. A connection still being made holds the call that started it
   * (ioredis queues it until it is ready, and refuses the others), and to a
   * frozen master it never gets there: one
   * being made for as long as the PONGs were waited for counts as not
   * answering. Connections out of the cluster's pool count too: one to a
   * master just replaced is closed gently, which waits on a frozen peer. When
   * every connection answers and `oldest` is still unanswered, it is not one
   * master's fault: the whole link breaks, as on one Redis.
   */
  private probe (oldest: Call): void {
    if (this.probing) return
    this.probing = true
    // Longer than a WAIT for replicas can take (see replicated): a PING sent behind one is answered after it.
    const wait = Math.max(1, Math.min(2_000, this.timeoutMs))
    const asked = [...this.nodes].filter((node) => node.status === 'ready')
    void Promise.all(asked.map(async (node) => await answers(node, wait))).then((answered) => {
      this.probing = false
      if (!this.ready) return
      const now = Date.now()
      const hung = asked.filter((_, i) => !answered[i])
      let young = false
      for (const [node, since] of this.connecting) {
        if (node.status !== 'connect' && node.status !== 'connecting') continue
        if (now - since >= wait) hung.push(node)
        else young = true
      }
      for (const node of hung) {
        this.onHung(`${node.options.host ?? ''}:${node.options.port ?? ''}`)
        // Closed at once: ending it would wait for the frozen peer up to ioredis' disconnectTimeout, with the calls unsettled.
        if (typeof node.stream?.destroy === 'function') node.stream.destroy()
        else node.disconnect()
      }
      // A connection being made for less long may hold it: the next check asks again.
      if (hung.length === 0 && !young && this.inflight.has(oldest)) this.breakAll()
    })
  }



  private async resume (): Promise<void> {
    let same = true
    if (this.resends) {
      let server: string | undefined
      try {
        server = /run_id:(\w+)/.exec(await this.client.info('server'))?.[1]
      } catch {}
      same = server !== undefined && server === this.server
      this.server = server
    }
    clearTimeout(this.timer)
    this.timer = undefined
    const held = this.held
    this.held = []
    for (const call of held) {
      if (same) this.send(call)
      else call.reject(outcome(call))
    }
  }

  /** Fail the held calls whose time is up; wake up for the next one. */
  private expire (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    const now = Date.now()
    this.held = this.held.filter((call) => {
      if ((call.until as number) > now) return true
      call.reject(outcome(call))
      return false
    })
    if (this.held.length === 0) return
    this.timer = setTimeout(() => this.expire(), Math.min(...this.held.map((call) => call.until as number)) - now)
    this.timer.unref()
  }
}

/** The error for a call that failed for a lost connection: whether it went out decides whether it may have run. */
function outcome (call: Call): RoomsError {
  return call.sentAt !== 0 && call.unknown !== undefined ? call.unknown() : unavailable()
}

/** The error for a call on a cluster that is given up on: whether an attempt was cut off decides whether it may have run. */
function lost (call: Call): RoomsError {
  return call.ran === true && call.unknown !== undefined ? call.unknown() : unavailable()
}

/** Whether a node answers a PING within `ms` (an error is an answer too). */
async function answers (node: Redis, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), ms) })
  try {
    return await Promise.race([node.ping().then(() => true, () => true), late])
  } finally {
    clearTimeout(timer)
  }
}

/** An option that must be a whole number within bounds; a TypeError naming it otherwise, as for the other options. */
function wholeNumber (value: number, name: string, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw new TypeError(`redisAdapter: ${name} must be a whole number from ${min} to ${max}.`)
  return value
}

/** Create the Redis adapter: `adapter: redisAdapter({ url: 'redis://127.0.0.1:6379' })`. */
export function redisAdapter (options: RedisAdapterOptions): Adapter {
  return new RedisAdapter(options)
}

/** Random bytes for epochs, drawn from the system in blocks: every publish passes one, though few are used. */
let epochBytes = Buffer.alloc(0)
let epochAt = 0

/** An epoch's length: 6 random bytes in base64url. */
const EPOCH_CHARS = 8

/** Take the next 6 random bytes of the block (a new block when it is used up); returns where they start. */
function drawEpoch (): number {
  if (epochAt === epochBytes.length) {
    epochBytes = randomBytes(6 * 256)
    epochAt = 0
  }
  epochAt += 6
  return epochAt - 6
}

function newEpoch (): string {
  const from = drawEpoch()
  return epochBytes.toString('base64url', from, from + 6)
}

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/** Write a new epoch (as `newEpoch` makes them) at `at`, with no string made for it; returns its length. */
function writeEpoch (to: Buffer, at: number): number {
  const from = drawEpoch()
  for (let i = from; i < from + 6; i += 3, at += 4) {
    const n = ((epochBytes[i] as number) << 16) | ((epochBytes[i + 1] as number) << 8) | (epochBytes[i + 2] as number)
    to[at] = BASE64URL.charCodeAt(n >>> 18)
    to[at + 1] = BASE64URL.charCodeAt((n >>> 12) & 63)
    to[at + 2] = BASE64URL.charCodeAt((n >>> 6) & 63)
    to[at + 3] = BASE64URL.charCodeAt(n & 63)
  }
  return EPOCH_CHARS
}

const BAR = 124 // '|'
const EMPTY = Buffer.alloc(0)

/** Write a non-negative integer's decimal digits at `at`; returns where they end. */
function writeDigits (to: Buffer, at: number, n: number): number {
  let end = at + 1
  for (let rest = Math.floor(n / 10); rest > 0; rest = Math.floor(rest / 10)) end++
  for (let i = end - 1; i >= at; i--, n = Math.floor(n / 10)) to[i] = 48 + n % 10
  return end
}

/** The resolvers of the promise `capture` was last the executor of. */
const captured: { resolve: (offset: number | undefined) => void, reject: (err: Error) => void } = { resolve: () => {}, reject: () => {} }

function capture (resolve: (offset: number | undefined) => void, reject: (err: Error) => void): void {
  captured.resolve = resolve
  captured.reject = reject
}

/** Whether a message's frame (offset and ts at their widest) fits in `bytes`, measuring it only when it might not. */
function fits (room: string, message: EncodedPublish, bytes: number): boolean {
  // `{"type":"message","room":"","data":,"offset":,"ts":}` and two 16-digit numbers.
  const fixed = 52 + 32 + room.length
  const from = message.from ?? ''
  const extra = from === '' ? 0 : 8
  // A UTF-16 unit is at most 3 bytes of UTF-8.
  if (fixed + extra + 3 * (message.data.length + from.length) <= bytes) return true
  return fixed + extra + Buffer.byteLength(message.data) + Buffer.byteLength(from) <= bytes
}

/** The decimal number in bytes `from` to `to` of a buffer, read without making a string of it. */
function digits (bytes: Buffer, from: number, to: number): number {
  let n = 0
  for (let i = from; i < to; i++) n = n * 10 + (bytes[i] as number) - 48
  return n
}

async function ready (client: Redis | Cluster): Promise<void> {
  if (client.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve)
    client.once('end', () => reject(new Error('fastify-rooms: could not connect to Redis')))
  })
}

function results (replies: Array<[Error | null, unknown]> | null): unknown[] {
  return (replies ?? []).map(([err, value]) => {
    if (err !== null) throw err
    return value
  })
}

/** On a cluster: ioredis refused the call before writing it, its master's connection being down. */
function notSent (err: unknown): boolean {
  const message = err instanceof Error ? err.message : ''
  return /^(Connection is closed\.|Stream isn't writeable and enableOfflineQueue options is false|Cluster isn't ready and enableOfflineQueue options is false)$/.test(message)
}

/**
 * On a cluster: Redis refused the call without running it, the cluster being
 * down (a master failing and not replaced yet). ioredis passes it on at once
 * (retryDelayOnClusterDown is off), after following only MOVED, ASK and
 * TRYAGAIN, none of which ran it: no attempt of the call ran.
 */
function clusterDown (err: unknown): boolean {
  return /^CLUSTERDOWN\b/.test(err instanceof Error ? err.message : '')
}

/** The connection broke after the command was sent: it may or may not have run. */
function isCutOff (err: unknown): boolean {
  const message = err instanceof Error ? err.message : ''
  return /Connection is closed|ECONNRESET|EPIPE|Command aborted/i.test(message)
}

/** What a retried owed leave is called in the command link: its refusals are logged by finishLeaves. */
const OWED_LEAVE = 'owed leave'

/**
 * Redis refusing every write for now: too few replicas (`min-replicas-to-write`),
 * a failed save (`stop-writes-on-bgsave-error`), `maxmemory` reached. Raised at a
 * script's first write, so the script wrote nothing.
 */
function refusesWrites (err: unknown): boolean {
  return /^(NOREPLICAS|MISCONF|OOM)\b/.test(err instanceof Error ? err.message : '')
}

/** A lost connection, or a Redis that cannot answer for now (loading, busy script, failover). */
function isTransient (err: unknown): boolean {
  const message = err instanceof Error ? err.message : ''
  // 'Too many Cluster redirections': ioredis gave up following a cluster in the middle of a failover or a slot move (MOVED, ASK, TRYAGAIN).
  return /^(LOADING|BUSY|TRYAGAIN|MASTERDOWN|READONLY|CLUSTERDOWN)\b|Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET|max retries|EPIPE|Command aborted|Too many Cluster redirections/i.test(message)
}
