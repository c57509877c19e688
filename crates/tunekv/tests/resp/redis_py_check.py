"""redis-py against a running 3-node tunekv cluster, as a Redis user would use it.

Usage: python redis_py_check.py HOST:PORT HOST:PORT HOST:PORT   (RESP addresses of nodes 1..3)

Each check is a function of plain asserts. All checks run, so one failure does not hide the
others; if any failed the script raises (non-zero exit), else it prints "redis-py checks passed".
Keys carry a random prefix, so it can be re-run against one cluster. Sockets time out after 10 s
and no loop is unbounded.
"""

import os
import sys
import threading
import time
import traceback
import warnings

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ADDRS = []  # (host, port) of nodes 1..3
P = "rpc:" + os.urandom(6).hex() + ":"  # this run's key prefix
RECEIPT_KEYS = {"level", "served_by", "position", "shard", "index", "commit_ms",
                "staleness_entries", "staleness_ms", "shards", "version"}


def client(node=0, protocol=3, **kw):
    """A client of node `node` (0-based). No retries: a retried INCR or pipeline would hide a
    failure or count twice, and each failing call stays bounded by the 10 s timeout."""
    host, port = ADDRS[node]
    return redis.Redis(host=host, port=port, protocol=protocol, decode_responses=True,
                       socket_timeout=10, socket_connect_timeout=10,
                       retry=Retry(NoBackoff(), 0), **kw)


def error_of(fn, *args):
    """The error `fn(*args)` raises (asserting that it raises one)."""
    try:
        got = fn(*args)
    except redis.RedisError as e:
        return e
    raise AssertionError(f"{args!r}: expected an error, got {got!r}")


def check_connection():
    for proto in (2, 3):
        r = client(0, proto)
        assert r.ping() is True, f"RESP{proto} PING"
        assert r.echo("hi there") == "hi there", f"RESP{proto} ECHO"
        hello = r.execute_command("HELLO", str(proto))
        if proto == 2:  # a RESP2 map is a flat list
            hello = dict(zip(hello[::2], hello[1::2]))
        assert hello.get("proto") == proto and "version" in hello, f"HELLO {proto}: {hello!r}"
        assert r.client_setname("checker") and r.client_getname() == "checker", "CLIENT *NAME"
        cid = r.client_id()
        assert isinstance(cid, int) and cid > 0, f"CLIENT ID: {cid!r}"
        raw = r.execute_command("CLIENT", "INFO")
        try:
            info = r.client_info()
        except ValueError as e:  # redis-py int()s the id, db, age, ... fields
            raise AssertionError(f"redis-py cannot parse CLIENT INFO {raw!r}: {e}") from None
        assert (info["id"], info["name"], info["db"]) == (cid, "checker", 0), f"CLIENT INFO {info}"
        assert r.command_count() > 20, "COMMAND COUNT"
        # COMMAND INFO comes from the same table as dispatch.
        info = r.execute_command("COMMAND", "INFO", "mset", "get")  # parsed into a dict by name
        m = info["mset"]
        assert (m["arity"], m["first_key_pos"], m["last_key_pos"], m["step_count"]) == (-3, 1, -1, 2), m
        assert list(info["get"]["flags"]) == ["readonly"], info["get"]
        assert "redis_version" in r.info(), "INFO has redis_version"
        assert r.config_get("appendonly") == {"appendonly": "yes"}, "CONFIG GET appendonly"
        assert isinstance(r.dbsize(), int), "DBSIZE"
        e = error_of(r.execute_command, "AUTH", "secret")  # AuthenticationError, as with Redis
        assert "without any password configured" in str(e), f"AUTH: {e!r}"
        e = error_of(r.execute_command, "NOSUCHCMD", "x")
        assert isinstance(e, redis.ResponseError) and "unknown command" in str(e), repr(e)


def check_select():
    db = 1 + os.urandom(1)[0] % 15
    numbered = client(1, db=db)  # redis-py sends SELECT <db> on connect
    numbered.set(P + "sel", "in-db")
    assert numbered.dbsize() >= 1, "DBSIZE after a write"
    assert numbered.execute_command("SELECT", 0) is True, "SELECT 0"
    assert numbered.get(P + "sel") is None, "db 0 and db N are separate"
    named = client(2, db=f"db{db}")  # SELECT by keyspace name
    assert named.get(P + "sel") == "in-db", f"keyspace db{db} is SELECT {db}"
    e = error_of(named.execute_command, "SELECT", "no_such_keyspace_" + os.urandom(3).hex())
    assert str(e).startswith("KEYSPACE_NOT_FOUND"), f"SELECT unknown: {e!r}"
    assert named.get(P + "sel") == "in-db", "a failed SELECT keeps the keyspace"


