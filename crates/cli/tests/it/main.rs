//! reelgate's integration tests: the real server on an ephemeral port with a fresh data
//! directory, spoken to over real HTTP, and the real binary for the CLI and signals.

mod helpers;

mod account;
mod auth;
mod cancel;
mod client;
mod edge;
mod egress;
mod engine;
mod envelope;
mod generate;
mod jobs;
mod lifecycle;
mod multinode;
mod playback;
mod ratelimit;
mod results_s3;
mod spec;
mod webhooks;
