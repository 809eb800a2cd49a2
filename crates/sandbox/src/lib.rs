//! A standalone server that speaks MiniMax's video generation wire protocol.
