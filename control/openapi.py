# Generates control/openapi.json, the checked-in OpenAPI document of the control
# plane API: python3 control/openapi.py > control/openapi.json
# The test `the_openapi_document_covers_every_route` checks it against the router.
import json
S = lambda name: {"$ref": f"#/components/schemas/{name}"}
def obj(props, required=None, extra=False):
    o = {"type": "object", "properties": props}
    if required: o["required"] = required
    if not extra: o["additionalProperties"] = False
    return o
s = {"type": "string"}; i = {"type": "integer", "format": "int64"}; b = {"type": "boolean"}
schemas = {
 "Error": obj({"error": obj({"code": s, "message": s}, ["code", "message"])}, ["error"]),
 "TokenKind": {"type": "string", "enum": ["user", "agent", "relay", "app", "admin"]},
 "PublicKey": obj({"kid": s, "key": {"type": "string", "description": "raw Ed25519 key, base64url"}}, ["kid", "key"]),
 "KeysResponse": obj({"keys": {"type": "array", "items": S("PublicKey")}}, ["keys"]),
 "RotateKeysRequest": obj({"drop_old": {"type": "boolean", "default": False, "description": "stop publishing the old keys now (a leaked key): every token they signed stops working"}}),
 "RotateKeysResponse": obj({"kid": s, "keys": {"type": "array", "items": S("PublicKey")}, "admin_token": {"type": "string", "description": "after drop_old, a fresh admin token"}}, ["kid", "keys"]),
 "Revoked": obj({"jti": s, "expires_at": i}, ["jti", "expires_at"]),
 "RevocationsResponse": obj({"revoked": {"type": "array", "items": S("Revoked")}}, ["revoked"]),
 "RelayHealth": {"type": "string", "enum": ["ok", "unhealthy", "unreachable"]},
 "RelayInfo": obj({"name": s, "region": s, "quic_addr": s, "server_name": s, "health": S("RelayHealth")}, ["name", "region", "quic_addr", "server_name"]),
 "Region": obj({"name": s, "relays": {"type": "array", "items": S("RelayInfo")}}, ["name", "relays"]),
 "RegionsResponse": obj({"regions": {"type": "array", "items": S("Region")}}, ["regions"]),
 "RegisterRelayRequest": obj({"region": s, "quic_addr": s, "names": {"type": "array", "items": s, "minItems": 1, "maxItems": 16}}, ["region", "quic_addr", "names"]),
 "RegisterRelayResponse": obj({"cert_pem": s, "key_pem": s, "ca_pem": s, "keys": {"type": "array", "items": S("PublicKey")}}, ["cert_pem", "key_pem", "ca_pem", "keys"]),
 "HeartbeatRequest": obj({"agents": i, "workspaces": {"type": "array", "items": s, "description": "full directory snapshot of this relay (sent after start, after an outage, and now and then)"}, "known": {"type": "string", "description": "digest of the keys and revocations the relay holds"}, "wait_secs": {"type": "integer", "minimum": 0, "description": "long poll: hold the answer up to this long (capped at 5) while `known` is current"}}, ["agents"]),
 "HeartbeatResponse": obj({"keys": {"type": "array", "items": S("PublicKey")}, "revoked": {"type": "array", "items": S("Revoked")}, "digest": s}, ["keys", "revoked", "digest"]),
 "DirectoryUpdate": obj({"workspace": s, "connected": b}, ["workspace", "connected"]),
 "MintTokenRequest": obj({"kind": S("TokenKind"), "subject": s, "ttl_secs": i}, ["kind", "subject"]),
 "MintTokenResponse": obj({"token": s, "expires_at": i}, ["token", "expires_at"]),
 "CreateUserRequest": obj({"name": s, "password": {"type": "string", "minLength": 8, "maxLength": 1024}}, ["name"]),
 "UserInfo": obj({"name": s, "has_password": b, "created_at": i}, ["name", "has_password", "created_at"]),
 "UsersResponse": obj({"users": {"type": "array", "items": S("UserInfo")}}, ["users"]),
 "LoginRequest": obj({"user": s, "password": s}, ["user", "password"]),
 "NewTokenResponse": obj({"id": s, "token": s, "expires_at": i}, ["id", "token", "expires_at"]),
 "CreateTokenRequest": obj({"name": s, "ttl_secs": i}, ["name"]),
 "TokenInfo": obj({"id": s, "name": s, "kind": S("TokenKind"), "subject": s, "created_at": i, "expires_at": i, "revoked": b}, ["id", "name", "kind", "subject", "created_at", "expires_at", "revoked"]),
 "TokensResponse": obj({"tokens": {"type": "array", "items": S("TokenInfo")}}, ["tokens"]),
 "MeResponse": obj({"user": s}, ["user"]),
 "CreateWorkspaceRequest": obj({"name": s, "owner": s}, ["name"]),
 "WorkspaceInfo": obj({"label": s, "name": s, "owner": s, "created_at": i}, ["label", "name", "owner", "created_at"]),
 "WorkspacesResponse": obj({"workspaces": {"type": "array", "items": S("WorkspaceInfo")}}, ["workspaces"]),
 "RouteResponse": obj({"workspace": s, "relay": S("RelayInfo")}, ["workspace", "relay"]),
 "MetadataItem": obj({"key": s, "value": s}, ["key", "value"]),
 "AgentMetadataRequest": obj({"items": {"type": "array", "items": S("MetadataItem")}}, ["items"]),
 "MetadataReading": obj({"key": s, "value": s, "updated_at": i}, ["key", "value", "updated_at"]),
 "WorkspaceMetadataResponse": obj({"workspace": s, "items": {"type": "array", "items": S("MetadataReading")}}, ["workspace", "items"]),
}
def err(desc): return {"description": desc, "content": {"application/json": {"schema": S("Error")}}}
def ok(schema, code="200", desc="OK"):
    if schema is None: return {code: {"description": desc}}
    return {code: {"description": desc, "content": {"application/json": {"schema": S(schema)}}}}
