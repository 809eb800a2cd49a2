//! Renders real, playable H.264 MP4 files for the MiniMax sandbox.
