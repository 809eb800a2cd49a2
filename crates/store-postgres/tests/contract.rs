//! The shared store contract (crate `store-contract`) run against PostgreSQL: every case
//! in a fresh schema (see `support/schema.rs` for how the database is chosen).

#[path = "support/schema.rs"]
mod schema;

use std::sync::Arc;

use store_contract::TestStore;
use store_postgres::PgStore;

async fn open() -> Option<TestStore> {
    let schema = schema::TestSchema::create().await?;
    let store = PgStore::connect(&schema.url).await.expect("connect and migrate the test schema");
    Some(TestStore { store: Arc::new(store), cleanup: Some(Box::pin(schema.drop_schema())) })
}

store_contract::contract_tests!(open);
