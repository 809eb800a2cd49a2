//! A fresh PostgreSQL schema per test.
//!
//! Tests connect to `REELGATE_TEST_DATABASE_URL`, or `postgres://postgres@127.0.0.1:5432/postgres`
//! when it is unset, create `test_<random>` there, and hand out a URL whose `options`
//! set `search_path` to it, so the store's migrations and queries land in that schema
//! alone. The schema is dropped afterwards (best effort).
//!
//! An unreachable database fails the test: a suite that silently passes without its
//! database proves nothing. Set `REELGATE_SKIP_POSTGRES=1` to skip deliberately.

#![allow(dead_code)] // Each test binary uses a different part of this file.

use tokio_postgres::NoTls;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A schema created for one test.
pub struct TestSchema {
    base_url: String,
    pub name: String,
    /// Connects to the database with the schema first on the search path.
    pub url: String,
}

impl TestSchema {
    /// Creates the schema; `None` when PostgreSQL is skipped on purpose.
    pub async fn create() -> Option<TestSchema> {
        let base_url = std::env::var("REELGATE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let client = match connect(&base_url).await {
            Ok(client) => client,
            Err(e) if std::env::var("REELGATE_SKIP_POSTGRES").as_deref() == Ok("1") => {
                eprintln!("SKIP: PostgreSQL at {base_url} is unreachable ({e}) and REELGATE_SKIP_POSTGRES=1");
                return None;
            }
            Err(e) => panic!(
                "PostgreSQL at {base_url} is unreachable: {e}. Start it, point REELGATE_TEST_DATABASE_URL \
                 at one, or set REELGATE_SKIP_POSTGRES=1 to skip these tests"
            ),
        };
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        client.batch_execute(&format!("create schema {name}")).await.expect("create the test schema");
        let url = with_search_path(&base_url, &name);
        Some(TestSchema { base_url, name, url })
    }

    /// Drops the schema and everything in it; failures are only reported.
    pub async fn drop_schema(self) {
        let dropped = async {
            let client = connect(&self.base_url).await?;
            client.batch_execute(&format!("drop schema if exists {} cascade", self.name)).await
        };
        if let Err(e) = dropped.await {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }

    /// A raw connection inside the schema, for checks the Store trait cannot make.
    pub async fn raw(&self) -> tokio_postgres::Client {
        connect(&self.url).await.expect("connect to the test schema")
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = url.parse::<tokio_postgres::Config>()?.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` with `search_path` set to `schema` through the startup `options`.
fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        // `-c search_path=<schema>`, percent-encoded for the URL.
        format!("{url}{separator}options=-csearch_path%3D{schema}")
    } else {
        format!("{url} options='-csearch_path={schema}'")
    }
}
