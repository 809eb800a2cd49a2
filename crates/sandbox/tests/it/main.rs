//! The sandbox over real HTTP on ephemeral ports: one binary, one file per area.

mod auth;
mod callbacks;
mod happy;
mod helpers;
mod limits;
mod markers;
mod memory;
mod restart;
mod rules;
