"""Nango's input rules, as its server checks them, for the fake Nango (``tests/fakes/nango.py``).

Each rule names the file of NangoHQ/nango (at 2f4c0af, v0.71.4) it was read from. Problems are
collected as Nango's ``zodErrorToHTTP`` reports them (``packages/utils/lib/express/validate.ts``):
``[{"code", "message", "path": [...]}]``, under ``{"error": {"code": "invalid_body" |
"invalid_query_params" | "invalid_uri_params", "errors": [...]}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# packages/shared/lib/services/tags/schema.ts
TAG_KEY = re.compile(r"[a-zA-Z][a-zA-Z0-9_\-./]*")
TAG_MAX_COUNT = 10
TAG_KEY_MAX_LENGTH = 64
TAG_VALUE_MAX_LENGTH = 255
# packages/server/lib/helpers/validation.ts: providerConfigKeySchema, connectionIdSchema
PROVIDER_CONFIG_KEY = re.compile(r"[a-zA-Z0-9~:.@ _-]+")
CONNECTION_ID = re.compile(r"""[a-zA-Z0-9,.;:=+~\[\]|@${}"'\\/_ -]+""")
MAX_ID_LENGTH = 255
# zod 4's z.string().email() (packages/zod/src/v4/core/regexes.ts), used with .min(5)
EMAIL = re.compile(
    r"(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}"
)
# packages/server/lib/controllers/connect/postSessions.ts (bodySchema), postReconnect.ts
SESSION_KEYS = frozenset(
    {
        "end_user",
        "organization",
        "allowed_integrations",
        "integrations_config_defaults",
        "overrides",
        "webhook_url_override",
        "tags",
    }
)
RECONNECT_KEYS = (SESSION_KEYS - {"allowed_integrations"}) | {"connection_id", "integration_id"}
END_USER_KEYS = frozenset({"id", "email", "display_name", "tags"})
ORGANIZATION_KEYS = frozenset({"id", "display_name"})
CONFIG_DEFAULT_KEYS = frozenset({"user_scopes", "authorization_params", "connection_config"})
# packages/server/lib/controllers/shared/connections/patchConnection.ts
PATCH_CONNECTION_KEYS = frozenset({"end_user", "tags", "webhook_url_override"})
# .../connection/connectionId/metadata/postMetadata.ts and patchMetadata.ts
METADATA_KEYS = frozenset({"connection_id", "provider_config_key", "metadata"})
# packages/server/lib/controllers/connection/getConnections.ts
LIST_KEYS = frozenset(
    {
        "connectionId",
        "search",
        "endUserId",
        "integrationId",
        "endUserOrganizationId",
        "tags",
        "limit",
        "page",
    }
)
LIST_DEFAULT_LIMIT = 10_000
LIST_MAX_LIMIT = 2000
# .../connection/connectionId/getConnection.ts
GET_CONNECTION_KEYS = frozenset(
    {"provider_config_key", "refresh_token", "force_refresh", "refresh_github_app_jwt_token"}
)

Path = Sequence[str | int]


class Issues(list[dict[str, Any]]):
    """Problems found in one request, in Nango's reported shape."""

    def add(self, path: Path, message: str, code: str = "custom") -> None:
        self.append({"code": code, "message": message, "path": [str(part) for part in path]})


def unknown_keys(
    value: Mapping[str, Any], allowed: frozenset[str], path: Path, issues: Issues
) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        issues.add(path, f"Unrecognized key(s) in object: {unknown}", "unrecognized_keys")


def text(
    value: object,
    path: Path,
    issues: Issues,
    *,
    min_length: int = 0,
    max_length: int | None = None,
    pattern: re.Pattern[str] | None = None,
) -> str | None:
    if not isinstance(value, str):
        issues.add(path, "Invalid input: expected string", "invalid_type")
        return None
    if len(value) < min_length:
        issues.add(path, f"Too small: expected string to have >={min_length} characters")
    elif max_length is not None and len(value) > max_length:
        issues.add(path, f"Too big: expected string to have <={max_length} characters")
    elif pattern is not None and not pattern.fullmatch(value):
        issues.add(path, "Invalid string: must match pattern", "invalid_format")
    else:
        return value
    return None


def integration_id(value: object, path: Path, issues: Issues) -> str | None:
    return text(value, path, issues, max_length=MAX_ID_LENGTH, pattern=PROVIDER_CONFIG_KEY)


def connection_id(value: object, path: Path, issues: Issues) -> str | None:
    return text(value, path, issues, max_length=MAX_ID_LENGTH, pattern=CONNECTION_ID)


def is_email(value: str) -> bool:
    return len(value) >= 5 and EMAIL.fullmatch(value) is not None


