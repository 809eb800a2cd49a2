//! MiniMax's parameter rules (minimax.md §1.2–§1.4): which model runs in which mode, the
//! duration × resolution matrix, the prompt limit and the image limits, each refusal worded as
//! MiniMax words its 2013 `status_msg`. Pure functions: no I/O, no clock.

use std::fmt;

/// Longest prompt accepted, in characters (Unicode scalar values, not bytes).
pub const MAX_PROMPT_CHARS: usize = 2000;
/// An image must be strictly smaller than this many bytes.
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// An image's short side must be strictly greater than this many pixels.
pub const MIN_SHORT_SIDE: u32 = 300;

/// Generation mode, decided by which body fields are present (§1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    TextToVideo,
    ImageToVideo,
    FirstLastFrame,
    SubjectReference,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::TextToVideo => "Text-to-Video",
            Mode::ImageToVideo => "Image-to-Video",
            Mode::FirstLastFrame => "First-and-Last-Frame-to-Video",
            Mode::SubjectReference => "Subject-Reference-to-Video",
        }
    }
}

/// The models MiniMax's V1 video API accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Model {
    Hailuo23,
    Hailuo23Fast,
    Hailuo02,
    T2v01Director,
    T2v01,
    I2v01Director,
    I2v01Live,
    I2v01,
    S2v01,
}

const MODELS: [Model; 9] = [
    Model::Hailuo23,
    Model::Hailuo23Fast,
    Model::Hailuo02,
    Model::T2v01Director,
    Model::T2v01,
    Model::I2v01Director,
    Model::I2v01Live,
    Model::I2v01,
    Model::S2v01,
];

impl Model {
    pub fn parse(name: &str) -> Option<Model> {
        MODELS.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::Hailuo23 => "MiniMax-Hailuo-2.3",
            Model::Hailuo23Fast => "MiniMax-Hailuo-2.3-Fast",
            Model::Hailuo02 => "MiniMax-Hailuo-02",
            Model::T2v01Director => "T2V-01-Director",
            Model::T2v01 => "T2V-01",
            Model::I2v01Director => "I2V-01-Director",
            Model::I2v01Live => "I2V-01-live",
            Model::I2v01 => "I2V-01",
            Model::S2v01 => "S2V-01",
        }
    }

    fn supports(self, mode: Mode) -> bool {
        use Model::*;
        match mode {
            Mode::TextToVideo => matches!(self, Hailuo23 | Hailuo02 | T2v01Director | T2v01),
            Mode::ImageToVideo => {
                matches!(self, Hailuo23 | Hailuo23Fast | Hailuo02 | I2v01Director | I2v01Live | I2v01)
            }
            Mode::FirstLastFrame => self == Hailuo02,
            Mode::SubjectReference => self == S2v01,
        }
    }

    fn is_hailuo(self) -> bool {
        matches!(self, Model::Hailuo23 | Model::Hailuo23Fast | Model::Hailuo02)
    }

    /// Resolutions (short side in px) the model offers in a mode, in MiniMax's listing order.
    fn resolutions(self, mode: Mode) -> &'static [u32] {
        match (self, mode) {
            (Model::Hailuo02, Mode::ImageToVideo) => &[512, 768, 1080],
            (m, _) if m.is_hailuo() => &[768, 1080],
            _ => &[720],
        }
    }

    fn default_resolution(self) -> u32 {
        if self.is_hailuo() {
            768
        } else {
            720
        }
    }

    /// Durations offered at a resolution: 10 s only below 1080P, and never on the 01 series.
    fn durations(self, resolution: u32) -> &'static [u32] {
        if self.is_hailuo() && resolution < 1080 {
            &[6, 10]
        } else {
            &[6]
        }
    }
}

/// The parameters of a create call after every rule passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoParams {
    pub model: Model,
    pub mode: Mode,
    /// Short side of the output in px (the number in "768P").
    pub resolution: u32,
    pub duration: u32,
}

