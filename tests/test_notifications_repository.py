"""The notification repository (SPEC §6 `notifications`, §8 list / read semantics)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from notify_server.storage.inbox import InboxFilter
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient, UnknownCursor
from tests.helpers import insert, mark_all_read, mark_read, store_one


def new_event(event_id: str, *user_ids: str, title: str = "Claim Rejected", **overrides: Any) -> NewNotifications:
    values: dict[str, Any] = dict(
        event_id=event_id,
        event_type="CLAIM_REJECTED",
        title=title,
        body="Your claim for Dr. Smith has been rejected.",
        priority="HIGH",
        action_url="/claims/abc123",
        metadata={"source": "test"},
        recipients=[Recipient(user_id) for user_id in user_ids],
    )
    values.update(overrides)
    return NewNotifications(**values)


async def store(repository: NotificationRepository, user_id: str, count: int) -> list[str]:
    """`count` notifications for one user, one event each; their ids oldest first."""
    ids = []
    for n in range(count):
        [row] = await insert(repository, new_event(f"evt-{user_id}-{n}", user_id, title=f"n{n}"))
        ids.append(row.notification_id)
    return ids


async def row_count(pool: Any) -> int:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM notifications")
        (count,) = await cur.fetchone()
    return int(count)


# ---------------------------------------------------------------- insert_many


async def test_insert_many_stores_one_row_per_recipient(repository: NotificationRepository) -> None:
    new = new_event("evt-1", "u1", "u2", recipients=[Recipient("u1", "u1@example.com"), Recipient("u2")])

    rows = await insert(repository, new)

    assert sorted((r.recipient_id, r.recipient_email) for r in rows) == [("u1", "u1@example.com"), ("u2", None)]
    for row in rows:
        assert uuid.UUID(row.notification_id)
        assert (row.event_id, row.event_type, row.title, row.priority) == (
            "evt-1", "CLAIM_REJECTED", "Claim Rejected", "HIGH"
        )
        assert row.action_url == "/claims/abc123"
        assert row.metadata == {"source": "test"}
        assert row.read_at is None
        assert row.created_at.tzinfo is not None


async def test_insert_many_twice_inserts_nothing_the_second_time(
    repository: NotificationRepository, db_pool: Any
) -> None:
    new = new_event("evt-1", "u1", "u2")
    await insert(repository, new)

    assert await insert(repository, new) == []
    assert await row_count(db_pool) == 2


async def test_insert_many_stores_only_the_recipients_not_yet_stored(
    repository: NotificationRepository, db_pool: Any
) -> None:
    await insert(repository, new_event("evt-1", "u1"))

    rows = await insert(repository, new_event("evt-1", "u1", "u2"))

    assert [r.recipient_id for r in rows] == ["u2"]
    assert await row_count(db_pool) == 2


async def test_same_recipient_in_two_events_gets_two_rows(repository: NotificationRepository) -> None:
    await insert(repository, new_event("evt-1", "u1"))
    await insert(repository, new_event("evt-2", "u1"))

    assert await repository.count_unread("u1") == 2


# ---------------------------------------------------------------- count_unread


async def test_count_unread_counts_only_this_users_unread(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 3)
    await store(repository, "u2", 2)
    await mark_read(repository, "u1", ids[0])

    assert await repository.count_unread("u1") == 2
    assert await repository.count_unread("u2") == 2
    assert await repository.count_unread("nobody") == 0


# ---------------------------------------------------------------- list_for_user


async def test_list_for_user_is_newest_first(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 3)

    page = await repository.list_for_user("u1", limit=10)

    assert [n.notification_id for n in page.items] == ids[::-1]
    assert page.next_before is None


async def test_list_for_user_shows_only_that_users_notifications(repository: NotificationRepository) -> None:
    await store(repository, "u1", 2)
    await store(repository, "u2", 2)

    page = await repository.list_for_user("u1", limit=10)

    assert {n.recipient_id for n in page.items} == {"u1"}


async def test_cursor_pagination_walks_every_item_once(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 5)

    first = await repository.list_for_user("u1", limit=2)
    second = await repository.list_for_user("u1", limit=2, before=first.next_before)
    third = await repository.list_for_user("u1", limit=2, before=second.next_before)

    assert [n.notification_id for n in first.items] == [ids[4], ids[3]]
    assert first.next_before == ids[3]
    assert [n.notification_id for n in second.items] == [ids[2], ids[1]]
    assert second.next_before == ids[1]
    assert [n.notification_id for n in third.items] == [ids[0]]
    assert third.next_before is None


async def test_full_last_page_has_no_next_cursor(repository: NotificationRepository) -> None:
    await store(repository, "u1", 2)

    page = await repository.list_for_user("u1", limit=2)

    assert len(page.items) == 2
    assert page.next_before is None


async def test_unread_only_skips_read_items(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 4)
    await mark_read(repository, "u1", ids[3])
    await mark_read(repository, "u1", ids[1])

    page = await repository.list_for_user("u1", limit=10, inbox=InboxFilter(read=False))

    assert [n.notification_id for n in page.items] == [ids[2], ids[0]]


async def test_unread_only_pages_with_a_cursor(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 5)
    await mark_read(repository, "u1", ids[3])

    first = await repository.list_for_user("u1", limit=2, inbox=InboxFilter(read=False))
    second = await repository.list_for_user("u1", limit=2, inbox=InboxFilter(read=False), before=first.next_before)

    assert [n.notification_id for n in first.items] == [ids[4], ids[2]]
    assert [n.notification_id for n in second.items] == [ids[1], ids[0]]
    assert second.next_before is None


async def test_cursor_of_another_users_notification_is_unknown(repository: NotificationRepository) -> None:
    await store(repository, "u1", 1)
    [other] = await store(repository, "u2", 1)

    with pytest.raises(UnknownCursor):
        await repository.list_for_user("u1", limit=10, before=other)


@pytest.mark.parametrize("cursor", ["garbage", "", "'; DROP TABLE notifications; --", "0f1b0f1b-0000-4000-8000-000000000002"])
async def test_garbage_or_unknown_cursor_is_unknown(repository: NotificationRepository, cursor: str) -> None:
    await store(repository, "u1", 1)

    with pytest.raises(UnknownCursor):
        await repository.list_for_user("u1", limit=10, before=cursor)


async def test_list_with_zero_limit_returns_an_empty_page_or_refuses_clearly(
    repository: NotificationRepository,
) -> None:
    await store(repository, "u1", 1)

    try:
        page = await repository.list_for_user("u1", limit=0)
    except ValueError:
        return
    assert page.items == []


# ---------------------------------------------------------------- list_since (catch-up)


async def test_list_since_returns_newer_items_oldest_first(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 4)
    await store(repository, "u2", 1)

    items = await repository.list_since("u1", ids[1], limit=10)

    assert [n.notification_id for n in items] == [ids[2], ids[3]]


async def test_list_since_is_bounded_and_refuses_unknown_ids(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 4)
    [other] = await store(repository, "u2", 1)

    assert [n.notification_id for n in await repository.list_since("u1", ids[0], limit=2)] == ids[1:3]
    with pytest.raises(UnknownCursor):
        await repository.list_since("u1", other, limit=10)


# ---------------------------------------------------------------- mark_read / mark_all_read


async def test_mark_read_marks_the_owners_notification(repository: NotificationRepository) -> None:
    [nid] = await store(repository, "u1", 1)

    marked = await mark_read(repository, "u1", nid)

    assert marked is not None
    assert marked.notification_id == nid
    assert isinstance(marked.read_at, dt.datetime)
    assert await repository.count_unread("u1") == 0


async def test_mark_read_of_another_users_notification_returns_none_and_changes_nothing(
    repository: NotificationRepository,
) -> None:
    [nid] = await store(repository, "u1", 1)

    assert await mark_read(repository, "u2", nid) is None

    [item] = (await repository.list_for_user("u1", limit=10)).items
    assert item.read_at is None


@pytest.mark.parametrize("notification_id", ["garbage", "", "0f1b0f1b-0000-4000-8000-000000000003"])
async def test_mark_read_of_unknown_or_garbage_id_returns_none(
    repository: NotificationRepository, notification_id: str
) -> None:
    await store(repository, "u1", 1)

    assert await mark_read(repository, "u1", notification_id) is None
    assert await repository.count_unread("u1") == 1


async def test_mark_read_again_keeps_the_first_read_at(repository: NotificationRepository, db_pool: Any) -> None:
    [nid] = await store(repository, "u1", 1)
    await mark_read(repository, "u1", nid)
    first_read_at = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE notifications SET read_at = %s WHERE notification_id = %s", (first_read_at, nid))

    again = await mark_read(repository, "u1", nid)

    assert again is not None
    assert again.read_at == first_read_at


async def test_mark_all_read_returns_how_many_changed(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 3)
    await store(repository, "u2", 2)
    await mark_read(repository, "u1", ids[0])

    assert await mark_all_read(repository, "u1") == 2
    assert await repository.count_unread("u1") == 0
    assert await repository.count_unread("u2") == 2
    assert await mark_all_read(repository, "u1") == 0


async def test_mark_all_read_keeps_earlier_read_at(repository: NotificationRepository) -> None:
    ids = await store(repository, "u1", 2)
    first = await mark_read(repository, "u1", ids[0])
    assert first is not None

    await mark_all_read(repository, "u1")

    items = {n.notification_id: n for n in (await repository.list_for_user("u1", limit=10)).items}
    assert items[ids[0]].read_at == first.read_at
    assert items[ids[1]].read_at is not None


async def test_the_same_event_stored_twice_at_once_counts_each_row_once(
    repository: NotificationRepository, db_pool: Any
) -> None:
    import asyncio

    users = [f"u{i}" for i in range(50)]
    first, second = await asyncio.gather(
        store_one(repository, new_event("racing", *users)), store_one(repository, new_event("racing", *users))
    )

    assert len(first.notifications) + len(second.notifications) == len(users)
    assert await row_count(db_pool) == len(users)
    states = await repository.unread_states(users)
    assert {state.count for state in states.values()} == {1}


async def test_unread_versions_grow_with_every_change(repository: NotificationRepository) -> None:
    stored = await store_one(repository, new_event("v1", "u1"))
    after_insert = stored.unread["u1"]
    read = await repository.change("u1", "read", ids=[stored.notifications[0].notification_id])
    assert read.unread is not None
    assert (after_insert.count, read.unread.count) == (1, 0)
    assert read.unread.version > after_insert.version
    again = await repository.change("u1", "read", ids=[stored.notifications[0].notification_id])
    assert again.notification_ids == [] and again.unread is None  # nothing changed, no new version
