"""The exit's list reloads and the re-authorisation of live sessions (exitnode.revocations)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exitnode.revocations import LiveSessions, RevocationWatch
from l2bridge.errors import NotAuthorized, StateError
from l2bridge.identity.keyfiles import save_allow_list
from l2bridge.identity.keys import AllowList, Authorization, Authorizer, HybridSigningKey


class FakeSession:
    def __init__(self, authorizer: Authorizer, key: HybridSigningKey) -> None:
        self.authorizer, self.key = authorizer, key
        self.closed = False
        self.asked: list[float] = []

    def reauthorize(self, now: float) -> Authorization:
        self.asked.append(now)
        if self.closed:
            raise StateError("session closed")
        return self.authorizer.authorize(self.key.public, None, now)

    def close(self, parting: int | None = None) -> None:
        self.closed = True
        self.parting = parting  # the CLOSE reason a real session would seal first


class FakeLink:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.close_calls = 0
        self.revoked: bool | None = None

    async def close(self, *, revoked: bool = False) -> None:
        self.close_calls += 1
        self.revoked = revoked


@pytest.fixture(scope="module")
def device() -> HybridSigningKey:
    return HybridSigningKey.generate()


def test_allow_list_reload_changes_admission_and_a_bad_file_keeps_the_list(
    tmp_path: Path, device: HybridSigningKey
) -> None:
    path = tmp_path / "allowed.txt"
    save_allow_list(AllowList(((device.node_id, "laptop"),)), path)
    authorizer = Authorizer(allow_list=AllowList(((device.node_id, "laptop"),)))
    watch = RevocationWatch(authorizer, [], allow_list=path)
    assert watch.check() == 0
    save_allow_list(AllowList(), path)
    assert watch.check() == 1
    with pytest.raises(NotAuthorized):
        authorizer.authorize(device.public, None, 0.0)
    save_allow_list(AllowList(((device.node_id, "laptop"),)), path)
    assert watch.check() == 1 and authorizer.authorize(device.public, None, 0.0).name == "laptop"
    path.write_text("not-hex laptop\n")
    assert watch.check() == 0 and watch.failures == 1
    assert authorizer.authorize(device.public, None, 0.0).name == "laptop"


def test_refused_sessions_are_wiped_and_closed_the_others_kept(device: HybridSigningKey) -> None:
    other = HybridSigningKey.generate()
    entries = ((device.node_id, "laptop"), (other.node_id, "phone"))
    authorizer = Authorizer(allow_list=AllowList(entries))

    async def body() -> None:
        live = LiveSessions()
        gone, kept = (
            FakeLink(FakeSession(authorizer, device)),
            FakeLink(FakeSession(authorizer, other)),
        )
        assert live.add(gone, "laptop", 1.0) and live.add(kept, "phone", 1.0)
        assert live.recheck(2.0) == 0
        authorizer.update_allow_list(AllowList(entries[1:]))
        assert live.recheck(3.0) == 1
        await asyncio.sleep(0)
        assert gone.session.closed and gone.close_calls == 1
        assert gone.session.parting is None and gone.revoked is False  # not revoked: bare
        assert not kept.session.closed and kept.close_calls == 0
        assert len(live) == 1 and live.refused == 1
        # A link admitted after the change is refused on the way in.
        late = FakeLink(FakeSession(authorizer, device))
        assert not live.add(late, "laptop", 4.0)
        await asyncio.sleep(0)
        assert late.session.closed and len(live) == 1
        # A session that ended by itself is dropped from the set, not counted as refused.
        kept.session.closed = True
        assert live.recheck(5.0) == 0 and len(live) == 0 and live.refused == 2
        assert kept.close_calls == 0

    asyncio.run(body())


def test_sessions_are_rechecked_periodically_without_any_file_change(
    device: HybridSigningKey,
) -> None:
    authorizer = Authorizer(allow_list=AllowList(((device.node_id, "laptop"),)))
    watch = RevocationWatch(authorizer, [], interval=0.01)
    now = [100.0]

    async def body() -> None:
        live = LiveSessions(interval=0.05)
        link = FakeLink(FakeSession(authorizer, device))
        live.add(link, "laptop", now[0])
        stop = asyncio.Event()
        task = asyncio.ensure_future(watch.run(stop, live, lambda: now[0]))
        for _ in range(200):  # bounded: 2 s
            if len(link.session.asked) >= 3:
                break
            await asyncio.sleep(0.01)
        # The clock the checks use is the one passed in (the exit's).
        assert link.session.asked[:1] == [100.0] and len(link.session.asked) >= 3
        # Between list reloads the interval alone brings the check: no reload happened.
        assert watch.reloads == 0 and live.rechecks >= 2
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(body())
