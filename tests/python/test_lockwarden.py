#!/usr/bin/env python3
"""Drives lockwarden through redis-py (execute_command), as an application in
another language would.

Run against a server with the module loaded:

    python3 tests/python/test_lockwarden.py --port 6379

(or set LOCKWARDEN_PORT); it is a script, not a pytest module. The server
should be fresh: the script checks INFO counters by difference, but uses
fixed key names. Exits 0 when every check passes; prints the failing check
and exits 1 otherwise.
"""

import argparse
import os
import sys
import threading
import time
import traceback

import redis

TIMEOUT = 30.0


def connect(port, **kw):
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=10,
        **kw,
    )


def lock_info(r, key):
    """LOCK.INFO as a dict with str keys, or None when free."""
    reply = r.execute_command("LOCK.INFO", key)
    if reply is None:
        return None
    if isinstance(reply, dict):  # RESP3 map
        return {k.decode(): v for k, v in reply.items()}
    assert isinstance(reply, list) and len(reply) % 2 == 0, reply
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


def stats(r):
    """INFO lockwarden without the lockwarden_ prefix."""
    return {
        k[len("lockwarden_"):]: v
        for k, v in r.info("lockwarden").items()
        if k.startswith("lockwarden_")
    }


# Error codes other than ERR (docs/COMMANDS.md), plus Redis's own.
OTHER_CODES = {
    "WRONGTYPE", "NOTHELD", "NOTOWNER", "TTLMAX", "TTLMIN", "DENIED", "POLICY",
    "BADPOLICY", "NOSCRIPT", "READONLY", "OOM", "NOPERM", "MOVED", "ASK",
}


def expect_error(code, fn, *args):
    try:
        reply = fn(*args)
    except redis.ResponseError as e:
        msg = str(e)
        if code == "ERR":
            # redis-py strips the generic "ERR " prefix; any other code stays.
            first = msg.split(" ", 1)[0]
            assert first not in OTHER_CODES, f"expected ERR, got {msg!r}"
        else:
            assert msg.startswith(code + " ") or msg == code, f"expected {code}, got {msg!r}"
        return msg
    raise AssertionError(f"expected {code} error, got reply {reply!r}")


def wait_until(what, pred, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.1)


def test_acquire_extend_release(r):
    before = stats(r)
    token, ttl = r.execute_command("LOCK.ACQUIRE", "py:k", "alice", 10000)
    assert isinstance(token, int) and token > 0, token
    assert ttl == 10000, ttl
    assert r.type("py:k") == b"lockwardn", r.type("py:k")
    assert 0 < r.pttl("py:k") <= 10000, r.pttl("py:k")
    info = lock_info(r, "py:k")
    assert info["owner"] == b"alice", info
    assert info["token"] == token, info
    assert info["session"] == 0 and info["waiters"] == 0, info
    assert 0 < info["ttl"] <= 10000, info

    # Contended: nil. Same owner again: same token, TTL reset.
    assert r.execute_command("LOCK.ACQUIRE", "py:k", "bob", 10000) is None
    again = r.execute_command("LOCK.ACQUIRE", "py:k", "alice", 20000)
    assert again == [token, 20000], again

    assert r.execute_command("LOCK.EXTEND", "py:k", "alice", 5000) == 5000
    assert r.execute_command("LOCK.EXTEND", "py:k", "alice", 6000, "FENCE", token) == 6000
    info = lock_info(r, "py:k")
    assert info["extensions"] == 2 and info["token"] == token, info
    assert info["ttl"] <= 6000, info

    expect_error("NOTOWNER", r.execute_command, "LOCK.RELEASE", "py:k", "bob")
    expect_error("NOTOWNER", r.execute_command, "LOCK.EXTEND", "py:k", "bob", 1000)
    expect_error("NOTOWNER", r.execute_command, "LOCK.RELEASE", "py:k", "alice", "FENCE", token + 1)
    assert r.execute_command("LOCK.RELEASE", "py:k", "alice", "FENCE", token) == 1
    assert r.exists("py:k") == 0
    assert lock_info(r, "py:k") is None
    expect_error("NOTHELD", r.execute_command, "LOCK.RELEASE", "py:k", "alice")
    expect_error("NOTHELD", r.execute_command, "LOCK.EXTEND", "py:k", "alice", 1000)

    # The next grant has a larger token.
    token2, _ = r.execute_command("LOCK.ACQUIRE", "py:k", "bob", 10000)
    assert token2 > token, (token, token2)
    assert r.execute_command("LOCK.RELEASE", "py:k", "bob") == 1

    after = stats(r)
    assert after["acquires_granted"] - before["acquires_granted"] == 2, (before, after)
    assert after["acquires_retried"] - before["acquires_retried"] == 1
    assert after["acquires_contended"] - before["acquires_contended"] == 1
    assert after["extends"] - before["extends"] == 2
    assert after["releases"] - before["releases"] == 2
    assert after["errors_notowner"] - before["errors_notowner"] == 3
    assert after["errors_notheld"] - before["errors_notheld"] == 2


