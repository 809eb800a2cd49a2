//! When each macroblock switches from the first picture to the last: a wipe whose direction (a straight edge at
//! any angle, or a circle growing from a point) comes from the prompt.
//!
//! Each macroblock changes exactly once, so the whole video costs the intra-coded first picture plus at most one
//! raw (I_PCM) picture, whatever its length: about 1.6 MB for 768p and 3.2 MB for 1080p.

use crate::picture::Rng;

/// For every frame, the macroblocks (raster addresses, increasing) that switch to the last picture in it.
pub struct Schedule {
    /// (frame, macroblock address), sorted.
    switches: Vec<(u32, u32)>,
}

impl Schedule {
    /// Plans `frames` frames (at least 2) of a `mb_width` x `mb_height` picture. Frame 0 shows only the first
    /// picture, and the last frame completes the switch.
    pub fn new(rng: &mut Rng, mb_width: u32, mb_height: u32, frames: u32) -> Self {
        debug_assert!(frames >= 2);
        let radial = rng.next_u64() & 3 == 0;
        let angle = rng.range(0.0, std::f32::consts::TAU);
        let (ox, oy) = (rng.range(0.2, 0.8) * mb_width as f32, rng.range(0.2, 0.8) * mb_height as f32);
        let distance = |mx: u32, my: u32| {
            let (x, y) = (mx as f32 + 0.5, my as f32 + 0.5);
            if radial {
                ((x - ox).powi(2) + (y - oy).powi(2)).sqrt()
            } else {
                x * angle.cos() + y * angle.sin()
            }
        };
        let total = mb_width * mb_height;
        let distances: Vec<f32> = (0..total).map(|a| distance(a % mb_width, a / mb_width)).collect();
        let min = distances.iter().copied().fold(f32::INFINITY, f32::min);
        let max = distances.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = max - min;
        let mut switches: Vec<(u32, u32)> = distances
            .iter()
            .enumerate()
            .map(|(addr, &d)| {
                let progress = if span > 0.0 { (d - min) / span } else { 1.0 };
                // Frames 1 ..= frames - 1: the edge starts moving at once and arrives on the last frame.
                let frame = 1 + (progress * (frames - 2) as f32).round() as u32;
                (frame.min(frames - 1), addr as u32)
            })
            .collect();
        switches.sort_unstable();
        Self { switches }
    }

    /// The macroblocks that switch in each frame, for frames 1 .. frames, in order (frame 0 switches none).
    pub fn frames(&self, frames: u32) -> impl Iterator<Item = &[(u32, u32)]> + '_ {
        let mut rest = &self.switches[..];
        (1..frames).map(move |frame| {
            let n = rest.iter().take_while(|&&(f, _)| f == frame).count();
            let (now, later) = rest.split_at(n);
            rest = later;
            now
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_macroblock_switches_once_and_the_last_frame_finishes() {
        for prompt in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            let (w, h, frames) = (9, 5, 24);
            let plan = Schedule::new(&mut Rng::from_text("sweep", prompt), w, h, frames);
            let per_frame: Vec<Vec<u32>> = plan.frames(frames).map(|s| s.iter().map(|&(_, a)| a).collect()).collect();
            assert_eq!(per_frame.len(), frames as usize - 1);
            let mut all: Vec<u32> = per_frame.iter().flatten().copied().collect();
            assert!(per_frame.iter().all(|f| f.windows(2).all(|p| p[0] < p[1])), "increasing within a frame");
            all.sort_unstable();
            assert_eq!(all, (0..w * h).collect::<Vec<_>>());
            assert!(!per_frame[0].is_empty() && !per_frame.last().unwrap().is_empty(), "{prompt}");
        }
    }
}
