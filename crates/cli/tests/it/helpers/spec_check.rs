//! Checks response bodies against the reference Apiframe spec
//! (`../shared/reference/apiframe-openapi.json`, beside the checkout).
//!
//! A user's fresh clone has no `../shared`; then the checks are skipped and say so once.
//! CI has it, so there every body every test sees is validated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The reference spec, if present, with compiled validators.
pub struct ReferenceSpec {
    doc: Option<Value>,
    validators: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

impl ReferenceSpec {
    /// Where CI puts the reference spec.
    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/apiframe-openapi.json")
    }

    /// The process-wide instance.
    pub fn get() -> &'static ReferenceSpec {
        static SPEC: OnceLock<ReferenceSpec> = OnceLock::new();
        SPEC.get_or_init(|| {
            let path = Self::path();
            let doc = match std::fs::read_to_string(&path) {
                Ok(text) => Some(serde_json::from_str(&text).expect("reference spec is valid JSON")),
                Err(e) => {
                    eprintln!(
                        "SKIP schema checks: reference spec not found at {} ({e}); a clone without ../shared cannot check wire shapes",
                        path.display()
                    );
                    None
                }
            };
            ReferenceSpec { doc, validators: Mutex::new(HashMap::new()) }
        })
    }

    /// The parsed document, when present.
    pub fn doc(&self) -> Option<&Value> {
        self.doc.as_ref()
    }

    /// The response schema the reference gives for this route and status; statuses the
    /// reference does not list (our 409, 413, 405, route 404s) must still be `ErrorResponse`.
    fn schema_for(&self, method: &str, template: &str, status: u16) -> Option<Value> {
        let doc = self.doc.as_ref()?;
        let op = &doc["paths"][template][method.to_ascii_lowercase()];
        let listed = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
        let mut schema = if listed.is_object() {
            listed.clone()
        } else if status >= 400 {
            serde_json::json!({"$ref": "#/components/schemas/ErrorResponse"})
        } else if op.is_object() {
            panic!("{method} {template}: status {status} is not in the reference spec");
        } else {
            return None; // a route the reference does not describe (healthz, openapi.json)
        };
        schema["components"] = doc["components"].clone();
        Some(schema)
    }

    /// Panics with every violation when `body` does not match.
    pub fn check(&self, method: &str, template: &str, status: u16, body: &Value) {
        let Some(schema) = self.schema_for(method, template, status) else { return };
        let cache_key = format!("{method} {template} {status}");
        let validator = {
            let mut cache = self.validators.lock().unwrap();
            cache
                .entry(cache_key.clone())
                .or_insert_with(|| {
                    std::sync::Arc::new(
                        jsonschema::options()
                            .with_draft(jsonschema::Draft::Draft202012)
                            .should_validate_formats(true)
                            .build(&schema)
                            .expect("reference schema compiles"),
                    )
                })
                .clone()
        };
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path)).collect();
        assert!(errors.is_empty(), "{cache_key}: body violates the reference spec: {errors:?}\nbody: {body}");
    }
}
