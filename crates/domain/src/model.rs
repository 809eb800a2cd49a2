//! Typed identifiers and the small enums that name Hailuo's knobs.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUID v7), so new rows land at the end of indexes.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Only the canonical hyphenated form is an id on our wire.
                if s.len() != 36 {
                    return Err(Uuid::parse_str("not-a-uuid").unwrap_err());
                }
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A customer account (Apiframe calls it a team); credits belong to it.
    AccountId
);
uuid_id!(
    /// An API key's public id; the secret itself is never stored.
    ApiKeyId
);
uuid_id!(
    /// A generation job; a UUID on the wire, as the Apiframe spec requires.
    JobId
);
uuid_id!(
    /// A file uploaded with `POST /v2/uploads`; a UUID on the wire, as the spec requires.
    UploadId
);

/// Lifecycle of an API key as seen by authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKeyStatus {
    /// Accepted.
    Active,
    /// Known but switched off: 403 "API key is inactive"; can be re-enabled.
    Disabled,
    /// Gone for good: treated exactly like an unknown key (401).
    Revoked,
}

impl ApiKeyStatus {
    /// The spelling stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "disabled" => Self::Disabled,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// The Hailuo models reelgate serves, by their Apiframe ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelId {
    /// `hailuo-2.3`: text- and image-to-video.
    Hailuo23,
    /// `hailuo-02`: adds an optional last frame.
    Hailuo02,
    /// `hailuo-2.3-fast`: image-to-video only.
    Hailuo23Fast,
}

impl ModelId {
    /// Every served model, in catalog order.
    pub const ALL: [ModelId; 3] = [ModelId::Hailuo23, ModelId::Hailuo02, ModelId::Hailuo23Fast];

    /// The Apiframe model id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hailuo23 => "hailuo-2.3",
            Self::Hailuo02 => "hailuo-02",
            Self::Hailuo23Fast => "hailuo-2.3-fast",
        }
    }

    /// Parses an Apiframe model id.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether `hailuoParams.end_image` (MiniMax's last frame) is accepted.
    pub fn accepts_end_image(self) -> bool {
        matches!(self, Self::Hailuo02)
    }

    /// Whether a first-frame `image` is mandatory (MiniMax's Fast model is image-to-video only).
    pub fn requires_image(self) -> bool {
        matches!(self, Self::Hailuo23Fast)
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Output resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// 768p, the default.
    P768,
    /// 1080p, 6-second clips only.
    P1080,
}

impl Resolution {
    /// Both resolutions, cheapest first.
    pub const ALL: [Resolution; 2] = [Resolution::P768, Resolution::P1080];

    /// Apiframe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P768 => "768p",
            Self::P1080 => "1080p",
        }
    }

    /// Parses Apiframe's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Clip length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Duration {
    /// Six seconds, the default.
    Six,
    /// Ten seconds (768p only).
    Ten,
}

impl Duration {
    /// Both durations, shortest first.
    pub const ALL: [Duration; 2] = [Duration::Six, Duration::Ten];

    /// Length in seconds.
    pub fn seconds(self) -> u32 {
        match self {
            Self::Six => 6,
            Self::Ten => 10,
        }
    }

    /// From a number of seconds, if it is one Hailuo offers.
    pub fn from_seconds(s: f64) -> Option<Self> {
        if s == 6.0 {
            Some(Self::Six)
        } else if s == 10.0 {
            Some(Self::Ten)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_canonical_uuids() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert!("not-a-uuid".parse::<JobId>().is_err());
        assert!(id.0.simple().to_string().parse::<JobId>().is_err());
    }

    #[test]
    fn model_ids_round_trip() {
        for m in ModelId::ALL {
            assert_eq!(ModelId::parse(m.as_str()), Some(m));
        }
        assert_eq!(ModelId::parse("hailuo-03"), None);
    }
}
