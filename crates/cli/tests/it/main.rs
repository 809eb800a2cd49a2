//! reelgate's integration tests: the real server on an ephemeral port with a fresh data
//! directory, spoken to over real HTTP, and the real binary for the CLI and signals.

mod helpers;

// The allocator of the `reelgate` binary (src/main.rs), so memory figures measured here
// (hostile.rs) are the ones a real server would show.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod account;
mod admin;
mod auth;
mod cancel;
mod client;
mod console;
mod docs;
mod edge;
mod egress;
mod engine;
mod envelope;
mod events;
mod generate;
mod hostile;
mod jobs;
mod lifecycle;
mod metrics;
mod multinode;
mod playback;
mod ratelimit;
mod results_s3;
mod spec;
mod studio;
mod uploads;
mod webhooks;
