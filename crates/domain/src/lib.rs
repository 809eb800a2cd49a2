//! Pure business rules of reelgate: typed ids and entities, request validation,
//! the price catalog and job states.
//!
//! Nothing here performs I/O or knows about HTTP, SQL or async runtimes, so every
//! rule can be unit-tested in isolation and shared by every storage backend.

#![forbid(unsafe_code)]

pub mod address;
pub mod byte_range;
pub mod catalog;
pub mod claim;
pub mod job;
pub mod json;
pub mod keys;
pub mod model;
pub mod submission;
pub mod validation;
pub mod webhook;

pub use catalog::{Catalog, CatalogError, ModelSpec, PriceOverrides};
pub use job::{JobStatus, Stage, WebhookEvent, WebhookStatus};
pub use keys::{ApiKeySecret, KeyDigest, ADMIN_TOKEN_PREFIX};
pub use model::{AccountId, ApiKeyId, ApiKeyStatus, Duration, JobId, ModelId, Resolution, UploadId};
pub use validation::{GenerateRequest, ImageRef, ValidationErrors};