def check_strings():
    r, k = client(0), P + "s:"
    assert r.get(k + "none") is None and r.type(k + "none") == "none", "missing key"
    assert r.set(k + "a", "1") is True and r.get(k + "a") == "1", "SET/GET"
    assert r.type(k + "a") == "string", "TYPE"
    assert r.set(k + "a", "2", nx=True) is None and r.get(k + "a") == "1", "SET NX on existing"
    assert r.set(k + "b", "x", xx=True) is None and r.get(k + "b") is None, "SET XX on missing"
    assert r.set(k + "a", "3", xx=True) is True, "SET XX on existing"
    assert r.set(k + "a", "4", get=True) == "3", "SET GET returns the old value"
    assert r.setnx(k + "a", "5") is False and r.setnx(k + "n", "5") is True, "SETNX"
    assert r.getset(k + "a", "6") == "4" and r.getdel(k + "a") == "6", "GETSET/GETDEL"
    assert r.get(k + "a") is None and r.getdel(k + "a") is None, "GETDEL deleted it"
    assert r.mset({k + "m1": "v1", k + "m2": "v2"}) is True, "MSET"
    assert r.mget([k + "m1", k + "none", k + "m2"]) == ["v1", None, "v2"], "MGET"
    assert r.exists(k + "m1", k + "m1", k + "none", k + "m2") == 3, "EXISTS counts duplicates"
    assert r.delete(k + "m1", k + "none") == 1 and r.unlink(k + "m2", k + "n") == 2, "DEL/UNLINK"
    assert r.exists(k + "m1", k + "m2", k + "n") == 0, "deleted"
    assert r.incr(k + "i") == 1 and r.incrby(k + "i", 10) == 11, "INCR/INCRBY"
    assert r.decr(k + "i") == 10 and r.decrby(k + "i", 15) == -5, "DECR/DECRBY"
    r.set(k + "t", "abc")
    for op in (r.incr, r.decr, lambda key: r.incrby(key, 2), lambda key: r.decrby(key, 2)):
        e = error_of(op, k + "t")
        assert isinstance(e, redis.ResponseError), repr(e)
        assert "value is not an integer or out of range" in str(e), repr(e)
    assert r.append(k + "ap", "Hello") == 5 and r.append(k + "ap", " World") == 11, "APPEND"
    assert r.strlen(k + "ap") == 11 and r.strlen(k + "none") == 0, "STRLEN"
    for start, end, want in [(0, 4, "Hello"), (-5, -1, "World"), (0, -1, "Hello World"),
                             (-3, -1, "rld"), (6, 100, "World"), (5, 3, ""), (20, 30, ""),
                             (-100, 1, "He")]:
        got = r.getrange(k + "ap", start, end)
        assert got == want, f"GETRANGE {start} {end}: want {want!r}, got {got!r}"
    assert r.getrange(k + "none", 0, -1) == "", "GETRANGE of a missing key"


