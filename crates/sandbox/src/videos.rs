//! The render cache: a finished task's MP4 is rendered on first need (a retrieve starts it, a
//! download waits for it), once per distinct [`RenderSpec`], on a blocking thread under a
//! concurrency limit, and kept on disk under the renderer's cache key.
//!
//! 10,000 identical jobs therefore cost one render; concurrent requests for the same spec wait on
//! one `OnceCell`. A failed render leaves the cell empty, so the next request tries again. Files
//! already on disk from an earlier run with the same data directory are reused as they are.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, Semaphore};

use crate::images::ImageStore;
use crate::limits::Limiter;
use crate::renderer;
use crate::tasks::RenderSpec;

/// A rendered video on disk.
#[derive(Clone, Debug)]
pub struct Video {
    pub path: PathBuf,
    pub len: u64,
}

pub struct VideoCache {
    dir: PathBuf,
    images: Arc<ImageStore>,
    permits: Semaphore,
    cells: Mutex<HashMap<Arc<RenderSpec>, Arc<OnceCell<Video>>>>,
    limiter: Arc<Limiter>,
}

impl VideoCache {
    pub fn new(
        dir: PathBuf,
        images: Arc<ImageStore>,
        concurrency: usize,
        limiter: Arc<Limiter>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(VideoCache { dir, images, permits: Semaphore::new(concurrency), cells: Mutex::new(HashMap::new()), limiter })
    }

    /// The video of a spec, rendering it if nobody has yet.
    pub async fn get(self: &Arc<Self>, spec: &Arc<RenderSpec>) -> Result<Video, String> {
        let cell = {
            let mut cells = self.cells.lock().expect("video cell lock poisoned only by a panic inside it");
            cells.entry(spec.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| self.produce(spec.clone())).await.cloned()
    }

    async fn produce(self: &Arc<Self>, spec: Arc<RenderSpec>) -> Result<Video, String> {
        let _permit = self.permits.acquire().await.map_err(|_| "sandbox is shutting down".to_owned())?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.produce_blocking(&spec))
            .await
            .map_err(|e| format!("render task failed: {e}"))?
    }

    fn produce_blocking(&self, spec: &RenderSpec) -> Result<Video, String> {
        let load = |image: &Option<crate::images::ImageRef>| {
            image.as_ref().map(|i| self.images.load(i)).transpose().map_err(|e| format!("input image lost: {e}"))
        };
        let prepared = renderer::prepare(
            (spec.width, spec.height, spec.seconds),
            &spec.prompt,
            load(&spec.first_frame)?,
            load(&spec.last_frame)?,
        )?;
        let path = self.dir.join(format!("{}.mp4", renderer::cache_key(&prepared)));
        if let Ok(meta) = std::fs::metadata(&path) {
            return Ok(Video { path, len: meta.len() });
        }
        let tmp = path.with_extension(format!("{}.tmp", rand::random::<u64>()));
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
            let mut out = std::io::BufWriter::new(file);
            let len = renderer::render(&prepared, &mut out)?;
            out.flush().map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            Ok(len)
        })();
        match result {
            Ok(len) => {
                self.limiter.renders.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), bytes = len, "sandbox rendered a video");
                Ok(Video { path, len })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::error!(error = %e, "sandbox render failed");
                Err(e)
            }
        }
    }
}
