//! The OpenAPI 3.1 document of the HTTP API, served at `/admin/openapi.json`
//! and committed as `docs/openapi.json` (a test keeps the two equal).

use axum::Json;
use serde_json::{json, Value};

fn op(summary: &str, auth: &str, ok: &str) -> Value {
    let security = match auth {
        "admin" => json!([{ "adminToken": [] }]),
        "vehicle" => {
            json!([{ "vehicleSignature": [], "vehicleId": [], "vehicleTimestamp": [], "vehicleNonce": [] }])
        }
        _ => json!([]),
    };
    json!({
        "summary": summary,
        "security": security,
        "responses": {
            ok: { "description": "Success" },
            "4XX": { "description": "Refused", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
        }
    })
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
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "SecureEV-OTA server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Uptane 2.1 Image repository, per-vehicle Director and vehicle registry. Vehicle requests are signed (see docs/server.md); admin requests carry a bearer token."
        },
        "paths": {
            "/image/{file}": { "get": op("Image repository metadata: <N>.root.json, timestamp.json, <N>.snapshot.json, <N>.targets.json", "vehicle", "200") },
            "/image/targets/{path}": { "get": op("A target by hash-prefixed name <dir>/<sha256>.<basename>; supports Range (206)", "vehicle", "200") },
            "/director/{vin}/{file}": { "get": op("The vehicle's Director metadata (same file names as the Image repository)", "vehicle", "200") },
            "/director/{vin}/manifest": { "put": with_body(op("Submit the signed vehicle version manifest", "vehicle", "200"), "Manifest", "application/json") },
            "/registry/{vin}/{serial}/did.json": { "get": op("DID document of a registered ECU key", "none", "200") },
            "/admin/openapi.json": { "get": op("This document", "none", "200") },
            "/admin/status": { "get": op("Counts and repository state", "admin", "200") },
            "/admin/vehicles": {
                "get": op("List vehicles", "admin", "200"),
                "post": with_body(op("Register a vehicle and its ECUs", "admin", "201"), "VehicleRegistration", "application/json")
            },
            "/admin/vehicles/{vin}": { "get": op("A vehicle, its ECUs (installed images, DIDs) and assignments", "admin", "200") },
            "/admin/vehicles/{vin}/ecus/{serial}": { "put": with_body(op("Replace an ECU (new key; pending assignment cancelled, counters reset)", "admin", "200"), "EcuReplacement", "application/json") },
            "/admin/vehicles/{vin}/history": { "get": op("History events of a vehicle", "admin", "200") },
            "/admin/events": { "get": op("History events (query: vin, limit)", "admin", "200") },
            "/admin/blobs": { "put": with_body(op("Upload an image blob; stored by SHA-256", "admin", "201"), "Blob", "application/octet-stream") },
            "/admin/image/root": { "get": op("Current Image root", "admin", "200") },
            "/admin/director/root": { "get": op("Current Director root", "admin", "200") },
            "/admin/director/rotate": { "post": with_body(op("Rotate a Director role's key (new root version; all vehicles re-signed)", "admin", "200"), "RotateDirector", "application/json") },
            "/admin/image/root/rotate": { "post": with_body(op("Accept an offline-signed Image root N+1 (and targets re-signed with rotated keys)", "admin", "201"), "RotateImageRoot", "application/json") },
            "/admin/image/targets": {
                "get": op("Current signed Image targets (for the offline signing tool)", "admin", "200"),
                "post": with_body(op("Publish offline-signed Image targets; the server re-signs snapshot and timestamp", "admin", "201"), "PublishTargets", "application/json")
            },
            "/admin/image/online-keys": { "post": with_body(op("Make a pending Image snapshot/timestamp key for the next offline-signed root", "admin", "201"), "NewOnlineKey", "application/json") },
            "/admin/images": { "get": op("Published images", "admin", "200") },
            "/admin/assignments": {
                "get": op("Assignments (query: vin, status, campaign)", "admin", "200"),
                "post": with_body(op("Assign an image to one ECU", "admin", "201"), "NewAssignment", "application/json")
            },
            "/admin/assignments/{id}": { "delete": op("Cancel a pending assignment", "admin", "200") },
            "/admin/campaigns": {
                "get": op("Campaigns with progress", "admin", "200"),
                "post": with_body(op("Assign an image to every ECU of a hardware ID", "admin", "201"), "NewCampaign", "application/json")
            }
        },
        "components": {
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer", "description": "Contents of <data_dir>/admin-token" },
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
                        "public_key": { "description": "did:key, PEM SPKI or TUF key object of the ECU's P-256 key" },
                        "encryption_key": { "type": "string", "description": "hex X25519 public key" }
                    }
                },
                "VehicleRegistration": {
                    "type": "object", "required": ["vin", "primary_serial", "ecus"], "additionalProperties": false,
                    "properties": {
                        "vin": { "type": "string" },
                        "primary_serial": { "type": "string" },
                        "ecus": { "type": "array", "items": { "$ref": "#/components/schemas/EcuRegistration" } }
                    }
                },
                "EcuReplacement": {
                    "type": "object", "required": ["public_key"], "additionalProperties": false,
                    "properties": {
                        "hardware_id": { "type": "string" },
                        "public_key": { "description": "did:key, PEM SPKI or TUF key object of the new unit's P-256 key" },
                        "encryption_key": { "type": "string", "description": "hex X25519 public key" }
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
                        "threshold": { "type": "integer", "minimum": 1 }
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
