"""The model listings' loaded state, in process against the fake engine: `/api/v0/models`
(`state`, `loaded_context_length`), `instanceReference` in `/api/admin/instances`,
loaded identifiers in `/v1/models`, and `GET /v1/models/{id}`."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.server import Daemon
from tests.inprocess import Client, admin_headers, running_daemon


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    # An admin key for load/unload and the instances; the listings need none.
    return await aiohttp_client(daemon.app, headers=admin_headers(daemon))  # type: ignore[no-any-return]


async def get(client: Client, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    return response.status, await response.json()


async def load(client: Client, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/models/load", json=body)
    assert response.status == 200, await response.text()
    return await response.json()  # type: ignore[no-any-return]


async def unload(client: Client, identifier: str) -> None:
    response = await client.post("/api/v1/models/unload", json={"instance_id": identifier})
    assert response.status == 200, await response.text()


async def test_v0_models_report_the_loaded_state(client: Client) -> None:
    status, listing = await get(client, "/api/v0/models")
    assert status == 200
    echo = next(m for m in listing["data"] if m["id"] == "echo")
    assert echo["state"] == "not-loaded" and "loaded_context_length" not in echo

    await load(client, model="echo", context_length=700)
    status, listing = await get(client, "/api/v0/models")
    items = {m["id"]: m for m in listing["data"]}
    assert items["echo"]["state"] == "loaded"
    assert items["echo"]["loaded_context_length"] == 700
    assert items["echo"]["max_context_length"] == 4096
    assert items["thinker"]["state"] == "not-loaded"
    assert "loaded_context_length" not in items["thinker"]

    status, one = await get(client, "/api/v0/models/echo")
    assert status == 200
    assert (one["state"], one["loaded_context_length"]) == ("loaded", 700)
    status, other = await get(client, "/api/v0/models/thinker")
    assert other["state"] == "not-loaded"

    await unload(client, "echo")
    status, one = await get(client, "/api/v0/models/echo")
    assert one["state"] == "not-loaded" and "loaded_context_length" not in one


async def test_instance_reference_is_unique_and_stable(client: Client) -> None:
    first = await load(client, model="echo")
    second = await load(client, model="echo", identifier="foo")
    ref_echo = first["instance"]["instanceReference"]
    ref_foo = second["instance"]["instanceReference"]
    assert ref_echo and ref_foo and ref_echo != ref_foo
    status, instances = await get(client, "/api/admin/instances")
    assert status == 200
    by_id = {i["identifier"]: i["instanceReference"] for i in instances}
    assert by_id == {"echo": ref_echo, "foo": ref_foo}  # the same on every listing

    await unload(client, "foo")
    again = await load(client, model="echo", identifier="foo")
    assert again["instance"]["instanceReference"] not in (ref_foo, ref_echo)


async def test_v1_models_list_loaded_identifiers(client: Client) -> None:
    await load(client, model="echo", identifier="foo")
    status, listing = await get(client, "/v1/models")
    assert status == 200
    ids = [m["id"] for m in listing["data"]]
    assert "echo" in ids and "foo" in ids and ids.count("foo") == 1
    assert ids.index("foo") > ids.index("echo")  # after the catalog's keys
    foo = next(m for m in listing["data"] if m["id"] == "foo")
    assert foo == {"id": "foo", "object": "model", "created": foo["created"], "owned_by": "test"}


async def test_v1_models_without_jit_list_only_loaded(aiohttp_client: Any, tmp_path: Path) -> None:
    async with running_daemon(tmp_path, jit_loading=False) as daemon:
        client = await aiohttp_client(daemon.app, headers=admin_headers(daemon))
        assert (await get(client, "/v1/models"))[1]["data"] == []
        status, error = await get(client, "/v1/models/echo")
        assert status == 404 and error["error"]["code"] == "model_not_found"
        await load(client, model="echo", identifier="foo")
        status, listing = await get(client, "/v1/models")
        assert [m["id"] for m in listing["data"]] == ["foo"]
        status, model = await get(client, "/v1/models/foo")
        assert status == 200 and model["id"] == "foo"


async def test_v1_model_retrieve(client: Client) -> None:
    status, model = await get(client, "/v1/models/echo")
    assert status == 200
    assert model["id"] == "echo" and model["object"] == "model"
    assert model["owned_by"] == "test" and isinstance(model["created"], int)
    status, variant = await get(client, "/v1/models/echo@q4_k_m")
    assert status == 200 and variant["id"] == "echo@q4_k_m"
    await load(client, model="thinker", identifier="deep/thought")
    status, custom = await get(client, "/v1/models/deep/thought")
    assert status == 200 and custom["id"] == "deep/thought"

    status, error = await get(client, "/v1/models/no-such-model")
    assert status == 404
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "model_not_found"
    assert "no-such-model" in error["error"]["message"]
