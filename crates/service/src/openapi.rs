//! reelgate's own OpenAPI 3.1 document, generated from the code that serves it.
//!
//! Request schemas come from the catalog (the same source that validation and pricing
//! use), status codes from what the handlers return. Response schemas follow Apiframe's
//! published v2 spec so its clients keep working; an integration test checks this
//! document against the reference spec for every route both serve.

use domain::Catalog;
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn rate_limited() -> Value {
    error_response("Rate limit exceeded. Retry after the `Retry-After` seconds.")
}

fn unauthorized() -> Value {
    error_response("Authentication failed (missing / invalid API key).")
}

fn forbidden() -> Value {
    error_response("Authenticated but the API key is inactive.")
}

fn secured() -> Value {
    json!([{"ApiKeyAuth": []}])
}

fn job_properties(with_input: bool) -> Value {
    let nullable = |t: &str| json!({"type": [t, "null"]});
    let mut p = json!({
        "id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]},
        "model": {"type": "string"},
        "progress": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
        "result": {"description": "For video jobs: `{\"videoUrl\": ...}` once COMPLETED, otherwise null."},
        "error": nullable("string"),
        "creditCost": {"type": ["integer", "null"], "description": "Credits charged; 0 after a refund."},
        "webhookStatus": {"type": ["string", "null"], "enum": ["pending", "delivered", "failed", null]},
        "createdAt": {"type": "string", "format": "date-time"},
        "completedAt": {"type": ["string", "null"], "format": "date-time"},
        "expired": {"type": "boolean", "description": "True once a COMPLETED job's result files were purged."},
    });
    if with_input {
        p["input"] = json!({"type": ["object", "null"], "additionalProperties": {},
                            "description": "The request body as submitted."});
    }
    p
}

fn schemas(catalog: &Catalog) -> Value {
    let required_job = json!([
        "id",
        "status",
        "model",
        "progress",
        "error",
        "creditCost",
        "webhookStatus",
        "createdAt",
        "completedAt"
    ]);
    let mut required_list_item = required_job.clone();
    required_list_item.as_array_mut().expect("literal array").push(json!("expired"));
    json!({
        "ErrorResponse": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "ValidationError": {
            "type": "object", "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "details": {"type": "object", "description": "Per-field validation errors keyed by JSON path.",
                            "additionalProperties": {"type": "array", "items": {"type": "string"}}}
            }
        },
        "InsufficientCredits": {
            "type": "object", "required": ["error", "creditsRequired", "creditsAvailable"],
            "properties": {
                "error": {"type": "string", "enum": ["Insufficient credits"]},
                "creditsRequired": {"type": "integer", "minimum": 0},
                "creditsAvailable": {"type": "integer", "minimum": 0}
            }
        },
        "JobAccepted": {
            "type": "object", "required": ["jobId", "status"],
            "properties": {
                "jobId": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"],
                           "description": "QUEUED for a new job; an idempotent replay returns the original job's current status."}
            }
        },
        "Job": {"type": "object", "required": required_job, "properties": job_properties(true)},
        "JobList": {
            "type": "object", "required": ["jobs", "nextCursor", "hasMore"],
            "properties": {
                "jobs": {"type": "array", "items": {"type": "object", "required": required_list_item,
                                                     "properties": job_properties(false)}},
                "nextCursor": {"type": ["string", "null"]},
                "hasMore": {"type": "boolean"},
                "models": {"type": "array", "items": {"type": "string"}}
            }
        },
        "Me": {
            "type": "object", "required": ["user", "team", "apiKey"],
            "properties": {
                "user": {"type": "object", "required": ["id", "email", "role"], "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string", "format": "email"},
                    "role": {"type": "string", "enum": ["ADMIN", "MEMBER", "OWNER"]}}},
                "team": {"type": ["object", "null"], "required": ["id", "name", "credits", "plan", "customerId"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "name": {"type": "string"},
                        "credits": {"type": "integer", "minimum": 0},
                        "plan": {"type": "string"},
                        "customerId": {"type": ["string", "null"]},
                        "maxConcurrentJobs": {"type": "integer", "minimum": 1}}},
                "apiKey": {"type": ["object", "null"], "required": ["id", "name", "prefix"], "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "name": {"type": "string"},
                    "prefix": {"type": "string"}}}
            }
        },
        "ModelCatalog": {"type": "object", "required": ["models"],
            "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelCatalogEntry"}}}},
        "ModelCatalogEntry": {
            "type": "object", "required": ["id", "label", "modality"], "additionalProperties": {},
            "properties": {
                "id": {"type": "string"},
                "label": {"type": "string"},
                "modality": {"type": "string", "enum": ["image", "video", "music"]},
                "description": {"type": "string"},
                "costMin": {"type": "number"},
                "costMax": {"type": "number"},
                "pricingMode": {"type": "string", "enum": ["flat", "per-second", "per-output"]},
                "reelgate": {"type": "object", "description": "reelgate's addition: the request schema and the price of every variant."}
            }
        },
        "Upload": {
            "description": "A short-lived upload. Its URL drops into `hailuoParams.image` / `end_image`.",
            "type": "object", "required": ["id", "url", "kind", "contentType", "byteSize", "expiresAt"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "url": {"type": "string", "format": "uri"},
                "kind": {"type": "string", "enum": ["image", "video", "audio"]},
                "contentType": {"type": "string"},
                "byteSize": {"type": "integer", "minimum": 0},
                "expiresAt": {"type": "string", "format": "date-time"}
            }
        },
        "GenerateVideoRequest": {
            "description": "Discriminated by `model`: one variant per Hailuo model reelgate serves.",
            "oneOf": catalog.models().iter().map(|m| m.request_schema()).collect::<Vec<_>>()
        }
    })
}

