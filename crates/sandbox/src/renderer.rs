//! The one seam between the sandbox and the `render` crate: image probing, output sizes, cache
//! keys and MP4 rendering. Everything here is blocking or pure; callers put rendering on a
//! blocking thread.

use std::io::Write;

/// The largest image side the renderer decodes; MiniMax itself documents no such limit.
pub const MAX_INPUT_SIDE: u32 = render::MAX_INPUT_SIDE;

/// A render request with its images decoded, ready for [`cache_key`] and [`render`].
pub struct Prepared {
    request: render::RenderRequest,
}

/// Width and height of an image, from its header.
pub fn probe(bytes: &[u8]) -> Result<(u32, u32), String> {
    render::probe_image(bytes).map(|info| (info.width, info.height)).map_err(|e| e.to_string())
}

/// Decodes an image fully and throws the pixels away (blocking): `Err` if it cannot be rendered.
pub fn check_decodes(bytes: &[u8]) -> Result<(), String> {
    render::decode_image(bytes).map(drop).map_err(|e| e.to_string())
}

/// The output size for a resolution (short side in px), following the first frame's aspect if any.
pub fn output_size(p: u32, first_frame: Option<(u32, u32)>) -> (u32, u32) {
    render::output_size(p, first_frame)
}

/// Decodes the stored images of a render of `width`x`height` for `seconds` (blocking).
/// Takes the parts rather than the task's `RenderSpec`: this module sits below the task
/// table (which names images), so it must not import it back.
pub fn prepare(
    (width, height, seconds): (u32, u32, u32),
    prompt: &str,
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
) -> Result<Prepared, String> {
    let decode =
        |bytes: Option<Vec<u8>>| bytes.map(|b| render::decode_image(&b)).transpose().map_err(|e| e.to_string());
    Ok(Prepared {
        request: render::RenderRequest {
            width,
            height,
            seconds,
            prompt: prompt.to_string(),
            first_frame: decode(first)?,
            last_frame: decode(last)?,
        },
    })
}

/// The renderer's cache key: equal keys render identical files.
pub fn cache_key(p: &Prepared) -> String {
    render::cache_key(&p.request)
}

/// Renders the MP4 into `out` and returns its length (blocking, CPU-heavy).
pub fn render(p: &Prepared, out: &mut impl Write) -> Result<u64, String> {
    render::render_mp4(&p.request, out).map_err(|e| e.to_string())
}
