//! The OpenAPI 3.1 document of the HTTP API, served at `/admin/openapi.json`
//! and committed as `docs/openapi.json` (a test keeps the two equal).

use axum::Json;
use serde_json::{json, Value};

const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
const VIN_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": schema })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn vin() -> Value {
    path_param(
        "vin",
        "Vehicle identification number",
        json!({ "type": "string", "pattern": VIN_PATTERN }),
    )
}

fn serial() -> Value {
    path_param(
        "serial",
        "ECU serial",
        json!({ "type": "string", "pattern": ID_PATTERN }),
    )
}

fn meta_file() -> Value {
    path_param(
        "file",
        "timestamp.json or <N>.root.json, <N>.snapshot.json, <N>.targets.json",
        json!({ "type": "string", "pattern": "^(timestamp|[0-9]{1,19}\\.(root|snapshot|targets))\\.json$" }),
    )
}

fn rollout_id() -> Value {
    path_param(
        "id",
        "Rollout id",
        json!({ "type": "integer", "format": "int64" }),
    )
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

/// An operation: `auth` is `vehicle`, `admin:<role>`, `enrollment` or `none`.
fn op(summary: &str, auth: &str, ok: &str, params: Vec<Value>) -> Value {
    let (security, role) = match auth.split_once(':') {
        Some(("admin", role)) => (json!([{ "operatorToken": [] }]), Some(role)),
        _ => match auth {
            "vehicle" => (
                json!([{ "vehicleSignature": [], "vehicleId": [], "vehicleTimestamp": [], "vehicleNonce": [] }]),
                None,
            ),
            "enrollment" => (json!([{ "enrollmentCredential": [] }]), None),
            _ => (json!([]), None),
        },
    };
    let summary = match role {
        Some(r) => format!("{summary} (role: {r})"),
        None => summary.to_owned(),
    };
    let mut responses = json!({
        ok: { "description": "Success" },
        "4XX": error_response("Refused"),
        "5XX": error_response("Internal error (detail in the server log)")
    });
    if auth != "none" {
        responses["401"] = error_response("Authentication failed (one body for every reason)");
    }
    if role.is_some() {
        responses["403"] = error_response("The operator lacks the role");
    }
    let mut v = json!({ "summary": summary, "security": security, "responses": responses });
    if !params.is_empty() {
        v["parameters"] = Value::Array(params);
    }
    v
}

fn with_body(mut v: Value, schema: &str, content_type: &str) -> Value {
    v["requestBody"] = json!({
        "required": true,
        "content": { content_type: { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    });
    v
}

/// The OpenAPI document.
pub fn document() -> Value {
    let limit = |max: u32| {
        query_param(
            "limit",
            "At most this many",
            json!({ "type": "integer", "minimum": 0, "maximum": max }),
        )
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "SecureEV-OTA server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Uptane 2.1 Image repository, per-vehicle Director and vehicle registry. Two listeners: vehicles (/image, /director, /registry, /enroll; signed requests, docs/server.md) and operators (/admin; operator tokens with roles, loopback by default)."
        },
        "servers": [
            { "url": "https://127.0.0.1:8443", "description": "vehicle listener (listen)" },
            { "url": "https://127.0.0.1:8444", "description": "admin listener (admin_listen)" }
        ],
        "paths": {
            "/image/{file}": { "get": op("Image repository metadata", "vehicle", "200", vec![meta_file()]) },
            "/image/targets/{path}": { "get": op("A target by hash-prefixed name <dir>/<sha256>.<basename>; supports Range (206)", "vehicle", "200",
                vec![path_param("path", "<dir>/<sha256>.<basename>", json!({ "type": "string", "minLength": 1 }))]) },
            "/director/{vin}/{file}": { "get": op("The vehicle's own Director metadata (same file names as the Image repository)", "vehicle", "200", vec![vin(), meta_file()]) },
            "/director/{vin}/manifest": { "put": with_body(op("Submit the signed vehicle version manifest", "vehicle", "200", vec![vin()]), "Manifest", "application/json") },
            "/registry/{vin}/{serial}/did.json": { "get": op("DID document of one of the requesting vehicle's ECU keys", "vehicle", "200", vec![vin(), serial()]) },
            "/enroll": { "post": with_body(op("Register this vehicle with a single-use enrollment credential bound to its VIN", "enrollment", "201", vec![]), "VehicleRegistration", "application/json") },
            "/admin/openapi.json": { "get": op("This document", "none", "200", vec![]) },
            "/admin/status": { "get": op("Counts and repository state", "admin:viewer", "200", vec![]) },
            "/admin/vehicles": {
                "get": op("List vehicles", "admin:viewer", "200", vec![]),
                "post": with_body(op("Register a vehicle and its ECUs (workshop; vehicles enroll themselves with /enroll)", "admin:fleet-admin", "201", vec![]), "VehicleRegistration", "application/json")
            },
            "/admin/vehicles/{vin}": { "get": op("A vehicle, its ECUs (installed images, DIDs) and assignments", "admin:viewer", "200", vec![vin()]) },
            "/admin/vehicles/{vin}/ecus/{serial}": { "put": with_body(op("Replace an ECU (new key; pending assignment cancelled, counters reset)", "admin:fleet-admin", "200", vec![vin(), serial()]), "EcuReplacement", "application/json") },
            "/admin/vehicles/{vin}/history": { "get": op("History events of a vehicle", "admin:viewer", "200", vec![vin()]) },
            "/admin/enrollments": {
                "get": op("Enrollment credentials (never their secrets)", "admin:viewer", "200", vec![limit(crate::admin::MAX_LIST_LIMIT)]),
                "post": with_body(op("Make a single-use enrollment credential for one VIN; shown once", "admin:fleet-admin", "201", vec![]), "NewEnrollment", "application/json")
            },
            "/admin/events": { "get": op("History events", "admin:viewer", "200", vec![
                query_param("vin", "Only this vehicle", json!({ "type": "string" })), limit(crate::admin::MAX_LIST_LIMIT)]) },
            "/admin/audit": { "get": op("Audit records, oldest first", "admin:viewer", "200", vec![
                query_param("after", "Records after this sequence number", json!({ "type": "integer", "minimum": 0 })), limit(crate::admin::MAX_LIST_LIMIT)]) },
            "/admin/blobs": { "put": with_body(op("Upload an image blob; stored by SHA-256", "admin:release-manager", "201", vec![]), "Blob", "application/octet-stream") },
            "/admin/image/root": { "get": op("Current Image root", "admin:viewer", "200", vec![]) },
            "/admin/director/root": { "get": op("Current Director root", "admin:viewer", "200", vec![]) },
            "/admin/director/rotate": { "post": with_body(op("Rotate a Director role's key (new root version; all vehicles re-signed)", "admin:key-admin", "200", vec![]), "RotateDirector", "application/json") },
            "/admin/image/root/rotate": { "post": with_body(op("Accept an offline-signed Image root N+1 (and targets re-signed with rotated keys)", "admin:key-admin", "201", vec![]), "RotateImageRoot", "application/json") },
            "/admin/image/targets": {
                "get": op("Current signed Image targets (for the offline signing tool)", "admin:viewer", "200", vec![]),
                "post": with_body(op("Publish offline-signed Image targets; the server re-signs snapshot and timestamp", "admin:release-manager", "201", vec![]), "PublishTargets", "application/json")
            },
            "/admin/image/online-keys": { "post": with_body(op("Make a pending Image snapshot/timestamp key for the next offline-signed root", "admin:key-admin", "201", vec![]), "NewOnlineKey", "application/json") },
            "/admin/images": { "get": op("Published images", "admin:viewer", "200", vec![]) },
            "/admin/assignments": {
                "get": op("Assignments", "admin:viewer", "200", vec![
                    query_param("vin", "Only this vehicle", json!({ "type": "string" })),
                    query_param("status", "pending, completed or cancelled", json!({ "type": "string" })),
                    query_param("campaign", "Only this campaign", json!({ "type": "integer" }))]),
                "post": with_body(op("Assign an image to one ECU", "admin:release-manager", "201", vec![]), "NewAssignment", "application/json")
            },
            "/admin/assignments/{id}": { "delete": op("Cancel a pending assignment", "admin:release-manager", "200",
                vec![path_param("id", "Assignment id", json!({ "type": "integer", "format": "int64" }))]) },
            "/admin/campaigns": {
                "get": op("Campaigns with progress", "admin:viewer", "200", vec![]),
                "post": with_body(op("Assign an image to every ECU of a hardware ID", "admin:release-manager", "201", vec![]), "NewCampaign", "application/json")
            },
            "/admin/rollouts": {
                "get": op("Staged rollouts with per-group progress", "admin:viewer", "200", vec![]),
                "post": with_body(op("Create a staged rollout: the image's ECUs split into groups that start in cascade (none assigned until started)", "admin:release-manager", "201", vec![]), "NewRollout", "application/json")
            },
            "/admin/rollouts/{id}": { "get": op("A rollout, its groups and their progress (assigned, installed, failed, attacks, pending)", "admin:viewer", "200", vec![rollout_id()]) },
            "/admin/rollouts/{id}/groups/{number}/targets": { "get": op("One group's ECUs: assignment, its status and the outcome reported (installed, failed, attack, skipped)", "admin:viewer", "200",
                vec![rollout_id(), path_param("number", "Group number, from 1", json!({ "type": "integer", "format": "int64" }))]) },
            "/admin/rollouts/{id}/start": { "post": op("Start a ready rollout: its first group's assignments", "admin:release-manager", "200", vec![rollout_id()]) },
            "/admin/rollouts/{id}/pause": { "post": op("Pause a running rollout: no further group starts (the emergency stop still applies)", "admin:release-manager", "200", vec![rollout_id()]) },
            "/admin/rollouts/{id}/resume": { "post": op("Resume a paused rollout (evaluated at once)", "admin:release-manager", "200", vec![rollout_id()]) },
            "/admin/rollouts/{id}/cancel": { "post": op("Cancel a rollout: its pending assignments and the groups not started", "admin:release-manager", "200", vec![rollout_id()]) }
        },
        "components": {
            "securitySchemes": {
                "operatorToken": { "type": "http", "scheme": "bearer", "description": "An operator's API token (secureev-server operator add); the bootstrap operator's is <data_dir>/admin-token" },
                "enrollmentCredential": { "type": "http", "scheme": "bearer", "description": "A single-use enrollment credential (secureev-server enroll create --vin ...)" },
                "vehicleId": { "type": "apiKey", "in": "header", "name": "X-SecureEV-Vehicle" },
                "vehicleTimestamp": { "type": "apiKey", "in": "header", "name": "X-SecureEV-Timestamp" },
                "vehicleNonce": { "type": "apiKey", "in": "header", "name": "X-SecureEV-Nonce" },
                "vehicleSignature": { "type": "apiKey", "in": "header", "name": "X-SecureEV-Signature", "description": "Hex DER ECDSA P-256 signature by the Primary's registered key over the canonical request (docs/server.md)" }
            },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error", "message"],
                    "properties": { "error": { "type": "string" }, "message": { "type": "string" } }
                },
                "EcuRegistration": {
                    "type": "object", "required": ["serial", "hardware_id", "public_key"], "additionalProperties": false,
                    "properties": {
                        "serial": { "type": "string" },
                        "hardware_id": { "type": "string" },
                        "public_key": { "type": ["string", "object"], "description": "did:key, PEM SPKI or TUF key object of the ECU's P-256 key" },
                        "encryption_key": { "type": "string", "description": "hex X25519 public key" }
                    }
                },
                "VehicleRegistration": {
                    "type": "object", "required": ["vin", "primary_serial", "ecus"], "additionalProperties": false,
                    "properties": {
                        "vin": { "type": "string" },
                        "primary_serial": { "type": "string" },
                        "ecus": { "type": "array", "minItems": 1, "maxItems": 256, "items": { "$ref": "#/components/schemas/EcuRegistration" } }
                    }
                },
                "EcuReplacement": {
                    "type": "object", "required": ["public_key"], "additionalProperties": false,
                    "properties": {
                        "hardware_id": { "type": "string" },
                        "public_key": { "type": ["string", "object"], "description": "did:key, PEM SPKI or TUF key object of the new unit's P-256 key" },
                        "encryption_key": { "type": "string", "description": "hex X25519 public key" }
                    }
                },
                "NewEnrollment": {
                    "type": "object", "required": ["vin"], "additionalProperties": false,
                    "properties": {
                        "vin": { "type": "string", "pattern": VIN_PATTERN },
                        "ttl_secs": { "type": ["integer", "null"], "minimum": 60, "maximum": crate::enroll::MAX_TTL_SECS }
                    }
                },
                "NewAssignment": {
                    "type": "object", "required": ["vin", "ecu_serial", "image"], "additionalProperties": false,
                    "properties": { "vin": { "type": "string" }, "ecu_serial": { "type": "string" }, "image": { "type": "string" } }
                },
                "NewCampaign": {
                    "type": "object", "required": ["name", "image", "hardware_id"], "additionalProperties": false,
                    "properties": { "name": { "type": "string" }, "image": { "type": "string" }, "hardware_id": { "type": "string" } }
                },
                "RolloutGroup": {
                    "type": "object", "additionalProperties": false,
                    "description": "count or percent (of all the rollout's ECUs, rounded up), or neither: every ECU left; optionally filtered",
                    "properties": {
                        "name": { "type": "string", "minLength": 1, "maxLength": 64 },
                        "count": { "type": "integer", "minimum": 1 },
                        "percent": { "type": "integer", "minimum": 1, "maximum": 100 },
                        "vin_pattern": { "type": "string", "pattern": "^[A-Za-z0-9._*?-]{1,64}$", "description": "* any run, ? one character" },
                        "hardware_id": { "type": "string", "pattern": ID_PATTERN },
                        "success_threshold": { "type": "integer", "minimum": 0, "maximum": 100 },
                        "error_threshold": { "type": "integer", "minimum": 0, "maximum": 100 }
                    },
                    "not": { "required": ["count", "percent"] }
                },
                "NewRollout": {
                    "type": "object", "required": ["name", "image", "groups"], "additionalProperties": false,
                    "properties": {
                        "name": { "type": "string", "minLength": 1, "maxLength": 200 },
                        "image": { "type": "string" },
                        "hardware_ids": { "type": "array", "minItems": 1, "items": { "type": "string", "pattern": ID_PATTERN }, "description": "default: every hardware ID the image is built for" },
                        "groups": { "type": "array", "minItems": 1, "maxItems": crate::rollout::MAX_GROUPS, "items": { "$ref": "#/components/schemas/RolloutGroup" } },
                        "success_threshold": { "type": "integer", "minimum": 0, "maximum": 100, "default": crate::rollout::DEFAULT_SUCCESS_THRESHOLD, "description": "percent of a group's assigned ECUs installed that starts the next group" },
                        "error_threshold": { "type": "integer", "minimum": 0, "maximum": 100, "default": crate::rollout::DEFAULT_ERROR_THRESHOLD, "description": "percent of a group's assigned ECUs failed or attacked above which the rollout stops" },
                        "start": { "type": "boolean", "default": false, "description": "start the first group at once" }
                    }
                },
                "PublishTargets": {
                    "type": "object", "required": ["metadata"], "additionalProperties": false,
                    "properties": {
                        "metadata": { "type": "object", "description": "Signed targets envelope" },
                        "encrypted": { "type": "object", "additionalProperties": {
                            "type": "object", "required": ["content_key", "info"],
                            "properties": { "content_key": { "type": "string", "description": "base64, 32 bytes" }, "info": { "type": "object" } }
                        } }
                    }
                },
                "RotateDirector": {
                    "type": "object", "required": ["role"], "additionalProperties": false,
                    "properties": {
                        "role": { "enum": ["root", "targets", "snapshot", "timestamp"] },
                        "mode": { "enum": ["replace", "add"], "default": "replace" },
                        "threshold": { "type": ["integer", "null"], "minimum": 1, "description": "absent or null: the role keeps its threshold (at most its number of keys)" }
                    }
                },
                "NewOnlineKey": {
                    "type": "object", "required": ["role"], "additionalProperties": false,
                    "properties": { "role": { "enum": ["snapshot", "timestamp"] } }
                },
                "RotateImageRoot": {
                    "type": "object", "required": ["root"], "additionalProperties": false,
                    "properties": { "root": { "type": "object" }, "targets": { "type": "object" } }
                },
                "Manifest": { "type": "object", "description": "Signed vehicle version manifest (docs/manifest.md)" },
                "Blob": { "type": "string", "format": "binary" }
            }
        }
    })
}

/// GET /admin/openapi.json
pub async fn handler() -> Json<Value> {
    Json(document())
}
