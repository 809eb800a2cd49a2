//! The model catalog: which Hailuo variants exist, what each costs in credits, and
//! the request schema a client can read before sending a job.
//!
//! Prices come from the built-in table (Apiframe's published credit costs) and can be
//! overridden per model and variant by the operator's catalog file. hailuo-2.3-fast has
//! no published price, so it inherits hailuo-2.3's effective table unless configured.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::{Duration, ModelId, Resolution};
use crate::validation::PROMPT_MAX_CHARS;

/// A priced variant: resolution and length. 1080p with 10 s does not exist.
pub type Variant = (Resolution, Duration);

/// The variants Hailuo offers, cheapest first.
pub const VARIANTS: [Variant; 3] =
    [(Resolution::P768, Duration::Six), (Resolution::P768, Duration::Ten), (Resolution::P1080, Duration::Six)];

/// Apiframe's name for a variant, e.g. `768p-6s`.
pub fn variant_name((resolution, duration): Variant) -> String {
    format!("{}-{}s", resolution.as_str(), duration.seconds())
}

fn parse_variant(name: &str) -> Option<Variant> {
    VARIANTS.into_iter().find(|v| variant_name(*v) == name)
}

/// One catalog entry.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The model.
    pub id: ModelId,
    /// Human label.
    pub label: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Credits per variant; every entry of [`VARIANTS`] is present.
    pub prices: BTreeMap<Variant, u32>,
}

impl ModelSpec {
    /// Cheapest variant's price.
    pub fn cost_min(&self) -> u32 {
        self.prices.values().copied().min().unwrap_or(0)
    }

    /// Dearest variant's price.
    pub fn cost_max(&self) -> u32 {
        self.prices.values().copied().max().unwrap_or(0)
    }

    /// JSON Schema of this model's `hailuoParams` block.
    pub fn params_schema(&self) -> Value {
        let mut properties = json!({
            "duration": {"type": "number", "enum": [6, 10], "default": 6,
                         "description": "Clip length in seconds. 10 s is only available at 768p."},
            "resolution": {"type": "string", "enum": ["768p", "1080p"], "default": "768p"},
            "image": {"type": "string", "format": "uri",
                      "description": "First frame: an http(s) URL or a data:image/...;base64, URL."},
            "prompt_optimizer": {"type": "boolean"},
        });
        if self.id.accepts_end_image() {
            properties["end_image"] = json!({"type": "string", "format": "uri",
                "description": "Last frame; requires image."});
        }
        let mut schema = json!({"type": "object", "additionalProperties": false, "properties": properties});
        if self.id.requires_image() {
            schema["required"] = json!(["image"]);
        }
        schema
    }

    /// JSON Schema of a whole `POST /v2/videos/generate` body for this model.
    pub fn request_schema(&self) -> Value {
        let mut schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["prompt", "model"],
            "properties": {
                "model": {"type": "string", "enum": [self.id.as_str()]},
                "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX_CHARS},
                "hailuoParams": self.params_schema(),
                "webhookUrl": {"type": "string", "format": "uri"},
                "webhookEvents": {"type": "array", "minItems": 1,
                    "items": {"type": "string", "enum": ["progress", "completed", "failed"]}},
            }
        });
        if self.id.requires_image() {
            schema["required"] = json!(["prompt", "model", "hailuoParams"]);
        }
        schema
    }

    /// The price table as a list a client can read.
    pub fn price_table(&self) -> Value {
        Value::Array(
            self.prices
                .iter()
                .map(|(&(r, d), &credits)| {
                    json!({"variant": variant_name((r, d)), "resolution": r.as_str(),
                           "duration": d.seconds(), "credits": credits})
                })
                .collect(),
        )
    }
}

/// Operator overrides: model id -> variant name -> credits.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverrides {
    /// e.g. `prices."hailuo-2.3-fast"."768p-6s" = 4`.
    #[serde(default)]
    pub prices: BTreeMap<String, BTreeMap<String, u32>>,
}

/// A catalog override that names something that does not exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// The model id is not served.
    #[error("catalog names unknown model {0:?}")]
    UnknownModel(String),
    /// The variant is not one of 768p-6s, 768p-10s, 1080p-6s.
    #[error("catalog names unknown variant {variant:?} for {model}; known: 768p-6s, 768p-10s, 1080p-6s")]
    UnknownVariant {
        /// Model id.
        model: String,
        /// Offending variant name.
        variant: String,
    },
}

/// The effective catalog: every served model with its prices.
#[derive(Clone, Debug)]
pub struct Catalog {
    models: Vec<ModelSpec>,
}

impl Catalog {
    /// The built-in catalog with Apiframe's published prices.
    pub fn builtin() -> Self {
        Self::with_overrides(&PriceOverrides::default()).expect("empty overrides are always valid")
    }