/// Why a create was refused; `Display` is the text after "invalid params, ".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleError {
    MissingModel,
    UnsupportedModel(String),
    ModeNotSupported(Model, Mode),
    Resolution { model: Model, given: String, supported: &'static [u32] },
    Duration { model: Model, given: i64, supported: &'static [u32] },
    Combination { model: Model, duration: u32, resolution: u32 },
}

fn join(values: &[u32], unit: &str) -> String {
    values.iter().map(|v| format!("{v}{unit}")).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::MissingModel => write!(f, "model is required"),
            RuleError::UnsupportedModel(name) => write!(f, "unsupported model: {name}"),
            RuleError::ModeNotSupported(model, mode) => {
                write!(f, "model {} does not support {} mode", model.name(), mode.label())
            }
            RuleError::Resolution { model, given, supported } => write!(
                f,
                "model {} does not support resolution {given}, supported resolutions: {}",
                model.name(),
                join(supported, "P")
            ),
            RuleError::Duration { model, given, supported } => write!(
                f,
                "model {} does not support duration {given}s, supported durations: {}",
                model.name(),
                join(supported, "s")
            ),
            RuleError::Combination { model, duration, resolution } => write!(
                f,
                "model {} does not support the combination of duration {duration}s and resolution {resolution}P",
                model.name()
            ),
        }
    }
}

/// Checks model, mode, resolution and duration; `None` fields take MiniMax's defaults.
pub fn check_params(
    model: Option<&str>,
    mode: Mode,
    resolution: Option<&str>,
    duration: Option<i64>,
) -> Result<VideoParams, RuleError> {
    let name = model.ok_or(RuleError::MissingModel)?;
    let model = Model::parse(name).ok_or_else(|| RuleError::UnsupportedModel(name.to_owned()))?;
    if !model.supports(mode) {
        return Err(RuleError::ModeNotSupported(model, mode));
    }
    let supported = model.resolutions(mode);
    let resolution = match resolution {
        None => model.default_resolution(),
        Some(text) => parse_resolution(text)
            .filter(|p| supported.contains(p))
            .ok_or_else(|| RuleError::Resolution { model, given: text.to_owned(), supported })?,
    };
    let duration = match duration {
        None => 6,
        Some(d) => {
            let d32 = u32::try_from(d).ok();
            match d32 {
                Some(d32) if model.durations(resolution).contains(&d32) => d32,
                // 10 s exists for the model, only not at this resolution: MiniMax names the combination.
                Some(d32) if model.durations(768).contains(&d32) => {
                    return Err(RuleError::Combination { model, duration: d32, resolution });
                }
                _ => return Err(RuleError::Duration { model, given: d, supported: model.durations(768) }),
            }
        }
    };
    Ok(VideoParams { model, mode, resolution, duration })
}

/// "768P" -> 768. Upper-case `P` only, as every client sends and the docs' enums spell it.
fn parse_resolution(text: &str) -> Option<u32> {
    text.strip_suffix('P')?.parse().ok()
}

/// Checks the prompt length limit; `Err` holds the 2013 detail.
pub fn check_prompt(prompt: &str) -> Result<(), String> {
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(format!("prompt length {chars} exceeds the limit of {MAX_PROMPT_CHARS} characters"));
    }
    Ok(())
}