def check_ttls():
    r, k, now = client(0), P + "ttl:", time.time()
    assert r.ttl(k + "none") == -2 and r.pttl(k + "none") == -2, "TTL of a missing key"
    assert r.set(k + "a", "v") and r.ttl(k + "a") == -1 == r.pttl(k + "a"), "no expiry"
    assert r.expire(k + "a", 100) is True and 98 <= r.ttl(k + "a") <= 100, "EXPIRE/TTL"
    assert r.pexpire(k + "a", 200_000) is True and 190_000 < r.pttl(k + "a") <= 200_000, "PTTL"
    assert r.expire(k + "none", 100) is False, "EXPIRE of a missing key"
    assert r.persist(k + "a") is True and r.ttl(k + "a") == -1, "PERSIST"
    assert r.persist(k + "a") is False, "PERSIST without a TTL"
    assert r.set(k + "ex", "v", ex=100) and 98 <= r.ttl(k + "ex") <= 100, "SET EX"
    assert r.set(k + "ex", "w", keepttl=True) and 98 <= r.ttl(k + "ex") <= 100, "SET KEEPTTL"
    assert r.set(k + "ex", "x") and r.ttl(k + "ex") == -1, "a plain SET clears the TTL"
    assert r.set(k + "px", "v", px=50_000) and 48_000 < r.pttl(k + "px") <= 50_000, "SET PX"
    assert r.set(k + "exat", "v", exat=int(now) + 300), "SET EXAT"
    assert 290 <= r.ttl(k + "exat") <= 300, "SET EXAT's TTL"
    assert r.set(k + "pxat", "v", pxat=int(now * 1000) + 300_000), "SET PXAT"
    assert 290_000 <= r.pttl(k + "pxat") <= 300_000, "SET PXAT's PTTL"
    assert r.setex(k + "se", 100, "v") is True and 98 <= r.ttl(k + "se") <= 100, "SETEX"
    assert r.psetex(k + "pse", 100_000, "v") is True, "PSETEX"
    assert 98_000 < r.pttl(k + "pse") <= 100_000, "PSETEX's PTTL"
    # EXPIRE's NX / XX / GT / LT: a key without a TTL expires never.
    r.set(k + "o", "v")
    assert r.expire(k + "o", 100, xx=True) is False and r.ttl(k + "o") == -1, "EXPIRE XX, no TTL"
    assert r.expire(k + "o", 100, gt=True) is False and r.ttl(k + "o") == -1, "EXPIRE GT, no TTL"
    assert r.expire(k + "o", 100, nx=True) is True and 98 <= r.ttl(k + "o") <= 100, "EXPIRE NX"
    assert r.expire(k + "o", 200, nx=True) is False, "EXPIRE NX with a TTL"
    assert r.expire(k + "o", 50, gt=True) is False and r.ttl(k + "o") > 90, "EXPIRE GT, earlier"
    assert r.expire(k + "o", 200, gt=True) is True and r.ttl(k + "o") > 190, "EXPIRE GT, later"
    assert r.expire(k + "o", 300, lt=True) is False and r.ttl(k + "o") <= 200, "EXPIRE LT, later"
    assert r.pexpire(k + "o", 150_000, xx=True, lt=True) is True, "PEXPIRE XX LT"
    assert 140 <= r.ttl(k + "o") <= 150, "PEXPIRE XX LT's TTL"
    e = error_of(lambda: r.expire(k + "o", 10, nx=True, gt=True))
    assert "not compatible" in str(e), f"NX with GT: {e}"
    r.set(k + "short", "v", px=300)
    time.sleep(0.6)
    for node in range(3):
        for level in ("default", "eventual"):  # eventual: served by the node's own replica
            c = client(node)
            c.execute_command("CONSISTENCY", level)
            got = c.get(k + "short")
            assert got is None, f"expired key readable on node {node + 1} ({level}): {got!r}"


def check_scan_and_keys():
    r, k = client(2, db=1 + os.urandom(1)[0] % 15), P + "scan:"  # a small keyspace: fewer pages
    written = {f"{k}{i}" for i in range(37)}
    r.mset({key: "v" for key in written})
    r.set(P + "other", "v")
    found = []
    for i, key in enumerate(r.scan_iter(match=k + "*", count=7)):
        assert i < 10_000, "SCAN does not end"
        found.append(key)
    assert sorted(found) == sorted(written), f"SCAN MATCH: {len(found)} keys: {sorted(found)}"
    assert sorted(r.keys(k + "*")) == sorted(written), "KEYS pattern"
    assert r.dbsize() >= len(written), "DBSIZE counts the keys"


def check_concurrent_incr():
    key, errors = P + "counter", []

    def work(node):
        try:
            c = client(node)
            for _ in range(50):
                c.incr(key)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i % 3,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads), f"INCR threads: {errors}"
    got = client(1).get(key)
    assert got == "200", f"4 x 50 concurrent INCR: want 200, got {got!r}"


def check_pipeline():
    r, k = client(1), P + "pipe:"
    pipe = r.pipeline(transaction=False)
    want = []
    for i in range(25):
        pipe.set(f"{k}{i}", str(i)); want.append(True)
        pipe.get(f"{k}{i}"); want.append(str(i))
        pipe.incrby(f"{k}{i}", 100); want.append(100 + i)
        pipe.append(f"{k}{i}", "x"); want.append(len(str(100 + i)) + 1)
    got = pipe.execute()
    assert len(got) == 100 and got == want, f"pipeline of 100: want {want!r}, got {got!r}"