    /// The built-in catalog with the operator's overrides applied.
    pub fn with_overrides(overrides: &PriceOverrides) -> Result<Self, CatalogError> {
        let mut parsed: BTreeMap<ModelId, BTreeMap<Variant, u32>> = BTreeMap::new();
        for (model, table) in &overrides.prices {
            let id = ModelId::parse(model).ok_or_else(|| CatalogError::UnknownModel(model.clone()))?;
            for (variant, credits) in table {
                let v = parse_variant(variant)
                    .ok_or_else(|| CatalogError::UnknownVariant { model: model.clone(), variant: variant.clone() })?;
                parsed.entry(id).or_default().insert(v, *credits);
            }
        }
        let table = |id: ModelId, base: [u32; 3]| -> BTreeMap<Variant, u32> {
            let mut prices: BTreeMap<Variant, u32> = VARIANTS.into_iter().zip(base).collect();
            if let Some(over) = parsed.get(&id) {
                prices.extend(over.iter().map(|(k, v)| (*k, *v)));
            }
            prices
        };
        let h23 = table(ModelId::Hailuo23, [5, 10, 10]);
        let h02 = table(ModelId::Hailuo02, [5, 8, 10]);
        // No published price for Fast: it costs what hailuo-2.3 costs here, overrides included.
        let fast_base = [h23[&VARIANTS[0]], h23[&VARIANTS[1]], h23[&VARIANTS[2]]];
        let fast = table(ModelId::Hailuo23Fast, fast_base);
        Ok(Self {
            models: vec![
                ModelSpec {
                    id: ModelId::Hailuo23,
                    label: "Hailuo 2.3",
                    description:
                        "MiniMax Hailuo 2.3: text-to-video and image-to-video, 6 or 10 s at 768p, 6 s at 1080p.",
                    prices: h23,
                },
                ModelSpec {
                    id: ModelId::Hailuo02,
                    label: "Hailuo 02",
                    description: "MiniMax Hailuo 02: text-to-video and image-to-video with an optional last frame.",
                    prices: h02,
                },
                ModelSpec {
                    id: ModelId::Hailuo23Fast,
                    label: "Hailuo 2.3 Fast",
                    description: "MiniMax Hailuo 2.3 Fast: a quicker, image-to-video-only Hailuo 2.3 for drafts.",
                    prices: fast,
                },
            ],
        })
    }

    /// Every model in catalog order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// The entry for one model.
    pub fn model(&self, id: ModelId) -> &ModelSpec {
        self.models.iter().find(|m| m.id == id).expect("the catalog lists every ModelId")
    }

    /// Credits for a variant, or `None` when the variant does not exist (1080p with 10 s).
    pub fn price(&self, id: ModelId, resolution: Resolution, duration: Duration) -> Option<u32> {
        self.model(id).prices.get(&(resolution, duration)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_prices_match_the_published_tables() {
        let c = Catalog::builtin();
        let cases = [
            (ModelId::Hailuo23, Resolution::P768, Duration::Six, Some(5)),
            (ModelId::Hailuo23, Resolution::P768, Duration::Ten, Some(10)),
            (ModelId::Hailuo23, Resolution::P1080, Duration::Six, Some(10)),
            (ModelId::Hailuo23, Resolution::P1080, Duration::Ten, None),
            (ModelId::Hailuo02, Resolution::P768, Duration::Six, Some(5)),
            (ModelId::Hailuo02, Resolution::P768, Duration::Ten, Some(8)),
            (ModelId::Hailuo02, Resolution::P1080, Duration::Six, Some(10)),
            (ModelId::Hailuo02, Resolution::P1080, Duration::Ten, None),
            (ModelId::Hailuo23Fast, Resolution::P768, Duration::Six, Some(5)),
            (ModelId::Hailuo23Fast, Resolution::P768, Duration::Ten, Some(10)),
            (ModelId::Hailuo23Fast, Resolution::P1080, Duration::Six, Some(10)),
        ];
        for (m, r, d, want) in cases {
            assert_eq!(c.price(m, r, d), want, "{m} {r:?} {d:?}");
        }
        assert_eq!(c.model(ModelId::Hailuo02).cost_min(), 5);
        assert_eq!(c.model(ModelId::Hailuo02).cost_max(), 10);
    }

    #[test]
    fn fast_follows_overridden_hailuo_23_unless_configured_itself() {
        let mut o = PriceOverrides::default();
        o.prices.insert("hailuo-2.3".into(), [("768p-6s".to_string(), 7)].into());
        let c = Catalog::with_overrides(&o).unwrap();
        assert_eq!(c.price(ModelId::Hailuo23Fast, Resolution::P768, Duration::Six), Some(7));
        o.prices.insert("hailuo-2.3-fast".into(), [("768p-6s".to_string(), 3)].into());
        let c = Catalog::with_overrides(&o).unwrap();
        assert_eq!(c.price(ModelId::Hailuo23Fast, Resolution::P768, Duration::Six), Some(3));
        assert_eq!(c.price(ModelId::Hailuo23, Resolution::P768, Duration::Six), Some(7));
    }

    #[test]
    fn overrides_naming_unknown_things_are_refused() {
        let mut o = PriceOverrides::default();
        o.prices.insert("hailuo-2.3".into(), [("1080p-10s".to_string(), 20)].into());
        assert!(matches!(Catalog::with_overrides(&o), Err(CatalogError::UnknownVariant { .. })));
        let mut o = PriceOverrides::default();
        o.prices.insert("veo-3".into(), BTreeMap::new());
        assert_eq!(Catalog::with_overrides(&o).unwrap_err(), CatalogError::UnknownModel("veo-3".into()));
    }
}
