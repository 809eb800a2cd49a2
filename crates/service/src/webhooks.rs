//! Client webhooks: signing, the outbox worker and delivery.

pub mod deliver;
pub mod sign;
