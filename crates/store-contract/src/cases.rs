//! The contract cases, by area. Each is `pub async fn name(store: Arc<dyn Store>)` and
//! is listed once in [`crate::contract_tests!`].

mod accounts;
mod admin;
mod cancel;
mod changes;
mod claims;
mod lifecycle;
mod reads;
mod submit;
mod transitions;
mod uploads;
mod webhooks;

pub use accounts::*;
pub use admin::*;
pub use cancel::*;
pub use changes::*;
pub use claims::*;
pub use lifecycle::*;
pub use reads::*;
pub use submit::*;
pub use transitions::*;
pub use uploads::*;
pub use webhooks::*;
