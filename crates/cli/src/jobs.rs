//! `reelgate jobs get | list | wait`: read jobs on an Apiframe v2 server, as a client.
//! It only reads (and downloads results); it never changes a job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{fail, print_json, wait_and_download, ApiClient, ClientArgs, ClientError};

/// Read jobs on an Apiframe v2 server.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Print one job as JSON.
    Get {
        /// The job id (a UUID).
        id: String,
    },
    /// Print a page of jobs, newest first, as JSON ({jobs, nextCursor, hasMore}).
    List {
        /// Only jobs in this status (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this model.
        #[arg(long)]
        model: Option<String>,
        /// Jobs per page (1-100).
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this cursor (a previous page's nextCursor).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// `user` (this key's jobs, the default) or `team` (the account's).
        #[arg(long)]
        scope: Option<String>,
        /// Follow nextCursor to the last page and print every job in one list.
        #[arg(long)]
        all: bool,
    },
    /// Wait for a job to finish, then download its video and print the path.
    Wait {
        /// The job id (a UUID).
        id: String,
        /// Where to save the video (default: <jobId>.mp4 in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs the command; the exit code says how it ended (see [`crate::client`]).
pub async fn run(args: JobsArgs) -> ExitCode {
    let client = match ApiClient::new(&args.client) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let printed = match args.command {
        JobsCommand::Get { id } => client.get_job(&id).await,
        JobsCommand::List { status, model, limit, cursor, scope, all } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            let filters =
                [("status", status), ("model", model), ("limit", limit.map(|l| l.to_string())), ("scope", scope)];
            query.extend(filters.into_iter().filter_map(|(name, v)| v.map(|v| (name, v))));
            if all {
                list_all(&client, query).await
            } else {
                query.extend(cursor.map(|c| ("cursor", c)));
                client.list_jobs(&query).await
            }
        }
        JobsCommand::Wait { id, out } => return wait_and_download(&client, &id, out).await,
    };
    match printed {
        Ok(value) => {
            print_json(&value);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Every page, in the shape of one page that happens to hold everything.
async fn list_all(client: &ApiClient, query: Vec<(&str, String)>) -> Result<Value, ClientError> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.clone();
        q.extend(cursor.take().map(|c| ("cursor", c)));
        let mut page = client.list_jobs(&q).await?;
        if let Some(Value::Array(items)) = page.get_mut("jobs").map(Value::take) {
            jobs.extend(items);
        }
        match page["nextCursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
            _ => break,
        }
    }
    Ok(json!({"jobs": jobs, "nextCursor": null, "hasMore": false}))
}