def check_tunekv_commands():
    for proto in (2, 3):
        r = client(0, proto)
        assert r.execute_command("CONSISTENCY") == "default", "CONSISTENCY initially"
        assert r.execute_command("CONSISTENCY", "strong") == "OK", "CONSISTENCY strong"
        assert r.execute_command("CONSISTENCY") == "strong", "CONSISTENCY once set"
        e = error_of(r.execute_command, "CONSISTENCY", "bogus")
        assert isinstance(e, redis.ResponseError) and str(e).startswith("LEVEL_INVALID"), repr(e)
        assert r.set(P + "rec", "v") and r.get(P + "rec") == "v", "SET/GET"
        rec = r.execute_command("RECEIPT")
        assert isinstance(rec, dict if proto == 3 else list), f"RESP{proto} RECEIPT: {rec!r}"
        if proto == 2:  # a RESP2 map is a flat list
            rec = dict(zip(rec[::2], rec[1::2]))
        assert set(rec) == RECEIPT_KEYS, f"RECEIPT keys: {sorted(rec)}"
        assert rec["level"] == "strong" and rec["shards"] == 1, f"RECEIPT: {rec!r}"
        assert rec["version"] == r.execute_command("VERSION", P + "rec") > 0, f"RECEIPT: {rec!r}"
        assert r.execute_command("WAITMS", 500) == "OK", "WAITMS 500"
        token = r.execute_command("SESSION")
        assert isinstance(token, str) and token, f"SESSION: {token!r}"
        assert r.execute_command("SESSION", token) == "OK", "SESSION <token>"
        e = error_of(r.execute_command, "SESSION", "garbage")
        assert isinstance(e, redis.ResponseError) and str(e).startswith("SESSION_INVALID"), repr(e)


def check_conflict_free_types():
    """Counter, set and map keyspaces (created by the Rust test: `likes`, `carts`,
    `profiles`, leaderless with conflict counter, set and map) through redis-py's own methods,
    at QUORUM all all so that every node reads what another wrote."""
    for proto in (2, 3):
        k = f"{P}{proto}:"
        likes, carts, profiles = (client(i % 3, proto, db=name)
                                  for i, name in enumerate(["likes", "carts", "profiles"]))
        for r in (likes, carts, profiles):
            assert r.execute_command("QUORUM", "all", "all") == "OK"
        assert likes.incr(k + "post") == 1 and likes.incrby(k + "post", 9) == 10, "INCR/INCRBY"
        assert likes.decr(k + "post") == 9 and likes.decrby(k + "post", 4) == 5, "DECR/DECRBY"
        assert likes.get(k + "post") == "5", "GET of a counter"
        e = error_of(likes.set, k + "post", "x")
        assert str(e).startswith("WRONGTYPE"), repr(e)
        e = error_of(likes.sadd, k + "post", "x")
        assert str(e).startswith("WRONGTYPE"), f"SADD on a counter keyspace: {e!r}"

        assert carts.sadd(k + "cart", "apple", "pear", "apple") == 2, "SADD counts new members"
        assert carts.sadd(k + "cart", "pear", "fig") == 1, "SADD of a member already in"
        assert carts.smembers(k + "cart") == {"apple", "pear", "fig"}, "SMEMBERS"
        assert carts.sismember(k + "cart", "fig") and not carts.sismember(k + "cart", "kiwi")
        assert carts.smismember(k + "cart", ["fig", "kiwi"]) in ([1, 0], [True, False])
        assert carts.scard(k + "cart") == 3 and carts.scard(k + "none") == 0, "SCARD"
        assert carts.srem(k + "cart", "apple", "kiwi") == 1, "SREM counts removed members"
        assert carts.type(k + "cart") == "set" and carts.exists(k + "cart") == 1, "TYPE/EXISTS"
        other = client(1, proto, db="carts")
        assert other.smembers(k + "cart") == {"pear", "fig"}, "another node reads the set"
        e = error_of(carts.get, k + "cart")
        assert str(e).startswith("WRONGTYPE") and "SMEMBERS" in str(e), repr(e)
        e = error_of(carts.incr, k + "cart")
        assert str(e).startswith("WRONGTYPE"), repr(e)
        assert carts.delete(k + "cart") == 1 and carts.smembers(k + "cart") == set(), "DEL"
        assert carts.exists(k + "cart") == 0 and carts.type(k + "cart") == "none"

        assert profiles.hset(k + "u", mapping={"name": "ada", "visits": "1"}) == 2, "HSET"
        assert profiles.hset(k + "u", "name", "ada l.") == 0, "HSET of an existing field"
        assert profiles.hincrby(k + "u", "visits", 4) == 5, "HINCRBY on a string integer"
        assert profiles.hincrby(k + "u", "logins", 2) == 2, "HINCRBY on a new field"
        assert profiles.hget(k + "u", "name") == "ada l." and profiles.hget(k + "u", "x") is None
        assert profiles.hmget(k + "u", ["visits", "x"]) == ["5", None], "HMGET"
        want = {"name": "ada l.", "visits": "5", "logins": "2"}
        assert profiles.hgetall(k + "u") == want, f"HGETALL: {profiles.hgetall(k + 'u')!r}"
        assert sorted(profiles.hkeys(k + "u")) == sorted(want), "HKEYS"
        assert profiles.hlen(k + "u") == 3 and profiles.hexists(k + "u", "name"), "HLEN/HEXISTS"
        e = error_of(profiles.hincrby, k + "u", "name", 1)
        assert "not an integer" in str(e), repr(e)
        assert profiles.hdel(k + "u", "name", "x") == 1 and not profiles.hexists(k + "u", "name")
        other = client(2, proto, db="profiles")
        assert other.hgetall(k + "u") == {"visits": "5", "logins": "2"}, "another node reads it"
        assert profiles.type(k + "u") == "hash", "TYPE of a hash"


