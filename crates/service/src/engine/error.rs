//! The engine's error type: why a step could not do its work.
//!
//! A step handles its own errors (requeue, retry, fail the job), so these rarely leave
//! the engine; what they must get right is their text, which becomes the reason a client
//! reads on a failed job (an input or a result copy) or a log line (the reapers).

use super::minimax::UpstreamError;

/// Why an engine step failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An input image (or the stored request) cannot be used; the text names the field
    /// and is shown to the client as is.
    #[error("{0}")]
    Input(String),
    /// MiniMax reported success but no file id was recorded for the job.
    #[error("no file id recorded")]
    NoFileId,
    /// The MiniMax account that ran the job is no longer configured.
    #[error("the MiniMax account that ran this job is no longer configured")]
    UpstreamRemoved,
    /// Asking MiniMax for the result's download links failed.
    #[error(transparent)]
    Retrieve(#[from] UpstreamError),
    /// The download request failed before an answer.
    #[error("download failed: {0}")]
    Download(reqwest::Error),
    /// The download link answered with an error status (403: an expired link).
    #[error("download answered HTTP {0}")]
    DownloadStatus(reqwest::StatusCode),
    /// The video is over `engine.max_result_bytes`.
    #[error("the video is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The download stopped part way.
    #[error("download interrupted after {received} bytes: {source}")]
    Interrupted {
        /// Bytes received before it stopped.
        received: u64,
        /// What stopped it.
        source: reqwest::Error,
    },
    /// Fewer bytes arrived than the answer announced.
    #[error("download truncated: {received} of {announced} bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Bytes announced (Content-Length).
        announced: u64,
    },
    /// The download is not an MP4 file.
    #[error("the download is not an MP4 file")]
    NotMp4,
    /// Writing the video into the result store failed.
    #[error("cannot store the video: {0}")]
    StoreVideo(std::io::Error),
    /// Every download link failed; each problem in the order tried.
    #[error("{}", join(.0))]
    AllLinks(Vec<EngineError>),
    /// The result store failed (reapers).
    #[error(transparent)]
    Results(std::io::Error),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

fn join(problems: &[EngineError]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl From<String> for EngineError {
    /// An input problem, as [`super::inputs`] words it.
    fn from(message: String) -> Self {
        Self::Input(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_clients_have_always_seen_them() {
        let cases = [
            (EngineError::Input("image: not a valid URL".into()), "image: not a valid URL"),
            (EngineError::NoFileId, "no file id recorded"),
            (EngineError::TooLarge { max: 10 }, "the video is larger than 10 bytes"),
            (EngineError::Truncated { received: 5, announced: 9 }, "download truncated: 5 of 9 bytes"),
            (
                EngineError::AllLinks(vec![EngineError::NotMp4, EngineError::TooLarge { max: 1 }]),
                "the download is not an MP4 file; the video is larger than 1 bytes",
            ),
            (EngineError::StoreVideo(std::io::Error::other("disk full")), "cannot store the video: disk full"),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }
}