def op(summary, tokens, resp, body=None, errors=(), params=(), code="200"):
    o = {"summary": summary, "responses": {}}
    if tokens:
        o["security"] = [{"bearer": []}]
        o["description"] = "Token kinds accepted: " + ", ".join(tokens) + "."
    o["responses"].update(ok(resp, code))
    for c, d in errors: o["responses"][str(c)] = err(d)
    if tokens:
        o["responses"].setdefault("401", err("`unauthorized`, `token_expired` or `token_revoked`"))
        o["responses"].setdefault("403", err("`wrong_token_kind`"))
    if body:
        o["requestBody"] = {"required": True, "content": {"application/json": {"schema": S(body)}}}
        o["responses"].setdefault("400", err("`bad_request`: malformed JSON, unknown fields, invalid values"))
        o["responses"].setdefault("413", err("`payload_too_large` (bodies are limited to 64 KiB)"))
        o["responses"].setdefault("415", err("`unsupported_media_type`"))
    if params:
        o["parameters"] = [{"name": p, "in": "path", "required": True, "schema": s} for p in params]
    return o
WS = ("label",)
nf = lambda *codes: [(404, " or ".join(f"`{c}`" for c in codes))]
paths = {
 "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "`ok`", "content": {"text/plain": {"schema": s}}}}}},
 "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
 "/api/v1/keys": {"get": op("Public token keys (old keys stay until their tokens expire)", None, "KeysResponse")},
 "/api/v1/keys/rotate": {"post": op("Start signing with a new key (optionally dropping the old ones)", ["admin"], "RotateKeysResponse", "RotateKeysRequest")},
 "/api/v1/revocations": {"get": op("Revoked token ids that have not expired", ["relay", "admin"], "RevocationsResponse")},
 "/api/v1/regions": {"get": op("The region map with relay health", ["user", "agent", "relay", "admin"], "RegionsResponse")},
 "/api/v1/relays/register": {"post": op("Enroll a relay and issue its certificate", ["relay"], "RegisterRelayResponse", "RegisterRelayRequest")},
 "/api/v1/relays/heartbeat": {"post": op("Relay heartbeat and long poll; answers keys and revocations to cache", ["relay"], "HeartbeatResponse", "HeartbeatRequest", nf("unknown_relay"))},
 "/api/v1/directory": {"post": op("A relay reports an agent connecting or leaving", ["relay"], None, "DirectoryUpdate", code="204")},
 "/api/v1/tokens": {"post": op("Mint a token of any kind", ["admin"], "MintTokenResponse", "MintTokenRequest")},
 "/api/v1/tokens/{id}": {"delete": op("Revoke any token by id", ["admin"], None, errors=nf("unknown_token"), params=("id",), code="204")},
 "/api/v1/users": {
   "post": op("Create a user", ["admin"], "UserInfo", "CreateUserRequest", [(409, "`user_exists`")], code="201"),
   "get": op("List users", ["admin"], "UsersResponse")},
 "/api/v1/login": {"post": op("Password login; answers a session (user) token", None, "NewTokenResponse", "LoginRequest", [(401, "`invalid_credentials`"), (429, "`rate_limited` (per account and per source address)")])},
 "/api/v1/me": {"get": op("Who the token belongs to", ["user"], "MeResponse")},
 "/api/v1/me/tokens": {
   "post": op("Create a personal API token", ["user"], "NewTokenResponse", "CreateTokenRequest", code="201"),
   "get": op("List your tokens (sessions and personal tokens)", ["user"], "TokensResponse")},
 "/api/v1/me/tokens/{id}": {"delete": op("Revoke one of your tokens", ["user"], None, errors=nf("unknown_token"), params=("id",), code="204")},
 "/api/v1/workspaces": {
   "post": op("Create a workspace (an admin names the owner)", ["user", "admin"], "WorkspaceInfo", "CreateWorkspaceRequest", [(409, "`workspace_exists`")] + nf("unknown_user"), code="201"),
   "get": op("List your workspaces (an admin: all)", ["user", "admin"], "WorkspacesResponse")},
 "/api/v1/workspaces/{label}": {
   "get": op("One workspace", ["user", "admin"], "WorkspaceInfo", errors=nf("unknown_workspace"), params=WS),
   "delete": op("Delete a workspace and revoke its agent tokens", ["user", "admin"], None, errors=nf("unknown_workspace"), params=WS, code="204")},
 "/api/v1/workspaces/{label}/route": {"get": op("Where the workspace's agent is connected", ["user", "admin"], "RouteResponse", errors=nf("unknown_workspace", "agent_not_connected"), params=WS)},
 "/api/v1/workspaces/{label}/metadata": {"get": op("The latest metadata readings of the workspace's agent, sorted by key", ["user", "admin"], "WorkspaceMetadataResponse", errors=nf("unknown_workspace"), params=WS)},
 "/api/v1/agents/metadata": {"post": op("An agent reports metadata readings for its workspace; each item replaces its key's value", ["agent"], None, "AgentMetadataRequest", [(400, "`bad_request` (malformed JSON, unknown fields, a bad key or an oversized value) or `too_many_keys` (more than 32 keys per workspace)"), (404, "`unknown_workspace`: the token's workspace does not exist")], code="204")},
 "/api/v1/workspaces/{label}/agent-tokens": {
   "post": op("Create an agent token for the workspace", ["user", "admin"], "NewTokenResponse", "CreateTokenRequest", nf("unknown_workspace"), params=WS, code="201"),
   "get": op("List the workspace's agent tokens", ["user", "admin"], "TokensResponse", errors=nf("unknown_workspace"), params=WS)},
 "/api/v1/workspaces/{label}/agent-tokens/{id}": {"delete": op("Revoke an agent token", ["user", "admin"], None, errors=nf("unknown_workspace", "unknown_token"), params=("label", "id"), code="204")},
 "/api/v1/workspaces/{label}/agent-tokens/{id}/rotate": {"post": op("Revoke an agent token and mint its successor", ["user", "admin"], "NewTokenResponse", errors=nf("unknown_workspace", "unknown_token"), params=("label", "id"))},
}
doc = {
 "openapi": "3.0.3",
 "info": {"title": "ferry control plane API", "version": "1",
   "description": "Every error is `{\"error\":{\"code\",\"message\"}}` with a 4xx status and a stable snake_case code. A workspace that is not yours answers exactly like one that does not exist (`unknown_workspace`)."},
 "servers": [{"url": "https://localhost:7443"}],
 "paths": paths,
 "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}}},
}
print(json.dumps(doc, indent=2))
