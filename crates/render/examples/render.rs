//! Renders one video to a file and prints its size and how long rendering took.
//!
//! cargo run --release -p render --example render -- OUT.mp4 WIDTH HEIGHT SECONDS PROMPT [FIRST_IMAGE [LAST_IMAGE]]
//! Pass `-` as FIRST_IMAGE to give only a last image.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        return Err("usage: render OUT.mp4 WIDTH HEIGHT SECONDS PROMPT [FIRST_IMAGE [LAST_IMAGE]]".into());
    }
    let image = |i: usize| -> Result<Option<render::DecodedImage>, Box<dyn std::error::Error>> {
        match args.get(i).filter(|p| p.as_str() != "-") {
            Some(path) => Ok(Some(render::decode_image(&std::fs::read(path)?)?)),
            None => Ok(None),
        }
    };
    let decoding = Instant::now();
    let (first_frame, last_frame) = (image(5)?, image(6)?);
    let decode_ms = decoding.elapsed().as_secs_f64() * 1000.0;
    let req = render::RenderRequest {
        width: args[1].parse()?,
        height: args[2].parse()?,
        seconds: args[3].parse()?,
        prompt: args[4].clone(),
        first_frame,
        last_frame,
    };
    let started = Instant::now();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&args[0])?);
    let bytes = render::render_mp4(&req, &mut file)?;
    let elapsed = started.elapsed();
    let render_ms = elapsed.as_secs_f64() * 1000.0;
    println!("{}: {bytes} bytes, rendered in {render_ms:.0} ms (images decoded in {decode_ms:.0} ms)", args[0]);
    Ok(())
}
