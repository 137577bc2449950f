"""The OpenAPI 3.1 document of the admin API, its schemas taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from ivr import __version__
from ivr.queues import QUEUE_NAME, Queue


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("#/components/schemas/Error", description)


@cache
def openapi_document() -> dict[str, Any]:
    queue_input = Queue.model_json_schema(ref_template="#/components/schemas/{model}")
    queue_input["title"] = "QueueInput"
    record = {
        "title": "QueueRecord",
        "allOf": [
            {"$ref": "#/components/schemas/QueueInput"},
            {"type": "object", "required": ["name", "version", "updated_at", "updated_by"],
             "properties": {"name": {"type": "string"}, "version": {"type": "integer"},
                            "updated_at": {"type": "string", "format": "date-time"},
                            "updated_by": {"type": "string"}}},
        ],
    }
    def with_changed(title: str, description: str, nullable: bool = False) -> dict[str, Any]:
        changed = {"type": ["array", "null"] if nullable else "array",
                   "items": {"enum": list(Queue.model_fields)}, "description": description}
        return {"title": title, "allOf": [
            {"$ref": "#/components/schemas/QueueRecord"},
            {"type": "object", "required": ["changed"], "properties": {"changed": changed}}]}

    page_params = [
        {"name": "limit", "in": "query", "description": "How many versions, newest first",
         "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        {"name": "before", "in": "query", "description": "Only versions older than this one: "
         "the previous page's `next_before`", "schema": {"type": "integer", "minimum": 1}}]
    page_fields = {
        "next_before": {"type": ["integer", "null"], "description": "`before` for the next, "
                        "older page; null: this is the last"},
        "oldest": {"type": "integer", "description": "The oldest version kept (older ones are "
                   "trimmed: IVR_QUEUE_VERSIONS_KEPT, IVR_FLOW_VERSIONS_KEPT, "
                   "IVR_ADMIN_HISTORY_DAYS)"}}
    name_param = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": f"^{QUEUE_NAME.pattern}$"}}
    if_match = {"name": "If-Match", "in": "header", "required": False,
                "description": 'The ETag of the version you read, e.g. "v3"; `*`: must exist.',
                "schema": {"type": "string"}}
    unauthorized = _error("Missing, malformed or wrong bearer token")
    one_record = {**_json("#/components/schemas/QueueRecord", "The queue"),
                  "headers": {"ETag": {"schema": {"type": "string"}}}}
    written = {**_json("#/components/schemas/QueueWritten",
                       "The queue now, and the fields the write changed: none when the queue "
                       "already had those values (then nothing is written: no version, no "
                       "audit entry)"),
               "headers": {"ETag": {"schema": {"type": "string"}}}}
    created = {**written, "description": "Created (a rollback: re-created), with its fields"}
    live_if_match = {**if_match, "description": 'The ETag of the live flows version you read, '
                     'e.g. "v7": refused with 412 if another was published since.'}
    flows_written = {**_json("#/components/schemas/FlowsPublished",
                             "The live version already had exactly these files: nothing was "
                             "written (no version, no audit entry)"),
                     "headers": {"ETag": {"schema": {"type": "string"}}}}
    flows_created = {**flows_written, "description": "A new version, live at once on this "
                     "instance and within a second on every other"}
    flows_refused = _error("The flows do not pass the checks against the live queues: "
                           "`errors` names each problem (file, field, message); nothing was "
                           "published")
    flows_stale = _error("If-Match is not the live flows version (someone published meanwhile)")
    return {
        "openapi": "3.1.0",
        "info": {"title": "ivr admin API", "version": __version__,
                 "description": "Change where each queue sends calls and messages, safely: "
                                "validated, versioned, audited, live on every instance; "
                                "publish flows and roll them back the same way; purge cached "
                                "lookups."},
        "servers": [{"url": "/admin/api"}],
        "security": [{"bearer": []}],
        "paths": {
            "/queues": {"get": {
                "summary": "The queues by name, a page at a time, or those a search finds",
                "description": "Without limit, every queue (from offset on) in one answer, as "
                               "before paging. q finds the queues whose name, display name, "
                               "a SIP URI or messaging address contains it, in any case; "
                               "total counts them all.",
                "operationId": "listQueues",
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                    {"name": "offset", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": {"200": _json("#/components/schemas/QueueList", "The queues"),
                              "401": unauthorized,
                              "422": _error("q, offset or limit is out of range")}}},
            "/queues/{name}": {
                "parameters": [name_param],
                "get": {"summary": "One queue", "operationId": "getQueue",
                        "responses": {"200": one_record, "401": unauthorized,
                                      "404": _error("No such queue")}},
                "put": {"summary": "Create or replace a queue", "operationId": "putQueue",
                        "parameters": [if_match],
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/QueueInput"}}}},
                        "responses": {"200": written, "201": created,
                                      "400": _error("The body is not JSON"), "401": unauthorized,
                                      "412": _error("If-Match is not the current version"),
                                      "422": _error("A field is invalid")}},
                "patch": {"summary": "Change some of a queue's fields, keeping the others",
                          "description": "A JSON merge patch (RFC 7396): the fields given "
                                         "replace the queue's, a field set to null goes back "
                                         "to its default. Without If-Match, a change made "
                                         "meanwhile is kept and the patch applied on top.",
                          "operationId": "patchQueue", "parameters": [if_match],
                          "requestBody": {"required": True, "content": {
                              "application/merge-patch+json": {"schema": {"type": "object"}},
                              "application/json": {"schema": {"type": "object"}}}},
                          "responses": {"200": written,
                                        "400": _error("The body is not JSON"),
                                        "401": unauthorized, "404": _error("No such queue"),
                                        "412": _error("If-Match is not the current version"),
                                        "422": _error("A field is invalid")}},
                "delete": {"summary": "Delete a queue", "operationId": "deleteQueue",
                           "parameters": [if_match],
                           "responses": {"204": {"description": "Deleted"}, "401": unauthorized,
                                         "404": _error("No such queue"),
                                         "409": _error("The live flows version routes to "
                                                       "it (or its routes cannot be read), "
                                                       "or a queue overflows to it"),
                                         "412": _error("If-Match is not the current version")}},
            },
            "/queues/{name}/history": {"parameters": [name_param], "get": {
                "summary": "A page of a queue's versions, newest first",
                "operationId": "queueHistory", "parameters": page_params,
                "responses": {"200": _json("#/components/schemas/History", "The versions"),
                              "401": unauthorized, "404": _error("No such queue"),
                              "422": _error("Invalid limit or before")}}},
            "/queues/{name}/rollback": {"parameters": [name_param], "post": {
                "summary": "Make an old version current again (as a new version, unless it "
                           "has the current values)",
                "operationId": "rollbackQueue", "parameters": [if_match],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["version"], "additionalProperties": False,
                    "properties": {"version": {"type": "integer", "minimum": 1}}}}}},
                "responses": {"200": written, "201": created,
                              "400": _error("The body is not JSON"),
                              "401": unauthorized,
                              "404": _error("No such queue or version (one no longer kept: "
                                            "the error names the oldest kept)"),
                              "412": _error("If-Match is not the current version"),
                              "422": _error("Invalid version")}}},
            "/flows": {"get": {
                "summary": "The live flows version, its flows and its files",
                "operationId": "liveFlows",
                "responses": {"200": {**_json("#/components/schemas/LiveFlows",
                                              "The live version"),
                                      "headers": {"ETag": {"schema": {"type": "string"}}}},
                              "401": unauthorized,
                              "404": _error("No flows version is published yet")}}},
            "/flows/versions": {
                "get": {"summary": "A page of the flows versions, newest first",
                        "operationId": "flowVersions", "parameters": page_params,
                        "responses": {"200": _json("#/components/schemas/FlowVersionList",
                                                   "The versions"), "401": unauthorized,
                                      "422": _error("Invalid limit or before")}},
                "post": {"summary": "Publish flows: check them against the live queues and make "
                                    "them the live version",
                         "description": "Every instance and worker serves the new version "
                                        "within a second, this one at once; a call or "
                                        "conversation started on an older version finishes on "
                                        "it. Audited (action `flows_publish`).",
                         "operationId": "publishFlows", "parameters": [live_if_match],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/FlowsPublish"}}}},
                         "responses": {"200": flows_written, "201": flows_created,
                                       "400": _error("The body is not JSON"),
                                       "401": unauthorized, "412": flows_stale,
                                       "413": _error("The body is over 8 MiB"),
                                       "422": flows_refused,
                                       "503": _error("Redis is unavailable, or the queues "
                                                     "change too fast to check against")}}},
            "/flows/versions/{version}": {
                "parameters": [{"name": "version", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}],
                "get": {"summary": "One flows version with its files",
                        "operationId": "flowVersion",
                        "responses": {"200": _json("#/components/schemas/FlowVersionFiles",
                                                   "The version"),
                                      "401": unauthorized,
                                      "404": _error("No such version")}}},
            "/flows/rollback": {"post": {
                "summary": "Make an old flows version's files live again, as a new version "
                           "(none when they are what is live)",
                "description": "Checked against the live queues as a publish is. Audited "
                               "(action `flows_rollback`).",
                "operationId": "rollbackFlows", "parameters": [live_if_match],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["version"], "additionalProperties": False,
                    "properties": {"version": {"type": "integer", "minimum": 1}}}}}},
                "responses": {"200": flows_written, "201": flows_created,
                              "400": _error("The body is not JSON"), "401": unauthorized,
                              "404": _error("No such version"), "412": flows_stale,
                              "422": {**flows_refused, "description": "Not a version number, "
                                      "or the version no longer fits the live queues "
                                      "(`errors` names each problem)"},
                              "503": _error("Redis is unavailable, or the queues change too "
                                            "fast to check against")}}},
            "/audit": {"get": {
                "summary": "Every admin change, newest first", "operationId": "auditLog",
                "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": {"200": _json("#/components/schemas/Audit", "Audit entries"),
                              "401": unauthorized}}},
            "/calls": {"get": {
                "summary": "Recent call traces, newest first", "operationId": "recentCalls",
                "parameters": [
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "sid", "in": "query", "description": "Only this CallSid or MessageSid",
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"}},
                    {"name": "after", "in": "query",
                     "description": "Only traces answered after this time (epoch seconds, as "
                                    "in `answered`)", "schema": {"type": "number"}}],
                "responses": {"200": _json("#/components/schemas/Calls", "Call traces"),
                              "401": unauthorized, "422": _error("Invalid parameter")}}},
            "/cache/purge": {"post": {
                "summary": "Forget a fetch step's cached answers, one caller's or all",
                "description": "In Redis and in every instance's and worker's memory, within "
                               "the same bound as a queue change; the next call looks up "
                               "again. Audited (action `purge`, the caller masked).",
                "operationId": "purgeCache",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CachePurge"}}}},
                "responses": {"200": _json("#/components/schemas/CachePurged", "Purged"),
                              "400": _error("The body is not JSON"), "401": unauthorized,
                              "404": _error("No such flow, or no such step in it (the "
                                            "closest name is suggested)"),
                              "422": _error("Not a cached fetch step, not a phone number, or "
                                            "a step whose request a caller does not decide"),
                              "503": _error("Redis is unavailable")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "QueueInput": queue_input,
                "QueueRecord": record,
                "QueueWritten": with_changed("QueueWritten", "The fields the write changed"),
                "QueueVersion": with_changed("QueueVersion", "The fields this version "
                                             "changed from the one before it (null: that one "
                                             "is no longer kept)", nullable=True),
                "QueueList": {"type": "object", "properties": {
                    "queues": {"type": "array",
                               "items": {"$ref": "#/components/schemas/QueueRecord"}},
                    "total": {"type": "integer", "description": "How many the search finds"},
                    "offset": {"type": "integer"},
                    "limit": {"type": ["integer", "null"]}}},
                "History": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "versions": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/QueueVersion"}},
                    **page_fields}},
                "Audit": {"type": "object", "properties": {
                    "entries": {"type": "array", "items": {"type": "object", "properties": {
                        "at": {"type": "string"}, "who": {"type": "string"},
                        "action": {"enum": ["create", "update", "delete", "rollback",
                                            "purge", "flows_publish", "flows_rollback"]},
                        "queue": {"type": "string"}, "version": {"type": "integer"},
                        "old": {}, "new": {}, "rolled_back_to": {"type": "integer"},
                        "flows_version": {"type": "integer", "description": "flows_publish, "
                                          "flows_rollback: the version made"},
                        "message": {"type": "string", "description": "flows_publish: why, as "
                                    "given; flows_rollback: the version rolled back to"},
                        "hash": {"type": "string", "description": "flows_*: the version's "
                                 "content hash"},
                        "flow": {"type": "string", "description": "purge: the flow"},
                        "step": {"type": "string", "description": "purge: the fetch step"},
                        "caller": {"type": ["string", "null"],
                                   "description": "purge: the caller, masked (null: all)"},
                        "removed": {"type": "integer", "description": "purge of a caller: "
                                    "the answers Redis held"},
                        "generation": {"type": "integer", "description": "purge of a step: "
                                       "its cache's new generation"}}}},
                    "total": {"type": "integer"}, "offset": {"type": "integer"},
                    "limit": {"type": "integer"}}},
                "Calls": {"type": "object", "properties": {"calls": {
                    "type": "array", "items": {"$ref": "#/components/schemas/CallTrace"}}}},
                "CallTrace": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "instance": {"type": "string", "description": "The process that answered: "
                                 "host name and process id"},
                    "at": {"type": "string", "format": "date-time",
                           "description": "When the webhook arrived"},
                    "answered": {"type": "number", "description": "When it was answered, epoch "
                                 "seconds"},
                    "channel": {"enum": ["voice", "messaging"]},
                    "endpoint": {"enum": ["voice", "voice_dial", "messaging"]},
                    "sid": {"type": "string"},
                    "from": {"type": "string", "description": "The caller's number, masked"},
                    "flow": {"type": ["string", "null"]},
                    "steps": {"type": "array", "items": {"type": "string"},
                              "description": "Step ids, in the order they ran"},
                    "fetches": {"type": "object", "description": "Per fetch step: status, "
                                "outcome, elapsed_ms", "additionalProperties": {"type": "object"}},
                    "route": {"type": ["string", "null"], "description": "The queue"},
                    "waiting_at": {"type": ["string", "null"], "description": "The question "
                                   "(an `ask` step) the contact was asked, waiting for the "
                                   "answer"},
                    "answer": {"oneOf": [{"type": "null"}, {
                        "type": "object", "required": ["step", "given", "valid"],
                        "description": "The answer this webhook brought to a question: keys "
                                       "pressed, words said, or a message",
                        "properties": {
                            "step": {"type": "string", "description": "The question"},
                            "given": {"type": ["string", "null"], "description": "As given (at "
                                      "most 40 characters; null: no answer). Only a choice's "
                                      "answer is shown as given; any other is masked like a "
                                      "phone number, its first and last three characters kept"},
                            "valid": {"type": "boolean"},
                            "choice": {"type": "string", "description": "The option a valid "
                                       "answer to a choice chose"},
                            "masked": {"type": "boolean"}}}]},
                    "fallback_reason": {"type": ["string", "null"]},
                    "summary": {"type": "string", "description": "What happened, in words: "
                                "the flow's steps and route (`-> gold`) or the question it "
                                "waits at (`waits at menu`), a message forwarded in a "
                                "conversation already handed off, a dial's result..."},
                    "duration_ms": {"type": "number"}}},
                "CachePurge": {
                    "type": "object", "required": ["flow", "step"], "additionalProperties": False,
                    "properties": {
                        "flow": {"type": "string", "examples": ["loyalty_routing"]},
                        "step": {"type": "string", "description": "A fetch step with `cache`",
                                 "examples": ["lookup"]},
                        "caller": {"type": "string", "description": "Only this caller's "
                                   "answers: E.164 (a `whatsapp:` prefix, spaces and dashes are "
                                   "taken off); absent: every caller's",
                                   "examples": ["+15551234567"]}}},
                "CachePurged": {"type": "object", "properties": {
                    "flow": {"type": "string"}, "step": {"type": "string"},
                    "caller": {"type": ["string", "null"],
                               "description": "The number purged for, as the flow sees it"},
                    "removed": {"type": ["integer", "null"],
                                "description": "A caller's purge: the answers Redis held (a "
                                "call and a WhatsApp message may differ); null for a step"},
                    "generation": {"type": ["integer", "null"],
                                   "description": "A step's purge: its cache's new generation "
                                   "(the old answers are never read again and expire)"}}},
                "FlowVersion": {
                    "type": "object",
                    "required": ["version", "at", "who", "message", "hash", "file_names",
                                 "action", "live"],
                    "properties": {
                        "version": {"type": "integer"},
                        "at": {"type": "string", "format": "date-time"},
                        "who": {"type": "string"}, "message": {"type": "string"},
                        "hash": {"type": "string", "description": "SHA-256 of the files: the "
                                 "same files, the same hash"},
                        "file_names": {"type": "array", "items": {"type": "string"}},
                        "action": {"enum": ["publish", "rollback", "seed"]},
                        "rolled_back_to": {"type": ["integer", "null"]},
                        "live": {"type": "boolean"}}},
                "FlowFiles": {"type": "object", "description": "File name -> the file's text",
                              "additionalProperties": {"type": "string"}},
                "FlowVersionFiles": {"allOf": [
                    {"$ref": "#/components/schemas/FlowVersion"},
                    {"type": "object", "required": ["files"], "properties": {
                        "files": {"$ref": "#/components/schemas/FlowFiles"}}}]},
                "FlowVersionList": {"type": "object", "properties": {
                    "live": {"type": "integer", "description": "The live version's number"},
                    "versions": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/FlowVersion"}},
                    **page_fields}},
                "LiveFlows": {"allOf": [
                    {"$ref": "#/components/schemas/FlowVersionFiles"},
                    {"type": "object", "properties": {
                        "served": {"type": "integer", "description": "The version the "
                                   "instance that answered serves"},
                        "problem": {"type": ["string", "null"], "description": "Why the "
                                    "instance that answered cannot load the live version "
                                    "(then `flows` is null); null when it can"},
                        "flows": {"type": ["array", "null"], "items": {"type": "object", "properties": {
                            "name": {"type": "string"},
                            "channels": {"type": "array", "items": {"type": "string"}},
                            "numbers": {"type": "array", "items": {"type": "string"}},
                            "default": {"type": "boolean"},
                            "fallback_queue": {"type": "string"},
                            "queues": {"type": "array", "items": {"type": "string"},
                                       "description": "The queues it may route to"}}}}}}]},
                "FlowsPublish": {
                    "type": "object", "required": ["files"], "additionalProperties": False,
                    "properties": {
                        "files": {"$ref": "#/components/schemas/FlowFiles", "minProperties": 1,
                                  "description": "Every flow file of the version (those of "
                                  "IVR_FLOWS_DIR), each up to 1 MiB"},
                        "message": {"type": "string", "maxLength": 500}}},
                "FlowsPublished": {"allOf": [
                    {"$ref": "#/components/schemas/FlowVersion"},
                    {"type": "object", "required": ["created"], "properties": {
                        "created": {"type": "boolean", "description": "false: the live "
                                    "version already had these files"},
                        "served": {"type": "integer", "description": "The version the "
                                   "instance that answered serves now: this one"}}}]},
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "file": {"type": "string", "description": "Flows: the file (\"\" "
                                 "for none in particular)"},
                        "field": {"type": "string"}, "message": {"type": "string"}}}}}},
            },
        },
    }
