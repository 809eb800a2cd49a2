//! The URLs this server hands out: result videos, uploads and MiniMax callbacks, each
//! carrying a token from the [`Signer`], and the reading of an upload URL back.
//!
//! Built once in `run()` and held in the app state, so a node whose engine is off makes
//! and checks the same URLs as one that runs it (the secret is shared through the
//! database). It only formats and verifies; it never touches storage.

use domain::{JobId, UploadId};

use crate::signing::{Purpose, Signer};

/// Makes and reads this server's signed URLs.
#[derive(Clone)]
pub struct Links {
    /// Base of every URL (the public URL, or the listen address), without a final `/`.
    public_base_url: String,
    signer: Signer,
}

impl Links {
    /// Links under `public_base_url`, signed by `signer`.
    pub fn new(public_base_url: String, signer: Signer) -> Self {
        Self { public_base_url, signer }
    }

    /// The token signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The URL a completed job's video is served at.
    pub fn result_url(&self, job: JobId) -> String {
        format!(
            "{}/v2/results/{job}/{}.mp4",
            self.public_base_url,
            self.signer.token(Purpose::Result, &job.to_string())
        )
    }

    /// The URL MiniMax reports on job `job`'s task to.
    pub fn callback_url(&self, job: JobId) -> String {
        let id = job.to_string();
        format!("{}/v1/minimax/callback/{id}/{}", self.public_base_url, self.signer.token(Purpose::Callback, &id))
    }

    /// The URL an upload is served at; also what a job names to use it (see
    /// [`Links::upload_in`]). The extension only helps clients that guess by name.
    pub fn upload_url(&self, id: UploadId, content_type: &str) -> String {
        let ext = match content_type {
            "image/jpeg" => "jpg",
            "image/png" => "png",
            "image/webp" => "webp",
            _ => "bin",
        };
        format!(
            "{}/v2/uploads/{id}/{}.{ext}",
            self.public_base_url,
            self.signer.token(Purpose::Upload, &id.to_string())
        )
    }

    /// What every one of this server's upload URLs starts with.
    pub fn upload_url_prefix(&self) -> String {
        format!("{}/v2/uploads/", self.public_base_url)
    }

    /// The upload `url` names, when it is one of this server's upload URLs with a valid
    /// token: `Some(None)` for one of ours whose id or token is wrong, `None` for any
    /// other URL.
    pub fn upload_in(&self, url: &str) -> Option<Option<UploadId>> {
        let rest = url.strip_prefix(&self.public_base_url)?.strip_prefix("/v2/uploads/")?;
        let parsed = (|| {
            let (id, file) = rest.split_once('/')?;
            let token = file.split_once('.').map_or(file, |(token, _)| token);
            let upload: UploadId = id.parse().ok()?;
            self.signer.verify(Purpose::Upload, id, token).then_some(upload)
        })();
        Some(parsed)
    }
}