def tags(value: object, path: Path, issues: Issues, *, min_value: int = 1) -> dict[str, str]:
    """``connectionTagsSchema``: keys checked then lowercased, values kept as sent.

    End users' own tags (``connectionEndUserTagsSchema``) allow empty values: ``min_value=0``.
    """
    if not isinstance(value, Mapping):
        issues.add(path, "Invalid input: expected record", "invalid_type")
        return {}
    for key, tag in value.items():
        if not TAG_KEY.fullmatch(key):
            issues.add(
                [*path, key],
                "Tag keys must start with a letter and contain only alphanumerics, underscores,"
                " hyphens, periods, or slashes",
            )
        elif len(key) > TAG_KEY_MAX_LENGTH:
            issues.add([*path, key], f"Tag keys must be at most {TAG_KEY_MAX_LENGTH} characters")
        text(tag, [*path, key], issues, min_length=min_value, max_length=TAG_VALUE_MAX_LENGTH)
    _tag_set_rules(value, path, issues)
    return {key.lower(): tag for key, tag in value.items() if isinstance(tag, str)}


def _tag_set_rules(value: Mapping[str, Any], path: Path, issues: Issues) -> None:
    """``validateCaseInsensitiveTagKeys``: count, keys equal once lowercased, the email tag."""
    if len(value) > TAG_MAX_COUNT:
        issues.add(path, f"Tags cannot contain more than {TAG_MAX_COUNT} keys")
        return
    seen: set[str] = set()
    for key, tag in value.items():
        lowered = key.lower()
        if lowered in seen:
            issues.add(path, f'Duplicate tag key after case normalization: "{lowered}"')
        seen.add(lowered)
        if lowered == "end_user_email" and not (isinstance(tag, str) and is_email(tag)):
            issues.add(path, 'Tag "end_user_email" must be a valid email')


def end_user(value: object, path: Path, issues: Issues) -> dict[str, Any] | None:
    """``endUserSchema``: ``{id, email?, display_name?, tags?}``, strict."""
    if not isinstance(value, Mapping):
        issues.add(path, "Invalid input: expected object", "invalid_type")
        return None
    unknown_keys(value, END_USER_KEYS, path, issues)
    text(value.get("id"), [*path, "id"], issues, min_length=1, max_length=MAX_ID_LENGTH)
    if "email" in value:
        email = text(value["email"], [*path, "email"], issues, min_length=5)
        if email is not None and not is_email(email):
            issues.add([*path, "email"], "Invalid email address", "invalid_format")
    if "display_name" in value:
        text(value["display_name"], [*path, "display_name"], issues, max_length=MAX_ID_LENGTH)
    if "tags" in value:
        tags(value["tags"], [*path, "tags"], issues, min_value=0)
    return dict(value)


def _organization(value: object, path: Path, issues: Issues) -> None:
    if not isinstance(value, Mapping):
        issues.add(path, "Invalid input: expected object", "invalid_type")
        return
    unknown_keys(value, ORGANIZATION_KEYS, path, issues)
    text(value.get("id"), [*path, "id"], issues, max_length=MAX_ID_LENGTH)
    if "display_name" in value:
        text(value["display_name"], [*path, "display_name"], issues, max_length=MAX_ID_LENGTH)


def _integration_record(value: object, path: Path, issues: Issues, *, strict: bool) -> None:
    """``integrations_config_defaults`` (strict values) and ``overrides``: keyed by integration."""
    if not isinstance(value, Mapping):
        issues.add(path, "Invalid input: expected record", "invalid_type")
        return
    for key, item in value.items():
        integration_id(key, [*path, key], issues)
        if not isinstance(item, Mapping):
            issues.add([*path, key], "Invalid input: expected object", "invalid_type")
        elif strict:
            unknown_keys(item, CONFIG_DEFAULT_KEYS, [*path, key], issues)


def webhook_url(value: object, path: Path, issues: Issues) -> None:
    url = text(value, path, issues)
    if url and not re.fullmatch(r"https?://[^\s/?#]+\S*", url):
        issues.add(path, "Invalid URL", "invalid_format")


def session_body(body: object, *, reconnect: bool) -> tuple[dict[str, Any], Issues]:
    """``POST /connect/sessions`` (or ``/reconnect``): the body with its tags lowercased."""
    issues = Issues()
    if not isinstance(body, Mapping):
        issues.add([], "Invalid input: expected object", "invalid_type")
        return {}, issues
    checked = dict(body)
    unknown_keys(body, RECONNECT_KEYS if reconnect else SESSION_KEYS, [], issues)
    if reconnect:
        connection_id(body.get("connection_id"), ["connection_id"], issues)
        integration_id(body.get("integration_id"), ["integration_id"], issues)
    elif "end_user" not in body and "tags" not in body:
        # bodySchema wants end_user; only a body with tags may go without it.
        issues.add(["end_user"], "Invalid input: expected object, received undefined")
    _session_parts(body, issues)
    if "tags" in body:
        checked["tags"] = tags(body["tags"], ["tags"], issues)
    return checked, issues


