"""The ledger's rows on SQLite and PostgreSQL: ticks and ends tile a run.

Writes server and drive rows with the store's own functions, then bills
them out of order (ticks, a change, the end) and checks the rows: no gap,
no overlap, nothing billed while stopped, a tick that passed an end not
billed twice, library drives nobody's.
"""

from __future__ import annotations

import itertools

from overcast.model.drive import Drive
from overcast.model.server import Server, ServerStatus
from overcast.store import Store
from overcast.store import drives as drive_rows
from overcast.store import servers as server_rows
from overcast.store import usage as rows
from test_store_servers import add_user, new_id


def _server(user: str) -> Server:
    return Server(
        new_id(), user, {"name": "s", "cpu": "1000", "mem": "256"}, ServerStatus.STARTING, "h"
    )


async def test_a_run_is_tiled_by_ticks_and_its_end(store: Store) -> None:
    user = await add_user(store)
    server = _server(user.uuid)
    async with store.write() as tx:
        await server_rows.insert_server(tx, server)
        # Not running yet: nothing to bill.
        assert await rows.bill_server(tx, server.uuid, 50.0, "exists") == 0.0
        await server_rows.set_status(tx, server.uuid, ServerStatus.ACTIVE, started=100.0)
    for tick in (110.0, 125.5, 125.5, 90.0):  # a repeat and one in the past add nothing
        async with store.write() as tx:
            await rows.bill_servers(tx, tick, "exists")
    async with store.write() as tx:
        assert await rows.bill_server(tx, server.uuid, 130.25, "exit") == 4.75
        await server_rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
        assert await rows.bill_servers(tx, 500.0, "exists") == 0  # stopped: no more
        # Started again: a new run from its own start.
        await server_rows.set_status(tx, server.uuid, ServerStatus.ACTIVE, started=1000.0)
        assert await rows.bill_server(tx, server.uuid, 1001.0, "exit") == 1.0
    async with store.read() as tx:
        found = await rows.usage_between(tx, user.uuid, 0, 2000)
    spans = [(u.start, u.end, u.reason) for u in found]
    assert spans == [
        (100.0, 110.0, "exists"),
        (110.0, 125.5, "exists"),
        (125.5, 130.25, "exit"),
        (1000.0, 1001.0, "exit"),
    ]
    assert {(u.cpu, u.mem, u.kind, u.object) for u in found} == {(1000, 256, "server", server.uuid)}
    for before, after in itertools.pairwise(found[:3]):
        assert before.end == after.start
    async with store.read() as tx:
        window = await rows.usage_between(tx, user.uuid, 120.0, 126.0)
    assert [(u.start, u.end) for u in window] == [(110.0, 125.5), (125.5, 130.25)]


async def test_drives_are_billed_by_size_and_library_drives_not(store: Store) -> None:
    user = await add_user(store)
    mine = Drive(uuid=new_id(), user=user.uuid, name="d", size=3 << 30)
    library = Drive(uuid=new_id(), user=None, name="lib", size=1 << 30)
    async with store.write() as tx:
        await drive_rows.insert_drive(tx, mine)
        await drive_rows.insert_drive(tx, library)
        created = (await drive_rows.get_drive(tx, mine.uuid)) is not None
    assert created
    async with store.write() as tx:
        await rows.bill_drives(tx, 4e9, "exists")
        assert await rows.bill_drive(tx, library.uuid, 4.1e9, "destroy") == 0.0
        assert await rows.bill_drive(tx, mine.uuid, 4e9 + 10, "destroy") == 10.0
    async with store.read() as tx:
        found = await rows.usage_between(tx, None, 0, 5e9)
    assert {u.object for u in found} == {mine.uuid}
    assert [u.reason for u in found] == ["exists", "destroy"]
    assert {u.bytes for u in found} == {3 << 30}
    assert found[0].end == found[1].start