def test_errors(r):
    before = stats(r)
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "o")
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "o", "abc")
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "o", "-5")
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "o", "1000", "WAIT")
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "o", "1000", "BOGUS")
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "", "1000")
    expect_error("ERR", r.execute_command, "LOCK.ACQUIRE", "py:e", "x" * 257, "1000")
    expect_error("ERR", r.execute_command, "LOCK.RELEASE", "py:e")
    expect_error("ERR", r.execute_command, "LOCK.INFO")
    expect_error("ERR", r.execute_command, "LOCK._GRANT", "py:e", "o", 1, 2, 3, 0)
    expect_error("TTLMAX", r.execute_command, "LOCK.ACQUIRE", "py:e", "o", 120000)
    assert r.config_set("lockwarden.min-ttl-ms", 100)
    try:
        expect_error("TTLMIN", r.execute_command, "LOCK.ACQUIRE", "py:e", "o", 50)
    finally:
        assert r.config_set("lockwarden.min-ttl-ms", 1)
    assert r.exists("py:e") == 0, "a failed command changed nothing"

    r.set("py:str", "v")
    expect_error("WRONGTYPE", r.execute_command, "LOCK.ACQUIRE", "py:str", "o", 1000)
    expect_error("WRONGTYPE", r.execute_command, "LOCK.RELEASE", "py:str", "o")
    expect_error("WRONGTYPE", r.execute_command, "LOCK.INFO", "py:str")
    assert r.get("py:str") == b"v"
    r.delete("py:str")

    after = stats(r)
    assert after["rejected_ttlmax"] - before["rejected_ttlmax"] == 1
    assert after["rejected_ttlmin"] - before["rejected_ttlmin"] == 1


def test_binary_safe(r):
    key, owner = b"py:\x00\xffbin", b"own\x00er\xfe"
    token, _ = r.execute_command("LOCK.ACQUIRE", key, owner, 10000)
    info = lock_info(r, key)
    assert info["owner"] == owner, info
    assert info["token"] == token
    expect_error("NOTOWNER", r.execute_command, "LOCK.RELEASE", key, b"own\x00er")
    assert r.execute_command("LOCK.RELEASE", key, owner) == 1


def test_wait(port, r):
    before = stats(r)
    token, _ = r.execute_command("LOCK.ACQUIRE", "py:w", "holder", 30000)
    got = {}

    def waiter():
        w = connect(port)
        sent = time.monotonic()
        got["reply"] = w.execute_command("LOCK.ACQUIRE", "py:w", "waiter", 10000, "WAIT", 20000)
        got["at"] = time.monotonic()
        got["sent"] = sent
        w.close()

    t = threading.Thread(target=waiter)
    t.start()
    wait_until("the waiter is queued", lambda: lock_info(r, "py:w")["waiters"] == 1)
    assert stats(r)["waiters"] == 1
    time.sleep(0.2)
    assert "reply" not in got, "WAIT returned while the lock was held"
    released = time.monotonic()
    assert r.execute_command("LOCK.RELEASE", "py:w", "holder") == 1
    t.join(TIMEOUT)
    assert not t.is_alive(), "the waiter was not answered"
    new_token, ttl = got["reply"]
    assert new_token > token and ttl == 10000, got
    assert got["at"] - released < 0.5, f"handoff took {got['at'] - released:.3f}s"
    assert lock_info(r, "py:w")["owner"] == b"waiter"

    # A WAIT that runs out: nil after about its timeout.
    w = connect(port)
    sent = time.monotonic()
    assert w.execute_command("LOCK.ACQUIRE", "py:w", "late", 1000, "WAIT", 400) is None
    waited = time.monotonic() - sent
    assert 0.39 <= waited < 3.0, waited
    w.close()
    assert lock_info(r, "py:w")["waiters"] == 0

    # In a transaction WAIT is ignored.
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("LOCK.ACQUIRE", "py:w", "tx", 1000, "WAIT", 10000)
    sent = time.monotonic()
    assert pipe.execute() == [None]
    assert time.monotonic() - sent < 3.0
    assert r.execute_command("LOCK.RELEASE", "py:w", "waiter") == 1

    after = stats(r)
    assert after["handoffs"] - before["handoffs"] == 1
    assert after["wait_timeouts"] - before["wait_timeouts"] == 1
    assert after["waiters"] == 0
    assert after["wait_max_us"] >= 200000, after


