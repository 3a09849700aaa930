"""The client's calls about one connection: read it (without its secrets), its metadata, its tags,
the exact listing filter, and Nango's refusals."""

from __future__ import annotations

import logging

import pytest

from app.nango.client import NangoRejected, merged_tags, without_secrets
from tests.fakes.nango import CREDENTIAL_MARKER, FakeNango
from tests.nango.clients import client_for

pytestmark = pytest.mark.anyio

SECRET_CONFIG = {
    "subdomain": "acme",
    "instance_url": "https://acme.my.salesforce.com",
    "client_secret": CREDENTIAL_MARKER + "client-secret",
    "apiToken": CREDENTIAL_MARKER + "api-token",
    "Password": CREDENTIAL_MARKER + "password",
    "credentials_id": CREDENTIAL_MARKER + "credentials-id",
    "oauth": {"private_key": CREDENTIAL_MARKER + "private-key", "region": "eu"},
}
PUBLIC_CONFIG = {
    "subdomain": "acme",
    "instance_url": "https://acme.my.salesforce.com",
    "oauth": {"region": "eu"},
}


async def test_get_connection_keeps_config_and_metadata_and_drops_every_secret(
    fake_nango: FakeNango,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_nango.add_connection(
        connection_id="c1",
        integration_id="salesforce",
        tags={"end_user_id": "u1"},
        metadata={"field_mapping": {"name": "Name"}},
        connection_config=SECRET_CONFIG,
        errors=["sync"],
    )
    async with client_for(fake_nango) as nango:
        found = await nango.get_connection("c1", "salesforce")
        fake_nango.fail_next(1, status=400, code="invalid_credentials")
        with pytest.raises(NangoRejected) as refused:
            await nango.get_connection("c1", "salesforce")
    assert found is not None
    assert found.connection_config == PUBLIC_CONFIG
    assert found.metadata == {"field_mapping": {"name": "Name"}}
    assert found.tags == {"end_user_id": "u1"}
    assert [e["type"] for e in found.errors] == ["sync"]
    assert found.created_at is not None
    assert found.last_fetched_at is not None
    # The fake answered with credentials and secret config: they were dropped on receipt.
    made = fake_nango.find("c1")
    assert made is not None
    assert CREDENTIAL_MARKER in made.full()["credentials"]["access_token"]
    logs = caplog.text + capsys.readouterr().err
    for text in (repr(found), str(vars(found)), str(refused.value), logs):
        assert CREDENTIAL_MARKER not in text
    assert "credentials" not in vars(found)


async def test_get_connection_unknown_connection_or_integration_is_none() -> None:
    fake = FakeNango(integrations=["slack"])
    fake.add_connection(connection_id="c1", integration_id="slack")
    async with client_for(fake) as nango:
        assert await nango.get_connection("nope", "slack") is None
        assert await nango.get_connection("c1", "jira") is None
        found = await nango.get_connection("c1", "slack")
    assert found is not None
    assert found.connection_id == "c1"


def test_without_secrets_looks_at_every_level() -> None:
    assert without_secrets(SECRET_CONFIG) == PUBLIC_CONFIG
    assert without_secrets({}) == {}


async def test_update_metadata_replace_and_merge(fake_nango: FakeNango) -> None:
    one = fake_nango.add_connection(connection_id="c1", metadata={"a": 1, "b": 1})
    two = fake_nango.add_connection(connection_id="c2")
    async with client_for(fake_nango) as nango:
        await nango.update_metadata(["c1", "c2"], "github", {"b": 2}, mode="merge")
        assert (one.metadata, two.metadata) == ({"a": 1, "b": 2}, {"b": 2})
        await nango.update_metadata("c1", "github", {"c": 3}, mode="replace")
        assert one.metadata == {"c": 3}
        with pytest.raises(NangoRejected) as caught:
            await nango.update_metadata(["c2", "gone"], "github", {"x": 1}, mode="merge")
    assert (caught.value.status, caught.value.code) == (404, "unknown_connection")
    assert two.metadata == {"b": 2}
    sent = [r.method for r in fake_nango.requests_to("PATCH", "/connections/metadata")]
    assert sent == ["PATCH", "PATCH"]
    assert len(fake_nango.requests_to("POST", "/connections/metadata")) == 1


async def test_update_connection_tags_sends_the_whole_merged_set(fake_nango: FakeNango) -> None:
    made = fake_nango.add_connection(
        connection_id="team/42", tags={"end_user_id": "u1", "plan": "free", "team": "a"}
    )
    async with client_for(fake_nango) as nango:
        sent = await nango.update_connection_tags(
            "team/42",
            "github",
            current=made.tags,
            changes={"organization_id": "o1", "Plan": "pro", "team": None},
        )
        with pytest.raises(NangoRejected) as caught:
            await nango.update_connection_tags("nope", "github", current={}, changes={"a": "b"})
    assert sent == {"end_user_id": "u1", "plan": "pro", "organization_id": "o1"}
    assert made.tags == sent  # Nango replaced them with exactly that
    [request] = fake_nango.requests_to("PATCH", "/connections/team/42")
    assert request.body == {"tags": sent}
    assert request.query == {"provider_config_key": "github"}
    assert (caught.value.status, caught.value.code) == (404, "not_found")


def test_merged_tags_lowercases_and_removes() -> None:
    assert merged_tags({"A": "1", "b": "2"}, {"a": "3", "B": None, "c": "4"}) == {
        "a": "3",
        "c": "4",
    }


async def test_listing_by_exact_connection_id(fake_nango: FakeNango) -> None:
    fake_nango.add_connection(connection_id="user_1", integration_id="github")
    fake_nango.add_connection(connection_id="user-1", integration_id="github")
    fake_nango.add_connection(connection_id="user_1", integration_id="slack")
    async with client_for(fake_nango) as nango:
        loose = await nango.list_connections(search="user_1")
        exact = await nango.list_connections(connection_id="user_1", integration_ids=["github"])
    assert len(loose) == 3  # "_" matches "-" in Nango's search
    assert [(c["connection_id"], c["provider_config_key"]) for c in exact] == [("user_1", "github")]
    assert fake_nango.requests[-1].query == {
        "limit": "1000",
        "page": "0",
        "connectionId": "user_1",
        "integrationId": "github",
    }


async def test_reconnect_for_a_connection_nango_lacks_is_unknown_connection(
    fake_nango: FakeNango,
) -> None:
    async with client_for(fake_nango) as nango:
        with pytest.raises(NangoRejected) as caught:
            await nango.create_reconnect_session({"connection_id": "c", "integration_id": "x"})
        with pytest.raises(NangoRejected) as invalid:
            await nango.create_reconnect_session({"connection_id": "c"})
    assert (caught.value.status, caught.value.code) == (400, "unknown_connection")
    assert (invalid.value.status, invalid.value.code) == (400, "invalid_body")
    assert "integration_id" in invalid.value.message
