"""Routing a push to the nodes that hold its users: presence lookup, then one push job per node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from notify_server.notifications import UnreadState
from notify_server.presence import Presence
from notify_server.push import PushItem, PushTransport


def group_by_node(nodes: Mapping[str, Sequence[str]], items: Sequence[PushItem]) -> dict[str, list[PushItem]]:
    """{node: its users} and items -> {node: the items of its users}."""
    by_user: dict[str, list[PushItem]] = {}
    for item in items:
        by_user.setdefault(item.user_id, []).append(item)
    grouped = {node: [i for user_id in users for i in by_user.get(user_id, ())] for node, users in nodes.items()}
    return {node: node_items for node, node_items in grouped.items() if node_items}


async def push_unread_counts(
    presence: Presence, transport: PushTransport, states: Mapping[str, UnreadState]
) -> int:
    """Send fresh unread counts to every tab of these users on every node; returns jobs enqueued."""
    nodes = await presence.nodes_for_users(list(states))
    items = [PushItem(user_id, unread_count=s.count, unread_version=s.version) for user_id, s in states.items()]
    by_node = group_by_node(nodes, items)
    await transport.enqueue(by_node)
    return len(by_node)
