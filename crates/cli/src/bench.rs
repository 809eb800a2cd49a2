//! `reelgate bench`: placeholder replaced below.

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per measured endpoint.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench is not built yet")
}