/// Renders the document.
pub fn document(catalog: &Catalog) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "reelgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted server speaking Apiframe's v2 video API for MiniMax Hailuo models. \
                            Point Apiframe client code at it by changing only the base URL."
        },
        "paths": {
            "/v2/videos/generate": {"post": {
                "summary": "Submit a video generation job",
                "tags": ["Videos"],
                "security": secured(),
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/GenerateVideoRequest"}}}},
                "responses": {
                    "202": json_response("Job accepted and queued (or an idempotent replay of an earlier job).", "JobAccepted"),
                    "400": json_response("Request body failed validation.", "ValidationError"),
                    "401": unauthorized(),
                    "402": json_response("The account's balance does not cover this job.", "InsufficientCredits"),
                    "403": forbidden(),
                    "409": error_response("Idempotency-Key reused with a different body."),
                    "413": error_response("Request body larger than the configured limit."),
                    "429": rate_limited(),
                    "503": error_response("Service temporarily unavailable. Retry with backoff.")
                }
            }},
            "/v2/jobs": {"get": {
                "summary": "List jobs",
                "tags": ["Jobs"],
                "security": secured(),
                "description": "Newest first, keyset-paginated on (createdAt desc, id desc). `scope=user` (default) lists the calling key's jobs, `scope=team` the whole account's.",
                "parameters": [
                    {"in": "query", "name": "status", "required": false, "schema": {"type": "string",
                        "enum": ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]}},
                    {"in": "query", "name": "model", "required": false, "schema": {"type": "string"}},
                    {"in": "query", "name": "limit", "required": false,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"in": "query", "name": "cursor", "required": false, "schema": {"type": "string"}},
                    {"in": "query", "name": "scope", "required": false,
                        "schema": {"type": "string", "enum": ["user", "team"], "default": "user"}},
                    {"in": "query", "name": "search", "required": false, "schema": {"type": "string", "format": "uuid"}},
                    {"in": "query", "name": "include_models", "required": false,
                        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"}}
                ],
                "responses": {
                    "200": json_response("A page of jobs.", "JobList"),
                    "400": json_response("Invalid query parameters or cursor.", "ValidationError"),
                    "401": unauthorized(),
                    "403": forbidden(),
                    "429": rate_limited()
                }
            }},
            "/v2/jobs/{id}": {"get": {
                "summary": "Get a job",
                "tags": ["Jobs"],
                "security": secured(),
                "parameters": [{"in": "path", "name": "id", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": json_response("Job state.", "Job"),
                    "400": error_response("`id` is not a valid UUID."),
                    "401": unauthorized(),
                    "403": forbidden(),
                    "404": error_response("Job not found, or owned by another account."),
                    "429": rate_limited()
                }
            }},
            "/v2/jobs/{id}/cancel": {"post": {
                "summary": "Cancel a queued job (reelgate's addition)",
                "description": "Cancels a job that has not been submitted upstream yet and refunds its cost in full (creditCost becomes 0). Jobs already submitted to MiniMax cannot be stopped there, so any other state answers 409.",
                "tags": ["Jobs"],
                "security": secured(),
                "parameters": [{"in": "path", "name": "id", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": json_response("The cancelled job.", "Job"),
                    "400": error_response("`id` is not a valid UUID."),
                    "401": unauthorized(),
                    "403": forbidden(),
                    "404": error_response("Job not found, or owned by another account."),
                    "409": error_response("The job is no longer QUEUED.")
                }
            }},
            "/v2/jobs/{id}/webhooks": {"get": {
                "summary": "A job's webhook deliveries (reelgate's addition)",
                "description": "Every webhook event the job raised, with its delivery state and every attempt: time, HTTP status, duration, error and the first KiB of the receiver's answer.",
                "tags": ["Jobs"],
                "security": secured(),
                "parameters": [{"in": "path", "name": "id", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": {"description": "The job's webhook events.", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": error_response("`id` is not a valid UUID."),
                    "401": unauthorized(),
                    "403": forbidden(),
                    "404": error_response("Job not found, or owned by another account.")
                }
            }},
            "/v2/jobs/events/token": {"post": {
                "summary": "A token for job event streams (reelgate's addition)",
                "description": "For browsers, whose EventSource cannot send X-API-Key: a read-only token bound to the calling key, valid for `events.token_ttl_ms` (10 minutes by default), to pass as `?token=` to the event streams. API keys then never appear in URLs or access logs.",
                "tags": ["Events"],
                "security": secured(),
                "responses": {
                    "201": {"description": "The token.", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["token", "expiresAt"],
                        "properties": {"token": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}}}}}},
                    "401": unauthorized(),
                    "403": forbidden(),
                    "429": rate_limited()
                }
            }},
            "/v2/jobs/{id}/events": {"get": {
                "summary": "A job's progress, pushed as server-sent events (reelgate's addition)",
                "description": "`text/event-stream`. Each event is `event: job` with `data` the job exactly as `GET /v2/jobs/{id}` shows it: the current state first, then every change (status, progress, result or error) within milliseconds of its commit, on whichever node it happened. A comment line keeps the stream alive every 15 s. The stream ends after the terminal event (COMPLETED, FAILED or CANCELLED). Event ids are versions of the job: send the last one as `Last-Event-ID` to resume, and the job is sent again only if it changed; after the terminal event, 204 (EventSource stops). Authenticate with `X-API-Key` or `?token=` from `POST /v2/jobs/events/token`.",
                "tags": ["Events"],
                "security": [{"ApiKeyAuth": []}, {}],
                "parameters": [
                    {"in": "path", "name": "id", "required": true, "schema": {"type": "string", "format": "uuid"}},
                    {"in": "query", "name": "token", "required": false, "schema": {"type": "string"}},
                    {"in": "header", "name": "Last-Event-ID", "required": false, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "204": {"description": "Resumed after the terminal event: nothing more will come."},
                    "400": error_response("`id` is not a valid UUID."),
                    "401": error_response("No key or token, an invalid key, or an invalid or expired token."),
                    "403": forbidden(),
                    "404": error_response("Job not found, or owned by another account."),
                    "429": rate_limited()
                }
            }},
            "/v2/jobs/events": {"get": {
                "summary": "Every job of the key, pushed as server-sent events (reelgate's addition)",
                "description": "`text/event-stream`: first `event: ready`, then `event: job` (the job as `GET /v2/jobs/{id}` shows it) whenever one of the calling key's jobs (`scope=team`: the account's) is created or changes. Event ids are cursors: resuming with `Last-Event-ID` sends again every job changed since (duplicates are possible, losses are not); `event: reset` means more changed than a resume sends, so list again. To miss nothing, open the stream, then list. Authenticate with `X-API-Key` or `?token=`.",
                "tags": ["Events"],
                "security": [{"ApiKeyAuth": []}, {}],
                "parameters": [
                    {"in": "query", "name": "scope", "required": false,
                        "schema": {"type": "string", "enum": ["user", "team"], "default": "user"}},
                    {"in": "query", "name": "token", "required": false, "schema": {"type": "string"}},
                    {"in": "header", "name": "Last-Event-ID", "required": false, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": error_response("An invalid `scope` or `Last-Event-ID`."),
                    "401": error_response("No key or token, an invalid key, or an invalid or expired token."),
                    "403": forbidden(),
                    "429": rate_limited()
                }
            }},
            "/v2/results/{id}/{file}": {"get": {
                "summary": "Download a completed job's video (reelgate's addition)",
                "description": "The `result.videoUrl` of a completed job: reelgate's own copy of the video, made before MiniMax's link expires. The URL carries a token and needs no API key, so players can open it. Supports HTTP Range requests (206, 416). When the server keeps results in S3 with `video_urls = \"presigned\"`, `videoUrl` is instead a presigned URL of the bucket's object, signed on every read; this route still serves the video.",
                "tags": ["Jobs"],
                "parameters": [
                    {"in": "path", "name": "id", "required": true, "schema": {"type": "string", "format": "uuid"}},
                    {"in": "path", "name": "file", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}\\.mp4$"}},
                    {"in": "header", "name": "Range", "required": false, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The whole video.", "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "The requested byte range.", "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                    "404": error_response("No such result, a wrong token, or the video expired (see the job's `expired`)."),
                    "416": error_response("The range lies outside the video.")
                }
            }},
            "/v2/uploads": {"post": {
                "summary": "Upload an image for a job's `image` or `end_image`",
                "description": "Single-file multipart upload (`file`). The type is sniffed from the bytes; the declared content type is ignored. Only images Hailuo takes are accepted (JPEG, PNG, WebP), checked against MiniMax's rules (under 20 MB, short side over 300 px, aspect ratio between 2:5 and 5:2). The whole body may be at most `limits.max_upload_bytes` (25 MiB by default). The file lives `uploads.ttl_secs` (2 h by default), then is deleted. An `Idempotency-Key` retry with the same file returns the same upload; with another file, 409.",
                "tags": ["Uploads"],
                "security": secured(),
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP."}}}}}},
                "responses": {
                    "201": json_response("Uploaded file metadata and its URL.", "Upload"),
                    "400": json_response("No file, several files, an empty file, or a file that is not an image Hailuo takes (`details.file`).", "ValidationError"),
                    "401": unauthorized(),
                    "403": forbidden(),
                    "408": error_response("The body took longer than `uploads.body_deadline_ms` to arrive."),
                    "409": error_response("Idempotency-Key reused with a different file."),
                    "413": error_response("Request body larger than `limits.max_upload_bytes`."),
                    "429": rate_limited(),
                    "503": error_response("Service temporarily unavailable. Retry with backoff.")
                }
            }},
            "/v2/uploads/{id}/{file}": {"get": {
                "summary": "Download an upload (reelgate's addition)",
                "description": "The `url` of an upload. It carries a token and needs no API key. Supports HTTP Range requests (206, 416). 404 once the upload has expired.",
                "tags": ["Uploads"],
                "parameters": [
                    {"in": "path", "name": "id", "required": true, "schema": {"type": "string", "format": "uuid"}},
                    {"in": "path", "name": "file", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}\\.(jpg|png|webp)$"}},
                    {"in": "header", "name": "Range", "required": false, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The whole file.", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "The requested byte range.", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                    "404": error_response("No such upload, a wrong token, or the upload expired."),
                    "416": error_response("The range lies outside the file.")
                }
            }},
            "/v2/me": {"get": {
                "summary": "Get the authenticated caller",
                "tags": ["Account"],
                "security": secured(),
                "responses": {
                    "200": json_response("Caller information.", "Me"),
                    "401": unauthorized(),
                    "403": forbidden(),
                    "429": rate_limited()
                }
            }},
            "/v2/models": {"get": {
                "summary": "List the model catalog",
                "tags": ["Models"],
                "security": [],
                "parameters": [{"in": "query", "name": "modality", "required": false,
                    "schema": {"type": "string", "enum": ["image", "video", "music"]}}],
                "responses": {
                    "200": json_response("Catalog entries.", "ModelCatalog"),
                    "400": json_response("Invalid `modality` value.", "ValidationError")
                }
            }},
            "/v2/server": {"get": {
                "summary": "This server (reelgate's addition)",
                "description": "The server's name and version, and whether jobs run on the built-in MiniMax sandbox (the engine runs and no MiniMax account is configured): such videos are rendered locally, not by MiniMax. The Studio shows a banner from it.",
                "tags": ["Meta"],
                "security": [],
                "responses": {"200": {"description": "Server information.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name", "version", "sandbox"],
                    "properties": {
                        "name": {"type": "string", "enum": ["reelgate"]},
                        "version": {"type": "string"},
                        "sandbox": {"type": "boolean"}
                    }}}}}}
            }},
            "/v2/openapi.json": {"get": {
                "summary": "This document",
                "tags": ["Meta"],
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document.", "content": {"application/json": {}}}}
            }},
            "/healthz": {"get": {
                "summary": "Liveness",
                "tags": ["Meta"],
                "security": [],
                "responses": {"200": {"description": "The process is up."}}
            }}
        },
        "components": {
            "parameters": {"IdempotencyKey": {
                "in": "header", "name": "Idempotency-Key", "required": false,
                "description": "Replaying the same key (per account) within 24 hours returns the original job instead of creating and charging a new one; the same key with a different body is 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}
            }},
            "securitySchemes": {"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                "description": "An `afk_...` key created with `reelgate keys create`."}},
            "schemas": schemas(catalog)
        }
    })
}