/// Checks an image's byte size and pixel size (§1.4); `field` names it in the message.
pub fn check_image(field: &str, bytes: usize, width: u32, height: u32) -> Result<(), String> {
    if bytes >= MAX_IMAGE_BYTES {
        return Err(format!("{field} size {bytes} bytes exceeds the limit, must be less than 20MB"));
    }
    let short = width.min(height);
    if short <= MIN_SHORT_SIDE {
        return Err(format!(
            "{field} dimensions {width}x{height} are too small, the short side must be greater than {MIN_SHORT_SIDE}px"
        ));
    }
    // Strictly between 2:5 and 5:2, in integers: 2/5 < w/h < 5/2.
    let (w, h) = (u64::from(width), u64::from(height));
    if 5 * w <= 2 * h || 2 * w >= 5 * h {
        return Err(format!("{field} aspect ratio {width}x{height} is not supported, it must be between 2:5 and 5:2"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<VideoParams, RuleError>) -> String {
        format!("invalid params, {}", r.unwrap_err())
    }

    #[test]
    fn defaults_follow_the_model_family() {
        let p = check_params(Some("MiniMax-Hailuo-2.3"), Mode::TextToVideo, None, None).unwrap();
        assert_eq!((p.resolution, p.duration), (768, 6));
        let p = check_params(Some("T2V-01"), Mode::TextToVideo, None, None).unwrap();
        assert_eq!((p.resolution, p.duration), (720, 6));
    }

    #[test]
    fn matrix() {
        use Mode::*;
        let cases: &[(&str, Mode, &str, i64, bool)] = &[
            ("MiniMax-Hailuo-2.3", TextToVideo, "768P", 10, true),
            ("MiniMax-Hailuo-2.3", TextToVideo, "1080P", 6, true),
            ("MiniMax-Hailuo-2.3", TextToVideo, "1080P", 10, false),
            ("MiniMax-Hailuo-2.3", TextToVideo, "512P", 6, false),
            ("MiniMax-Hailuo-2.3", TextToVideo, "720P", 6, false),
            ("MiniMax-Hailuo-2.3", ImageToVideo, "512P", 6, false),
            ("MiniMax-Hailuo-2.3-Fast", ImageToVideo, "768P", 10, true),
            ("MiniMax-Hailuo-2.3-Fast", ImageToVideo, "1080P", 10, false),
            ("MiniMax-Hailuo-2.3-Fast", TextToVideo, "768P", 6, false),
            ("MiniMax-Hailuo-02", TextToVideo, "512P", 6, false),
            ("MiniMax-Hailuo-02", ImageToVideo, "512P", 10, true),
            ("MiniMax-Hailuo-02", FirstLastFrame, "512P", 6, false),
            ("MiniMax-Hailuo-02", FirstLastFrame, "768P", 10, true),
            ("MiniMax-Hailuo-2.3", FirstLastFrame, "768P", 6, false),
            ("MiniMax-Hailuo-02", TextToVideo, "768P", 8, false),
            ("T2V-01", TextToVideo, "720P", 6, true),
            ("T2V-01", TextToVideo, "720P", 10, false),
            ("T2V-01", ImageToVideo, "720P", 6, false),
            ("I2V-01-live", ImageToVideo, "720P", 6, true),
            ("S2V-01", SubjectReference, "720P", 6, true),
        ];
        for &(model, mode, res, dur, ok) in cases {
            let r = check_params(Some(model), mode, Some(res), Some(dur));
            assert_eq!(r.is_ok(), ok, "{model} {mode:?} {res} {dur}: {r:?}");
        }
    }

    #[test]
    fn messages_match_minimax() {
        assert_eq!(
            msg(check_params(Some("MiniMax-Hailuo-2.3-Fast"), Mode::TextToVideo, None, None)),
            "invalid params, model MiniMax-Hailuo-2.3-Fast does not support Text-to-Video mode"
        );
        assert_eq!(
            msg(check_params(Some("MiniMax-Hailuo-2.3"), Mode::TextToVideo, Some("1080P"), Some(10))),
            "invalid params, model MiniMax-Hailuo-2.3 does not support the combination of duration 10s and resolution 1080P"
        );
        assert_eq!(
            msg(check_params(Some("MiniMax-Hailuo-2.3"), Mode::TextToVideo, Some("720P"), None)),
            "invalid params, model MiniMax-Hailuo-2.3 does not support resolution 720P, supported resolutions: 768P, 1080P"
        );
        assert_eq!(
            msg(check_params(Some("hailuo-9"), Mode::TextToVideo, None, None)),
            "invalid params, unsupported model: hailuo-9"
        );
        assert_eq!(
            msg(check_params(Some("MiniMax-Hailuo-02"), Mode::TextToVideo, None, Some(7))),
            "invalid params, model MiniMax-Hailuo-02 does not support duration 7s, supported durations: 6s, 10s"
        );
    }

    #[test]
    fn prompt_limit_counts_characters() {
        assert!(check_prompt(&"é".repeat(2000)).is_ok());
        assert!(check_prompt(&"a".repeat(2001)).is_err());
    }

    #[test]
    fn image_limits() {
        assert!(check_image("first_frame_image", 1000, 301, 301).is_ok());
        assert!(check_image("first_frame_image", 1000, 300, 800).is_err());
        assert!(check_image("first_frame_image", MAX_IMAGE_BYTES, 800, 800).is_err());
        // Exactly 2:5 and 5:2 are outside; just inside passes.
        assert!(check_image("first_frame_image", 1000, 400, 1000).is_err());
        assert!(check_image("first_frame_image", 1000, 1000, 400).is_err());
        assert!(check_image("first_frame_image", 1000, 401, 1000).is_ok());
        assert!(check_image("first_frame_image", 1000, 999, 400).is_ok());
    }
}