def test_session(port, r):
    before = stats(r)
    s = connect(port, single_connection_client=True)
    s.execute_command("LOCK.ACQUIRE", "py:s", "me", 60000, "SESSION")
    info = lock_info(r, "py:s")
    assert info["session"] == 1 and info["client-connected"] == 1, info
    assert info["client-id"] == s.client_id(), (info, s.client_id())
    closed = time.monotonic()
    s.close()
    wait_until("the session lock is released", lambda: r.exists("py:s") == 0)
    assert time.monotonic() - closed < 2.0
    assert stats(r)["session_releases"] - before["session_releases"] == 1


def test_resp3(port):
    r3 = connect(port, protocol=3)
    r3.execute_command("LOCK.ACQUIRE", "py:3", "me", 10000)
    reply = r3.execute_command("LOCK.INFO", "py:3")
    assert isinstance(reply, dict), reply
    assert reply[b"owner"] == b"me" and reply[b"waiters"] == 0, reply
    assert set(reply) == {
        b"owner", b"token", b"ttl", b"acquired-at", b"held", b"extensions",
        b"client-id", b"client-connected", b"session", b"waiters",
    }, reply
    assert r3.execute_command("LOCK.RELEASE", "py:3", "me") == 1
    r3.close()


def test_list(r):
    for i in range(30):
        r.execute_command("LOCK.ACQUIRE", f"py:l:{i}", f"o{i}", 60000)
        r.set(f"py:notalock:{i}", "v")
    seen = {}
    cursor = 0
    steps = 0
    while True:
        cursor, entries = r.execute_command("LOCK.LIST", "CURSOR", cursor, "MATCH", "py:l:*", "COUNT", 7)
        cursor = int(cursor)
        steps += 1
        for key, owner, token, ttl, held, waiters in entries:
            seen[key.decode()] = (owner, token, ttl, held, waiters)
        if cursor == 0:
            break
        assert steps < 10000
    assert sorted(seen) == sorted(f"py:l:{i}" for i in range(30)), seen
    for key, (owner, token, ttl, held, waiters) in seen.items():
        assert owner == b"o" + key.split(":")[-1].encode()
        assert token > 0 and 0 < ttl <= 60000 and held >= 0 and waiters == 0
    expect_error("ERR", r.execute_command, "LOCK.LIST", "COUNT", 0)
    for i in range(30):
        assert r.execute_command("LOCK.RELEASE", f"py:l:{i}", f"o{i}") == 1
        r.delete(f"py:notalock:{i}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCKWARDEN_PORT", "0")))
    args = parser.parse_args()
    if not args.port:
        parser.error("--port or LOCKWARDEN_PORT is required")
    r = connect(args.port)
    assert r.ping()
    tests = [
        ("acquire_extend_release", lambda: test_acquire_extend_release(r)),
        ("errors", lambda: test_errors(r)),
        ("binary_safe", lambda: test_binary_safe(r)),
        ("wait", lambda: test_wait(args.port, r)),
        ("session", lambda: test_session(args.port, r)),
        ("resp3", lambda: test_resp3(args.port)),
        ("list", lambda: test_list(r)),
    ]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