def _session_parts(body: Mapping[str, Any], issues: Issues) -> None:
    """The optional parts of a session body, each checked by its own schema."""
    if "end_user" in body:
        end_user(body["end_user"], ["end_user"], issues)
    if "organization" in body:
        _organization(body["organization"], ["organization"], issues)
    allowed = body.get("allowed_integrations", [])
    if not isinstance(allowed, list):
        issues.add(["allowed_integrations"], "Invalid input: expected array", "invalid_type")
    else:
        for index, item in enumerate(allowed):
            integration_id(item, ["allowed_integrations", index], issues)
    for key in ("integrations_config_defaults", "overrides"):
        if key in body:
            _integration_record(body[key], [key], issues, strict=key != "overrides")
    if "webhook_url_override" in body and body["webhook_url_override"] != "":
        webhook_url(body["webhook_url_override"], ["webhook_url_override"], issues)


def patch_connection_body(body: object) -> Issues:
    """``PATCH /connections/{id}``: ``{end_user?, tags?, webhook_url_override?}``, strict."""
    issues = Issues()
    if not isinstance(body, Mapping):
        issues.add([], "Invalid input: expected object", "invalid_type")
        return issues
    unknown_keys(body, PATCH_CONNECTION_KEYS, [], issues)
    if "end_user" in body:
        end_user(body["end_user"], ["end_user"], issues)
    if "tags" in body:
        tags(body["tags"], ["tags"], issues)
    if "webhook_url_override" in body and body["webhook_url_override"] != "":
        webhook_url(body["webhook_url_override"], ["webhook_url_override"], issues)
    return issues


def metadata_body(body: object) -> tuple[list[str], Issues]:
    """``POST``/``PATCH /connections/metadata``: the connection IDs it names, and problems."""
    issues = Issues()
    if not isinstance(body, Mapping):
        issues.add([], "Invalid input: expected object", "invalid_type")
        return [], issues
    unknown_keys(body, METADATA_KEYS, [], issues)
    raw = body.get("connection_id")
    ids = raw if isinstance(raw, list) else [raw]
    for index, item in enumerate(ids):
        connection_id(
            item, ["connection_id", index] if isinstance(raw, list) else ["connection_id"], issues
        )
    integration_id(body.get("provider_config_key"), ["provider_config_key"], issues)
    if not isinstance(body.get("metadata"), Mapping):
        issues.add(["metadata"], "Invalid input: expected record", "invalid_type")
    return [item for item in ids if isinstance(item, str)], issues


def like(search: str) -> re.Pattern[str]:
    """Postgres ``ILIKE '%<search>%'`` (``connection.service.ts`` listConnections) as a regex.

    ``%`` is any run of characters, ``_`` any one, ``\\`` makes the next one literal (so a search
    ending in a backslash escapes the closing ``%``). Use with ``fullmatch``.
    """
    parts = []
    escaped = False
    for char in f"%{search}%":
        if escaped or char not in "\\%_":
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            parts.append(".*" if char == "%" else ".")
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def list_query(query: Mapping[str, Sequence[str]]) -> tuple[dict[str, Any], Issues]:
    """``GET /connections``' query: each value once, ``tags[k]=v`` gathered, strict.

    Answers the filters with ``limit`` and ``page`` as numbers (``limit`` 10,000 when absent).
    """
    issues = Issues()
    found: dict[str, Any] = {"tags": {}}
    for key, values in query.items():
        name, _, rest = key.partition("[")
        if name not in LIST_KEYS or (name == "tags") != bool(rest):
            issues.add([], f"Unrecognized key(s) in object: ['{key}']", "unrecognized_keys")
            continue
        if len(values) != 1:
            issues.add([name], "Invalid input: expected string, received array", "invalid_type")
            continue
        if name == "tags":
            found["tags"][rest.removesuffix("]")] = values[0]
        else:
            found[name] = values[0]
    for name in ("connectionId", "search", "endUserId", "endUserOrganizationId", "integrationId"):
        if name in found:
            text(found[name], [name], issues, min_length=1, max_length=MAX_ID_LENGTH)
    found["tags"] = tags(found["tags"], ["tags"], issues)
    found["limit"] = _number(
        found.get("limit"), "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT, issues
    )
    found["page"] = _number(found.get("page"), "page", 0, 0, None, issues)
    return found, issues


def _number(
    value: str | None, name: str, default: int, low: int, high: int | None, issues: Issues
) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        issues.add([name], "Invalid input: expected number, received NaN", "invalid_type")
        return default
    if number < low or (high is not None and number > high):
        issues.add([name], f"Number must be between {low} and {high}", "too_big")
    return number
