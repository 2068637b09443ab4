"""The OpenAPI description of /api/v1/webhooks, merged into /api/v1/openapi.json."""

from __future__ import annotations


def _json(schema: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _answer(description: str, schema: str | None = "Error") -> dict:
    answer = {"description": description}
    if schema is not None:
        answer["content"] = _json(schema)
    return answer


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "The rule's name.", "example": "kitchen"}
_NOT_FOUND = _answer("No rule (or dead letter) of that name.")
_CONFLICT = _answer("The name is taken, or the rule comes from the config file.")
_BAD_RULE = _answer("Invalid JSON, an unknown field, a bad URL, filter or value.")
_RULE_BODY = {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/WebhookRule"},
    "example": {"name": "kitchen", "filters": ["sensors/kitchen/#"],
                "url": "https://hooks.example.com/kitchen", "secret": "a long random string",
                "retry": {"max_attempts": 10, "base_delay": 1, "max_delay": 300}},
}}}

PATHS = {
    "/api/v1/webhooks": {
        "get": {"summary": "List webhook rules", "operationId": "listWebhooks",
                "responses": {"200": {"description": "Every rule, by name.", "content": {
                    "application/json": {"schema": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}}}}}},
        "post": {"summary": "Make a webhook rule", "operationId": "createWebhook",
                 "description": "Answers once the rule is stored.",
                 "requestBody": _RULE_BODY,
                 "responses": {"201": _answer("Made.", "Webhook"), "400": _BAD_RULE,
                               "409": _CONFLICT}},
    },
    "/api/v1/webhooks/{name}": {
        "parameters": [_NAME],
        "get": {"summary": "One webhook rule and its queue", "operationId": "getWebhook",
                "responses": {"200": _answer("The rule.", "Webhook"), "404": _NOT_FOUND}},
        "put": {"summary": "Make or replace a webhook rule", "operationId": "putWebhook",
                "requestBody": _RULE_BODY,
                "responses": {"200": _answer("Replaced.", "Webhook"),
                              "201": _answer("Made.", "Webhook"), "400": _BAD_RULE,
                              "409": _CONFLICT}},
        "delete": {"summary": "Remove a rule with its pending deliveries and dead letters",
                   "operationId": "deleteWebhook",
                   "responses": {"204": _answer("Removed.", None), "404": _NOT_FOUND,
                                 "409": _CONFLICT}},
    },
    "/api/v1/webhooks/{name}/dead": {
        "parameters": [_NAME],
        "get": {"summary": "Dead letters of a rule, oldest first", "operationId": "listDead",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0},
                     "description": "Only ids above this one (the previous page's next)."},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                ],
                "responses": {"200": _answer("One page.", "DeadLetterPage"),
                              "400": _answer("A bad after or limit."), "404": _NOT_FOUND}},
    },
    "/api/v1/webhooks/{name}/dead/{id}/retry": {
        "parameters": [_NAME, {"name": "id", "in": "path", "required": True,
                               "schema": {"type": "integer"}, "example": "1"}],
        "post": {"summary": "Send one dead letter again", "operationId": "retryDead",
                 "responses": {"202": {"description": "Queued as a new delivery.", "content": {
                     "application/json": {"schema": {"type": "object", "properties": {
                         "id": {"type": "integer"}, "delivery": {"type": "integer"}}}}}},
                     "404": _NOT_FOUND}},
    },
    "/api/v1/webhooks/{name}/dead/retry-all": {
        "parameters": [_NAME],
        "post": {"summary": "Send every dead letter of a rule again", "operationId": "retryAllDead",
                 "responses": {"202": {"description": "Queued.", "content": {
                     "application/json": {"schema": {"type": "object", "properties": {
                         "retried": {"type": "integer"}}}}}},
                     "404": _NOT_FOUND}},
    },
}

_RETRY = {"type": "object", "additionalProperties": False, "properties": {
    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    "base_delay": {"type": "number", "exclusiveMinimum": 0, "default": 1},
    "max_delay": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400, "default": 300},
}}
_RULE_PROPERTIES = {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "filters": {"oneOf": [{"type": "string"},
                          {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
    "url": {"type": "string", "format": "uri", "description": "http or https"},
    "method": {"type": "string", "enum": ["POST", "PUT", "PATCH"], "default": "POST"},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 10},
    "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
    "retry": _RETRY,
    "format": {"type": "string", "enum": ["json", "raw"], "default": "json"},
    "qos": {"type": "integer", "enum": [0, 1], "default": 1},
}

SCHEMAS = {
    "WebhookRule": {
        "type": "object", "additionalProperties": False, "required": ["filters", "url"],
        "description": "A rule as made; the name may come from the path instead.",
        "properties": {**_RULE_PROPERTIES, "secret": {
            "type": "string", "description": "Key of X-Reactorapp-Signature; never shown back."}},
    },
    "Webhook": {
        "type": "object", "description": "A rule as shown, with its queue.",
        "properties": {
            **_RULE_PROPERTIES,
            "signed": {"type": "boolean", "description": "Whether the rule has a secret."},
            "source": {"type": "string", "enum": ["config", "api"]},
            "pending": {"type": "integer"}, "in_flight": {"type": "integer"},
            "dropped": {"type": "integer", "description": "QoS 0 messages dropped (full queue)."},
        },
    },
    "DeadLetter": {
        "type": "object", "properties": {
            "id": {"type": "integer"}, "topic": {"type": "string"},
            "payload": {"type": "string"},
            "encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            "qos": {"type": "integer"}, "retain": {"type": "boolean"},
            "message_id": {"type": "string", "description": "The Idempotency-Key."},
            "timestamp": {"type": "number"}, "attempts": {"type": "integer"},
            "reason": {"type": "string"}, "died_at": {"type": "number"},
        },
    },
    "DeadLetterPage": {
        "type": "object", "properties": {
            "dead": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
            "next": {"type": ["integer", "null"],
                     "description": "Pass as ?after= for the next page; null on the last."},
        },
    },
}

OPENAPI = {"paths": PATHS, "components": {"schemas": SCHEMAS}}