def check_strong_read_on_follower():
    writer, reader = client(0), client(2)
    assert reader.execute_command("CONSISTENCY", "strong") == "OK"
    for i in range(20):
        key, value = f"{P}strong:{i}", os.urandom(8).hex()
        writer.set(key, value)
        got = reader.get(key)
        assert got == value, f"strong GET of {key} on node 3: want {value!r}, got {got!r}"


def check_session_across_nodes():
    key, value = P + "ryw", os.urandom(8).hex()
    one, two = client(0), client(1)
    one.set(key, value)
    token = one.execute_command("SESSION")
    assert two.execute_command("SESSION", token) == "OK", "SESSION <token> on node 2"
    assert two.execute_command("CONSISTENCY", "read_your_writes") == "OK"
    got = two.get(key)
    assert got == value, f"read_your_writes GET on node 2: want {value!r}, got {got!r}"


def check_transactions():
    # redis-py's optimistic transaction: WATCH, read, MULTI, write, EXEC; a change made through
    # another node in between makes EXEC return nil, which redis-py raises as WatchError.
    key, r, other = P + "tx", client(0, 2), client(2)
    r.set(key, "10")
    with r.pipeline() as p:
        p.watch(key)
        n = int(p.get(key))
        p.multi()
        p.set(key, str(n - 1))
        p.get(key)
        assert p.execute() == [True, "9"], "an untouched watched key lets EXEC run"
    with r.pipeline() as p:
        p.watch(key)
        p.multi()
        p.incr(key)
        other.set(key, "100")
        try:
            p.execute()
            raise AssertionError("EXEC ran though a watched key changed")
        except redis.WatchError:
            pass
    assert r.get(key) == "100", "the aborted transaction changed nothing"
    # MULTI/EXEC without WATCH (redis-py's default pipeline) runs atomically.
    with r.pipeline() as p:
        p.incr(key).incrby(key, 5).get(key)
        assert p.execute() == [101, 106, "106"]


def check_client_side_cache():
    # redis-py's own client-side cache (RESP3, CLIENT TRACKING): a read is cached, a write made
    # through another node invalidates it, and the next read returns the new value.
    from redis.cache import CacheConfig
    key, writer = P + "csc", client(1)
    writer.set(key, "one")
    r = client(0, cache_config=CacheConfig())
    # Node 1 may not have applied the write yet: a strong read waits for it.
    assert r.get(key) == "one"
    cache = r.get_cache()
    assert len(cache.collection) == 1, f"the read was not cached: {cache.collection}"
    assert r.get(key) == "one", "a cache hit"
    writer.set(key, "two")
    deadline = time.time() + 10
    while r.get(key) != "two":
        assert time.time() < deadline, "no invalidation reached the cache in 10 s"
        time.sleep(0.05)
    assert r.get(key) == "two"
    r.close()


CHECKS = [check_connection, check_select, check_strings, check_ttls, check_scan_and_keys,
          check_concurrent_incr, check_pipeline, check_tunekv_commands, check_conflict_free_types,
          check_strong_read_on_follower, check_session_across_nodes, check_transactions,
          check_client_side_cache]


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    for addr in sys.argv[1:]:
        host, port = addr.rsplit(":", 1)
        ADDRS.append((host, int(port)))
    warnings.simplefilter("ignore", DeprecationWarning)  # redis-py's setex/psetex
    failed = []
    for check in CHECKS:
        try:
            check()
            print(f"ok   {check.__name__}", flush=True)
        except Exception:
            failed.append(check.__name__)
            print(f"FAIL {check.__name__}\n{traceback.format_exc()}", flush=True)
    assert not failed, f"redis-py checks failed: {', '.join(failed)}"
    print("redis-py checks passed")


if __name__ == "__main__":
    main()
